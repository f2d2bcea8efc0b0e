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

from dlrm_comp.compress.kinds import ChunkKind

_QUANT, _CONST = int(ChunkKind.QUANT), int(ChunkKind.CONST)  # plain ints: numba compiles them in

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the torch path stays correct without it
    numba = None


def available() -> bool:
    return numba is not None


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def quantize_rows(x, at, counts, valid, minimum, step, max_code, eb_abs, low, high, hist, entropy):  # pragma: no cover
        """Codes (low/high byte planes), the check, byte-plane histograms and their order-0
        entropy in bytes (as ``BatchQuant.entropy_bytes`` computes it) of every valid chunk r:
        the ``counts[r]`` values of the flat ``x`` from ``at[r]``, their codes written at the
        same places of the flat ``low``/``high`` (chunks padded to one width are ``at[r] = r*n``;
        deduplicated chunks, consecutive rows of one plane, need no padding at all).
        Returns per chunk: True if the bound held (err < eb in float32), and the max error.

        Three passes, each one LLVM vectorises: codes with their reconstruction error into a
        scratch row, the max of that error taken on its bits (|e| >= 0, so the int order is the
        float order: float max reductions do not vectorise), then the histograms."""
        c = len(at)
        ok = np.zeros(c, np.bool_)
        err_out = np.zeros(c, np.float64)
        widest = 0
        for r in range(c):
            widest = max(widest, counts[r])
        scratch = np.empty(widest, np.float32)
        bits = scratch.view(np.int32)
        for r in range(c):
            if not valid[r]:
                continue
            m = counts[r]
            m32 = np.float32(minimum[r])
            inv = np.float32(1.0 / step[r])
            s64 = step[r]
            m64 = minimum[r]
            top = np.float32(max_code[r])
            a = at[r]
            xr, lr, hr = x[a:a + m], low[a:a + m], high[a:a + m]
            for i in range(m):
                v = xr[i]
                q = np.rint((v - m32) * inv)
                q = min(max(q, np.float32(0.0)), top)  # NaN cannot occur in a valid chunk (its range is finite)
                k = np.int32(q)
                y = np.float32(np.float64(k) * s64 + m64)
                scratch[i] = abs(y - v)
                lr[i] = np.uint8(k & 255)
                hr[i] = np.uint8(k >> 8)
            worst = np.int32(0)
            for i in range(m):
                worst = max(worst, bits[i])
            err = np.array([worst], np.int32).view(np.float32)[0]
            ok[r] = err < np.float32(eb_abs[r])
            err_out[r] = err
            hrow = hist[r]
            for i in range(m):
                hrow[lr[i]] += 1
            if top > 255:
                for i in range(m):
                    hrow[256 + hr[i]] += 1
            else:
                hrow[256] += m
            plogp = 0.0
            for b in range(512):
                if hrow[b] > 1:
                    plogp += hrow[b] * np.log2(np.float64(hrow[b]))
            entropy[r] = (2 * m * np.log2(np.float64(max(m, 1))) - plogp) / 8.0
        return ok, err_out

    @numba.njit(cache=True, nogil=True)
    def dequantize_rows(low, low_at, high, high_at, wide, kind, minimum, step, counts, out, out_at):  # pragma: no cover
        """The receiver's ``counts[r]`` values of every QUANT and CONST chunk r, written to the
        flat ``out`` from ``out_at[r]``: float32(code*step + min) in float64 for QUANT (its low
        code bytes in ``low`` from ``low_at[r]``, its high ones in ``high`` from ``high_at[r]``
        where ``wide[r]``), the constant for CONST. Other chunks are left as they are (their
        values travelled: the caller copies them)."""
        for r in range(len(kind)):
            n = counts[r]
            o = out[out_at[r]:out_at[r] + n]  # slices, not offsets into the whole planes: LLVM vectorises
            if kind[r] == _QUANT:  # loops over views (3x faster on a Terabyte message)
                s64 = step[r]
                m64 = minimum[r]
                lo = low[low_at[r]:low_at[r] + n]
                if wide[r]:
                    hi = high[high_at[r]:high_at[r] + n]
                    for i in range(n):
                        o[i] = np.float32((np.float64(lo[i]) + 256.0 * hi[i]) * s64 + m64)
                else:
                    for i in range(n):
                        o[i] = np.float32(np.float64(lo[i]) * s64 + m64)
            elif kind[r] == _CONST:
                v = np.float32(minimum[r])
                for i in range(n):
                    o[i] = v
        return out

    @numba.njit(cache=True, nogil=True)
    def delta_rows(x, base, cached, d, valid, minimum, step, max_code, eb_abs, low, high, hit, out):  # pragma: no cover
        """``batch_quant.quantize_delta``'s per-value work in one pass per chunk (the row cache):
        the hit test per row (float32 ``max |x - c| < eb`` or equal), codes of ``x - c`` for the
        other rows, the reconstruction ``float32(((code*step) + min) + c)`` in float64 (a hit
        keeps its copy), and per chunk the max error of the travelling rows and of the hits."""
        c, n = x.shape
        u = cached.shape[1]
        err_q = np.zeros(c, np.float64)
        err_h = np.zeros(c, np.float64)
        for r in range(c):
            eb = np.float32(eb_abs[r])
            m32 = np.float32(minimum[r])
            inv = np.float32(1.0 / step[r])
            s64 = step[r]
            m64 = minimum[r]
            top = np.float32(max_code[r])
            eq = np.float32(0.0)
            eh = np.float32(0.0)
            for j in range(u):
                worst = np.float32(0.0)
                nan = False
                for i in range(j * d, (j + 1) * d):
                    e = abs(x[r, i] - base[r, i])
                    if e != e:
                        nan = True
                    worst = max(worst, e)
                h = cached[r, j] and not nan and (worst < eb or worst == 0)
                hit[r, j] = h
                for i in range(j * d, (j + 1) * d):
                    xv = x[r, i]
                    bv = base[r, i]
                    if h:
                        low[r, i] = 0
                        high[r, i] = 0
                        out[r, i] = bv
                        eh = max(eh, abs(bv - xv))
                        continue
                    k = np.int32(0)
                    if valid[r]:
                        q = np.rint(((xv - bv) - m32) * inv)
                        q = min(max(q, np.float32(0.0)), top)
                        if q == q:
                            k = np.int32(q)
                    y = np.float32((np.float64(k) * s64 + m64) + np.float64(bv))
                    low[r, i] = np.uint8(k & 255)
                    high[r, i] = np.uint8(k >> 8)
                    out[r, i] = y
                    eq = max(eq, abs(y - xv))
            err_q[r] = eq
            err_h[r] = eh
        return err_q, err_h

    @numba.njit(cache=True, nogil=True)
    def gather_spans(src, at, length, out):  # pragma: no cover
        """``out`` = ``src[at[r]:at[r] + length[r]]`` for every r, one after another: the ragged
        gather of one flat byte plane (a section's stream from the chunks' planes)."""
        pos = 0
        for r in range(len(at)):
            k = length[r]
            out[pos:pos + k] = src[at[r]:at[r] + k]
            pos += k
        return out


