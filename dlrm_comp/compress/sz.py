"""Thin SZ3 wrapper (pysz) in absolute-bound mode.

All error-bounded backends share the relative-to-chunk-range semantics, so the caller converts
eb_rel to eb_abs and SZ3 gets ABS mode. pysz mutates the config it is given, so a fresh one is
built per call; it returns a numpy byte array and needs one back for decompression; the output is
copied because pysz may reuse its buffer. SZ3 holds the GIL and is single-threaded.
"""
from __future__ import annotations

import numpy as np
from pysz import sz, szConfig, szErrorBoundMode

SZ_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def sz_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """SZ3 wants 1-4 dims with no zero/one-element quirks: flatten anything else."""
    return shape if 1 <= len(shape) <= 4 else (int(np.prod(shape)),)


def sz_compress(arr: np.ndarray, eb_abs: float) -> bytes:
    if arr.dtype not in SZ_DTYPES:
        raise TypeError(f"SZ3 takes float32/float64, got {arr.dtype}")
    cfg = szConfig()
    cfg.errorBoundMode = szErrorBoundMode.ABS
    cfg.absErrorBound = float(eb_abs)
    out, _ratio = sz.compress(np.ascontiguousarray(arr.reshape(sz_shape(arr.shape))), cfg)
    return out.tobytes()


def sz_decompress(body: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    arr, _cfg = sz.decompress(np.frombuffer(body, dtype=np.uint8).copy(), np.dtype(dtype).type, sz_shape(shape))
    return np.array(arr, copy=True).reshape(shape)
