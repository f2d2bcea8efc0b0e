"""Fixed-rate baselines over rows, as typed bytes of a size known in advance.

The formats of TorchRec's QComms FP16/BF16/FP8/INT8 (and of ``fixed.py``): fp16 saturates at
+-65504, bf16 at its max, fp8 is e4m3 with a per-chunk scale mapping max|x| to 448, int8 is
row-wise asymmetric in fbgemm's fused layout (per row: ``dim`` uint8 codes, then float32 scale
and bias). A chunk of r rows is ``r`` row records then a per-chunk trailer (fp8's scale), so its
size is a function of r alone: splits are known without a size exchange or a host sync, and a
deduplicated chunk (fewer rows) is encoded the same way. Bytes, not fp8/int16 tensors, cross the
collective (gloo refuses those).
"""
from __future__ import annotations

import torch

from dlrm_comp.compress.modes import FIXED_RATE

_FP16_MAX = 65504.0
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_FP8_MAX = 448.0
_F32_MAX = float(torch.finfo(torch.float32).max)


def _check(mode: str) -> None:
    if mode not in FIXED_RATE:
        raise ValueError(f"fixed-rate mode must be one of {FIXED_RATE}, got {mode!r}")


def row_nbytes(mode: str, dim: int) -> int:
    """Bytes of one row of ``dim`` values."""
    _check(mode)
    return {"fp16": 2 * dim, "bf16": 2 * dim, "fp8": dim, "int8": dim + 8}[mode]


def chunk_nbytes(mode: str) -> int:
    """Bytes of a chunk's trailer (fp8's scale)."""
    _check(mode)
    return 4 if mode == "fp8" else 0


def encode_fixed(mode: str, x: torch.Tensor, chunk: torch.Tensor | None, num_chunks: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite rows ``x [R, d]`` (row i in chunk ``chunk[i]``; None: one chunk) -> the row records
    ``[R, row_nbytes]`` and the chunk trailers ``[num_chunks, chunk_nbytes]``, uint8 (arithmetic
    in float32: these formats carry no bound, and a float64 pass would cost more than the cast)."""
    _check(mode)
    r, d = x.shape
    xf = x.to(torch.float32)
    none = x.new_zeros((num_chunks, 0), dtype=torch.uint8)
    if mode == "fp16":
        return xf.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).view(torch.uint8).reshape(r, 2 * d), none
    if mode == "bf16":
        return xf.clamp(-_BF16_MAX, _BF16_MAX).to(torch.bfloat16).view(torch.uint8).reshape(r, 2 * d), none
    if mode == "fp8":
        row_max = xf.abs().amax(dim=1) if d else xf.new_zeros(r)
        amax = xf.new_zeros(num_chunks)
        if r:
            amax = amax.scatter_reduce(0, _rows_chunk(chunk, r, x.device), row_max, reduce="amax")
        amax = amax.to(torch.float64)
        scale = torch.where(amax > 0, (_FP8_MAX / amax.clamp_min(1e-300)).clamp_max(_F32_MAX), 1.0).to(torch.float32)
        per_row = scale[_rows_chunk(chunk, r, x.device)] if r else scale[:0]
        y = (xf * per_row[:, None]).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        return y.reshape(r, d), scale.view(torch.uint8).reshape(num_chunks, 4)
    mn, mx = (xf.amin(dim=1), xf.amax(dim=1)) if d else (xf.new_zeros(r), xf.new_zeros(r))
    scale = mx / 255.0 - mn / 255.0  # no overflow for ranges beyond the float32 maximum
    safe = torch.where(scale > 0, scale, 1.0)[:, None]
    t = xf / safe - mn[:, None] / safe  # never (x - mn): it overflows where the range does
    codes = torch.round(t).clamp_(0, 255).to(torch.uint8)
    return torch.cat([codes, scale[:, None].view(torch.uint8), mn[:, None].view(torch.uint8)], dim=1), none


def decode_fixed(mode: str, rows: torch.Tensor, trailers: torch.Tensor, chunk: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``encode_fixed``: row records ``[R, row_nbytes]`` and chunk trailers -> ``[R, d]``."""
    _check(mode)
    r = rows.shape[0]
    rows = rows.contiguous()
    if mode in ("fp16", "bf16"):
        return rows.view(torch.float16 if mode == "fp16" else torch.bfloat16).to(dtype)
    if mode == "fp8":
        scale = trailers.contiguous().view(torch.float32).reshape(-1)
        per_row = scale[_rows_chunk(chunk, r, rows.device)] if r else scale[:0]
        return (rows.view(torch.float8_e4m3fn).to(torch.float32) / per_row[:, None]).to(dtype)
    d = rows.shape[1] - 8
    codes = rows[:, :d].to(torch.float32)
    scale = rows[:, d:d + 4].contiguous().view(torch.float32)
    bias = rows[:, d + 4:].contiguous().view(torch.float32)
    # halved, then doubled (exact): code*scale alone can exceed the float32 maximum by up to 2x
    return ((codes * (scale * 0.5) + bias * 0.5) * 2.0).to(dtype)


def _rows_chunk(chunk: torch.Tensor | None, r: int, device) -> torch.Tensor:
    return chunk if chunk is not None else torch.zeros(r, dtype=torch.int64, device=device)