def _njit(fn):
    """Compiled with numba where it imports (a dependency); the same Python otherwise (slow, exact)."""
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


@_njit
def distinct_rows(codes, bounds, first, bag, counts):  # pragma: no cover - compiled
    """Bag deduplication's index in one pass (``exchange/dedup.py``): for every (table t, slice
    q) chunk of ``codes [T, B]`` (slice q: rows ``bounds[q]:bounds[q+1]``), its distinct codes in
    order of first occurrence. Writes the batch row of each distinct code's first occurrence to
    ``first`` (chunk after chunk), each row's position among its chunk's distinct codes to
    ``bag [T, B]``, and the distinct count of each chunk to ``counts [T*W]``; returns how many
    ``first`` holds. An open-addressing hash table per chunk (stamped, never cleared): linear in
    the rows, where a sort of the whole batch's (table, slice, code) keys took 1.9 ms at 26 x 2048."""
    t_count = codes.shape[0]
    w = len(bounds) - 1
    widest = 1
    for q in range(w):
        widest = max(widest, bounds[q + 1] - bounds[q])
    bits = 1
    while (1 << bits) < 2 * widest:
        bits += 1
    mask = (1 << bits) - 1
    shift = 64 - bits
    keys = np.empty(1 << bits, np.int64)
    value = np.empty(1 << bits, np.int64)
    stamp = np.zeros(1 << bits, np.int64)
    golden = np.int64(-7046029254386353131)  # 0x9E3779B97F4A7C15 = 2^64/phi: Fibonacci hashing (wrapping)
    pos = 0
    generation = 0
    for t in range(t_count):
        for q in range(w):
            generation += 1
            n = 0
            for r in range(bounds[q], bounds[q + 1]):
                k = codes[t, r]
                h = ((k * golden) >> shift) & mask  # the product's top bits
                while True:
                    if stamp[h] != generation:
                        stamp[h] = generation
                        keys[h] = k
                        value[h] = n
                        first[pos + n] = r
                        bag[t, r] = n
                        n += 1
                        break
                    if keys[h] == k:
                        bag[t, r] = value[h]
                        break
                    h = (h + 1) & mask
            counts[t * w + q] = n
            pos += n
    return pos


@_njit
def add_rows(rows, target, out):  # pragma: no cover - compiled
    """``out[target[i]] += rows[i]`` in row order (what ``index_add_`` computes on the CPU, in the
    same order, so bit for bit; it ran at 2.3 ms against 0.3 for a Kaggle step's gradients)."""
    for i in range(rows.shape[0]):
        o = out[target[i]]
        r = rows[i]
        for j in range(rows.shape[1]):
            o[j] += r[j]
    return out
