"""Fixed-rate baselines TorchRec users know (its QComms FP16/BF16/FP8/INT8), as frame bodies.

Their size depends only on the shape, they have no error bound, and they exist to compare the
error-bounded modes against. fp16 saturates at +-65504 instead of overflowing to inf; fp8 uses
float8_e4m3fn with a per-chunk scale mapping max|x| to 448; int8 is row-wise asymmetric like
fbgemm's fused 8-bit rowwise (uint8 codes + float32 scale and bias per row, rows = last dim).
"""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress.modes import FIXED_RATE
from dlrm_comp.compress.quantize import tensor_from_bytes, tensor_to_bytes

_F32_MAX = float(np.finfo(np.float32).max)
_FP16_MAX = 65504.0
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_FP8_MAX = 448.0


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    d = shape[-1] if shape else 1
    return (int(np.prod(shape)) // d if d else 0), d


def encode_fixed(mode: str, x: torch.Tensor) -> tuple[tuple[float, ...], bytes]:
    """(header params, body) for a finite tensor x."""
    x64 = x.detach().reshape(-1).to(torch.float64)
    if mode == "fp16":
        return (), tensor_to_bytes(x64.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16))
    if mode == "bf16":
        return (), tensor_to_bytes(x64.clamp(-_BF16_MAX, _BF16_MAX).to(torch.bfloat16))
    if mode == "fp8":
        amax = float(x64.abs().max().item()) if x64.numel() else 0.0
        scale = float(np.float32(min(_FP8_MAX / amax, _F32_MAX))) if amax > 0 else 1.0
        y = (x64 * scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        return (scale,), y.view(torch.uint8).cpu().numpy().tobytes()
    if mode == "int8":
        rows, d = _rows(tuple(x.shape))
        m = x64.reshape(rows, d)
        if m.numel() == 0:
            return (), b""
        mn, mx = m.min(dim=1).values, m.max(dim=1).values
        scale = ((mx - mn) / 255.0).to(torch.float32)
        bias = mn.to(torch.float32)
        s64 = scale.to(torch.float64)
        codes = torch.where(s64[:, None] > 0, torch.round((m - bias.to(torch.float64)[:, None]) / s64.clamp_min(1e-300)[:, None]), torch.zeros_like(m))
        codes = codes.clamp(0, 255).to(torch.uint8)
        return (), codes.cpu().numpy().tobytes() + tensor_to_bytes(scale) + tensor_to_bytes(bias)
    raise ValueError(f"fixed-rate mode must be one of {FIXED_RATE}, got {mode!r}")


def fixed_body_nbytes(mode: str, shape: tuple[int, ...]) -> int:
    n = int(np.prod(shape))
    rows, _ = _rows(shape)
    return {"fp16": 2 * n, "bf16": 2 * n, "fp8": n, "int8": n + 8 * rows if n else 0}[mode]


def decode_fixed(mode: str, params: tuple[float, ...], body: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if len(body) != fixed_body_nbytes(mode, shape):
        raise ValueError(f"{mode} body of {len(body)} bytes does not match shape {shape}")
    n = int(np.prod(shape))
    if mode == "fp16":
        return tensor_from_bytes(body, torch.float16, shape).to(dtype)
    if mode == "bf16":
        return tensor_from_bytes(body, torch.bfloat16, shape).to(dtype)
    if mode == "fp8":
        y = torch.from_numpy(np.frombuffer(body, dtype=np.uint8).copy()).view(torch.float8_e4m3fn)
        return (y.to(torch.float64) / params[0]).to(dtype).reshape(shape)
    if mode == "int8":
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        rows, d = _rows(shape)
        codes = torch.from_numpy(np.frombuffer(body[:n], dtype=np.uint8).copy()).reshape(rows, d).to(torch.float64)
        scale = tensor_from_bytes(body[n:n + 4 * rows], torch.float32, (rows,)).to(torch.float64)
        bias = tensor_from_bytes(body[n + 4 * rows:], torch.float32, (rows,)).to(torch.float64)
        return (codes * scale[:, None] + bias[:, None]).to(dtype).reshape(shape)
    raise ValueError(f"fixed-rate mode must be one of {FIXED_RATE}, got {mode!r}")
