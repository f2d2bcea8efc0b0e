"""Fused CPU loops of the batched quantizer (numba): the same arithmetic as the torch ops of
``batch_quant.quantize_batch``, one pass per chunk instead of a dozen eager kernels.

On a debug step (26 chunks of 1,024 float32 values) eager torch spends most of its ~200 us in
per-op dispatch; these loops touch each value twice (range, then code + check). The formulas
are those of the device path, in the same dtypes (float32 code computation, float64
reconstruction, float32 check), and ``tests/compress/test_batch_quant.py`` holds both paths to
bit-identical codes and parameters. Parameters per chunk come from ``chunk_params`` (shared).
"""
from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the torch path stays correct without it
    numba = None


def available() -> bool:
    return numba is not None


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def row_range(x):  # pragma: no cover - compiled
        """Per-row min and max (NaN propagates, as torch's amin/amax)."""
        c, n = x.shape
        mn = np.empty(c, np.float32)
        mx = np.empty(c, np.float32)
        for r in range(c):
            lo = np.float32(np.inf)
            hi = np.float32(-np.inf)
            nan = False
            for i in range(n):
                v = x[r, i]
                if v != v:
                    nan = True
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
            if nan:
                lo = np.float32(np.nan)
                hi = np.float32(np.nan)
            mn[r] = lo
            mx[r] = hi
        return mn, mx

    @numba.njit(cache=True, nogil=True)
    def quantize_rows(x, valid, minimum, step, max_code, eb_abs, low, high, hist):  # pragma: no cover
        """Codes (low/high byte planes), the check, and byte-plane histograms, per valid row.
        Returns per row: 1 if the bound held (err < eb in float32), and the max error."""
        c, n = x.shape
        ok = np.zeros(c, np.bool_)
        err_out = np.zeros(c, np.float64)
        for r in range(c):
            if not valid[r]:
                continue
            m32 = np.float32(minimum[r])
            inv = np.float32(1.0 / step[r])
            s64 = step[r]
            m64 = minimum[r]
            top = np.float32(max_code[r])
            eb = np.float32(eb_abs[r])
            err = np.float32(0.0)
            for i in range(n):
                v = x[r, i]
                q = np.rint((v - m32) * inv)
                if not q >= 0:  # also NaN: never index out of range (the check then fails the row)
                    q = np.float32(0.0)
                if q > top:
                    q = top
                k = np.int64(q)
                y = np.float32(np.float64(k) * s64 + m64)
                d = abs(y - v)
                if d > err:
                    err = d
                low[r, i] = k & 255
                high[r, i] = k >> 8
                hist[r, k & 255] += 1
                hist[r, 256 + (k >> 8)] += 1
            ok[r] = err < eb
            err_out[r] = err
        return ok, err_out

    @numba.njit(cache=True, nogil=True)
    def dequantize_rows(low, high, wide, kind, minimum, step, raw, out):  # pragma: no cover
        """The receiver's values: float32(code*step + min) in float64 for QUANT rows, the
        constant for CONST rows, the travelled values for RAW rows."""
        c, n = out.shape
        for r in range(c):
            if kind[r] == 2:
                s64 = step[r]
                m64 = minimum[r]
                if wide[r]:
                    for i in range(n):
                        out[r, i] = np.float32((np.float64(low[r, i]) + 256.0 * high[r, i]) * s64 + m64)
                else:
                    for i in range(n):
                        out[r, i] = np.float32(np.float64(low[r, i]) * s64 + m64)
            elif kind[r] == 1:
                v = np.float32(minimum[r])
                for i in range(n):
                    out[r, i] = v
            else:
                for i in range(n):
                    out[r, i] = raw[r, i]
        return out
