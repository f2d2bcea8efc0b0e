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


def encode_fixed_batch(mode: str, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[C, n]`` finite values -> ``[C, fixed_nbytes]`` uint8 (arithmetic in float32: these
    formats carry no bound, and a float64 pass would cost more than the cast itself)."""
    c, n = x.shape
    xf = x.to(torch.float32)
    if mode == "fp16":
        return xf.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).view(torch.uint8).reshape(c, 2 * n)
    if mode == "bf16":
        return xf.clamp(-_BF16_MAX, _BF16_MAX).to(torch.bfloat16).view(torch.uint8).reshape(c, 2 * n)
    if mode == "fp8":
        amax = xf.abs().amax(dim=1).to(torch.float64) if n else torch.zeros(c, dtype=torch.float64, device=x.device)
        scale = torch.where(amax > 0, (_FP8_MAX / amax.clamp_min(1e-300)).clamp_max(_F32_MAX), 1.0).to(torch.float32)
        y = (xf * scale[:, None]).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        return torch.cat([y, scale.view(torch.uint8).reshape(c, 4)], dim=1)
    if mode == "int8":
        rows = n // dim
        m = xf.reshape(c, rows, dim)
        mn, mx = m.amin(dim=2), m.amax(dim=2)
        scale = mx / 255.0 - mn / 255.0  # no overflow for ranges beyond the float32 maximum
        safe = torch.where(scale > 0, scale, 1.0)[:, :, None]
        t = m / safe - mn[:, :, None] / safe  # never (m - mn): it overflows where the range does
        codes = torch.round(t).clamp_(0, 255).to(torch.uint8)
        return torch.cat([codes.reshape(c, n), scale.contiguous().view(torch.uint8).reshape(c, 4 * rows),
                          mn.contiguous().view(torch.uint8).reshape(c, 4 * rows)], dim=1)
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
        y = b[:, :n].contiguous().view(torch.float8_e4m3fn).to(torch.float32)
        scale = b[:, n:].contiguous().view(torch.float32)
        return (y / scale).to(dtype)
    rows = n // dim
    codes = b[:, :n].contiguous().to(torch.float32).reshape(c, rows, dim)  # contiguous first: 10x faster
    scale = b[:, n:n + 4 * rows].contiguous().view(torch.float32)
    bias = b[:, n + 4 * rows:].contiguous().view(torch.float32)
    # halved, then doubled (exact): code*scale alone can exceed the float32 maximum by up to 2x
    return ((codes * (scale * 0.5)[:, :, None] + (bias * 0.5)[:, :, None]) * 2.0).reshape(c, n).to(dtype)
