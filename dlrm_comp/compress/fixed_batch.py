"""Fixed-rate baselines over a batch of chunks, as typed bytes of a size known in advance.

The same formats as ``fixed.py`` (TorchRec's QComms FP16/BF16/FP8/INT8): fp16 saturates at
+-65504, bf16 at its max, fp8 is e4m3 with a per-chunk scale mapping max|x| to 448, int8 is
row-wise asymmetric (uint8 codes, float32 scale and bias per row of ``dim`` values). Each chunk
becomes a fixed number of bytes, so a destination's split is known without a size exchange and
without a host sync. Bytes, not fp8/int16 tensors, cross the collective (gloo refuses those).
"""
from __future__ import annotations

import torch

FIXED_MODES = ("fp16", "bf16", "fp8", "int8")
_FP16_MAX = 65504.0
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_FP8_MAX = 448.0
_F32_MAX = float(torch.finfo(torch.float32).max)


def fixed_nbytes(mode: str, n: int, dim: int) -> int:
    """Bytes of one chunk of n values (rows of ``dim``)."""
    if mode not in FIXED_MODES:
        raise ValueError(f"fixed-rate mode must be one of {FIXED_MODES}, got {mode!r}")
    return {"fp16": 2 * n, "bf16": 2 * n, "fp8": n + 4, "int8": n + 8 * (n // dim if dim else 0)}[mode]


def _f32_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).contiguous().view(torch.uint8)


def encode_fixed_batch(mode: str, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[C, n]`` finite values -> ``[C, fixed_nbytes]`` uint8."""
    c, n = x.shape
    x64 = x.to(torch.float64)
    if mode == "fp16":
        return x64.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).view(torch.uint8).reshape(c, 2 * n)
    if mode == "bf16":
        return x64.clamp(-_BF16_MAX, _BF16_MAX).to(torch.bfloat16).view(torch.uint8).reshape(c, 2 * n)
    if mode == "fp8":
        amax = x64.abs().amax(dim=1) if n else torch.zeros(c, dtype=torch.float64, device=x.device)
        scale = torch.where(amax > 0, (_FP8_MAX / amax.clamp_min(1e-300)).clamp_max(_F32_MAX), 1.0)
        scale = scale.to(torch.float32).to(torch.float64)
        y = (x64 * scale[:, None]).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        return torch.cat([y, _f32_bytes(scale).reshape(c, 4)], dim=1)
    if mode == "int8":
        rows = n // dim
        m = x64.reshape(c, rows, dim)
        mn, mx = m.amin(dim=2), m.amax(dim=2)
        scale = ((mx - mn) / 255.0).to(torch.float32)
        bias = mn.to(torch.float32)
        s64 = scale.to(torch.float64)[:, :, None]
        codes = torch.where(s64 > 0, torch.round((m - bias.to(torch.float64)[:, :, None]) / s64.clamp_min(1e-300)),
                            torch.zeros_like(m)).clamp(0, 255).to(torch.uint8)
        return torch.cat([codes.reshape(c, n), _f32_bytes(scale).reshape(c, 4 * rows),
                          _f32_bytes(bias).reshape(c, 4 * rows)], dim=1)
    raise ValueError(f"fixed-rate mode must be one of {FIXED_MODES}, got {mode!r}")


def decode_fixed_batch(mode: str, b: torch.Tensor, n: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``encode_fixed_batch``: ``[C, fixed_nbytes]`` uint8 -> ``[C, n]`` of ``dtype``."""
    c = b.shape[0]
    if b.shape[1] != fixed_nbytes(mode, n, dim):
        raise ValueError(f"{mode}: {b.shape[1]} bytes per chunk do not hold {n} values")
    b = b.contiguous()
    if mode == "fp16":
        return b.view(torch.float16).reshape(c, n).to(dtype)
    if mode == "bf16":
        return b.view(torch.bfloat16).reshape(c, n).to(dtype)
    if mode == "fp8":
        y = b[:, :n].contiguous().view(torch.float8_e4m3fn).to(torch.float64)
        scale = b[:, n:].contiguous().view(torch.float32).to(torch.float64)
        return (y / scale).to(dtype)
    rows = n // dim
    codes = b[:, :n].to(torch.float64).reshape(c, rows, dim)
    scale = b[:, n:n + 4 * rows].contiguous().view(torch.float32).to(torch.float64)
    bias = b[:, n + 4 * rows:].contiguous().view(torch.float32).to(torch.float64)
    return (codes * scale[:, :, None] + bias[:, :, None]).reshape(c, n).to(dtype)
