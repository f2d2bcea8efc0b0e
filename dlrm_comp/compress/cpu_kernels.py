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

from dlrm_comp.compress.kinds import CONST_KIND, QUANT_KIND, RAW_KIND, SZ_KIND

_QUANT, _CONST, _RAW, _SZ = QUANT_KIND, CONST_KIND, RAW_KIND, SZ_KIND  # plain ints: numba compiles them in
_F32_EPS, _F32_TINY, _F32_MAX = (float(v) for v in (np.finfo(np.float32).eps, np.finfo(np.float32).tiny,
                                                    np.finfo(np.float32).max))  # plain floats, compiled in

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
    def _down_f32(v):  # pragma: no cover
        """``batch_quant.round_down_f32`` of one float64: the largest float32 value <= v."""
        v32 = np.float32(v)
        if np.float64(v32) > v:
            v32 = np.nextafter(v32, np.float32(-np.inf))
        return np.float64(v32)

    @numba.njit(cache=True, nogil=True)
    def chunk_params_f32(mn, mx, eb_rel, n, out_min, out_step, out_safe, out_max_code, out_eb, out_bits, flags):  # pragma: no cover
        """``batch_quant.chunk_params`` for float32 values (the fused CPU quantizer's only dtype),
        chunk by chunk in one call: the same float64 operations in the same order, so the same
        parameters bit for bit (tested against the torch formula). ``flags[r]``: bit 0 finite,
        bit 1 constant, bit 2 valid. One call instead of ~25 numpy ones on ``[C]`` arrays
        (80 us a message, a tenth of a small message's encode)."""
        eps, tiny_eps, f32max = _F32_EPS, _F32_TINY * _F32_EPS, _F32_MAX
        for r in range(len(mn)):
            lo, hi = np.float64(mn[r]), np.float64(mx[r])  # the float32 range, exactly
            finite = np.isfinite(lo) and np.isfinite(hi)
            mn0 = lo if finite else 0.0
            mx0 = hi if finite else 0.0
            mn_h = _down_f32(mn0)
            eb_abs = _down_f32(eb_rel[r] * (mx0 - mn0) * (1.0 - 2.0**-50))
            const = finite and mx0 == mn0 and mn_h == mn0 and n[r] > 0
            mag = max(abs(mn0), abs(mx0))
            cast_err = 2 * eps * mag + eps * mag + tiny_eps
            first = eb_abs - cast_err
            half = first if first > 0.5 * eb_abs else 0.5 * eb_abs
            span = mx0 - mn_h
            rough = span / max(2.0 * half, 1e-300)
            slack = 2.0**-20 + (rough + 2.0) * 2.0**-22
            step = _down_f32(2.0 * half * max(1.0 - slack, 0.5))
            valid = finite and not const and eb_abs > 0 and step > 1.0 / f32max and eb_abs <= f32max \
                and mn_h > -f32max and n[r] > 0
            safe = step if valid else 1.0
            max_code = np.rint(span / safe) if valid else 0.0
            valid = valid and max_code < 2.0**16
            max_code = max_code if valid else 0.0
            bits = 0
            if valid:
                bits = 1
                while bits < 17 and max_code >= 2.0**bits:
                    bits += 1
            out_min[r] = mn_h if (valid or const) else 0.0
            out_step[r] = step if valid else 0.0
            out_safe[r] = safe
            out_max_code[r] = max_code
            out_eb[r] = (f32max if eb_abs > f32max else eb_abs) if finite else 0.0
            out_bits[r] = bits
            flags[r] = np.uint8(finite) | (np.uint8(const) << 1) | (np.uint8(valid) << 2)

    @numba.njit(cache=True, nogil=True)
    def dequantize_rows(low, low_at, high, high_at, bits, kind, minimum, step, counts, out, out_at):  # pragma: no cover
        """The receiver's ``counts[r]`` values of every QUANT and CONST chunk r, written to the
        flat ``out`` from ``out_at[r]``: float32(code*step + min) in float64 for QUANT (its low
        code bytes in ``low`` from ``low_at[r]``, its high ones in ``high`` from ``high_at[r]``
        where ``bits[r] > 8``), the constant for CONST. Other chunks are left as they are (their
        values travelled: the caller copies them). The per-chunk arrays may be the chunk table's
        own fields (float32 parameters, widened exactly here)."""
        for r in range(len(kind)):
            n = np.int64(counts[r])
            o = out[out_at[r]:out_at[r] + n]  # slices, not offsets into the whole planes: LLVM vectorises
            if kind[r] == _QUANT:  # loops over views (3x faster on a Terabyte message)
                s64 = np.float64(step[r])
                m64 = np.float64(minimum[r])
                lo = low[low_at[r]:low_at[r] + n]
                if bits[r] > 8:
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
def plane_spans(kind, bits, layout, rows, cols, itemsize, sizes, at):  # pragma: no cover - compiled
    """``wire.plane_spans``: the bytes and the offsets of each chunk in the three planes, in one
    pass over the chunk table (``sizes [3, C]``, ``at [3, C+1]``): both sides of every message
    read them, and as a dozen numpy calls on ``[C]`` arrays they cost 50 us a message."""
    at[0, 0] = at[1, 0] = at[2, 0] = 0
    for c in range(len(kind)):
        n = np.int64(rows[c]) * cols
        b = np.int64(bits[c])
        quant, raw = kind[c] == _QUANT, kind[c] == _RAW
        if layout[c] == 1:  # bitpack: a QUANT chunk's packed codes, a RAW chunk's bytes all in the rest
            p = (n * b + 7) // 8 if quant else 0
            hs = 0
            rs = n * itemsize if raw else 0
        else:  # bytes: n primary bytes whatever the kind, n high bytes past 8 bits, a RAW chunk's remaining bytes
            p = n
            hs = n if quant and b > 8 else 0
            rs = n * itemsize - n if raw else 0
        sizes[0, c], sizes[1, c], sizes[2, c] = p, hs, rs
        at[0, c + 1], at[1, c + 1], at[2, c + 1] = at[0, c] + p, at[1, c] + hs, at[2, c] + rs
    return sizes, at


TABLE_ROWS, TABLE_FIELDS, TABLE_SZ, TABLE_SIZES = 1, 2, 4, 8  # ``check_table``'s failures, one bit each
TABLE_HAS_SZ, TABLE_HAS_RAW, TABLE_HAS_BITPACK = 16, 32, 64  # not failures: what the table holds


@_njit
def check_table(kind, bits, layout, section, rows, nbytes, want, m_rows, cols, itemsize, n_sections, sizes, at,
                section_chunks, section_bytes):  # pragma: no cover - compiled
    """``wire.parse``'s checks of a received chunk table in one pass (as ~30 numpy calls on
    ``[C]`` arrays they were most of a small message's parse): returns the failures as bits
    (``TABLE_ROWS``: rows other than ``want`` or than the preamble's widest ``m_rows``;
    ``TABLE_FIELDS``: a field out of range, or sections not numbered 0, 1, ... in order with one
    layout each; ``TABLE_SZ``: an SZ chunk not bit-packed or larger than its raw size;
    ``TABLE_SIZES``: a body size that is not what its kind and width make; ``TABLE_HAS_SZ``, not
    a failure: an SZ chunk is there, and likewise ``TABLE_HAS_RAW``, ``TABLE_HAS_BITPACK``), and fills
    ``plane_spans``'s ``sizes``/``at`` and each section's chunk count and raw bytes."""
    fail = 0
    count = len(kind)
    widest = 0
    for c in range(count):
        r = np.int64(rows[c])
        if r != want[c]:
            fail |= TABLE_ROWS
        widest = max(widest, r)
    if count and widest != m_rows:
        fail |= TABLE_ROWS
    for c in range(count):
        k, b = np.int64(kind[c]), np.int64(bits[c])
        if k > _SZ or b > 16 or layout[c] > 1 or (k != _QUANT and b != 0):
            fail |= TABLE_FIELDS
        if c:
            step = np.int64(section[c]) - np.int64(section[c - 1])
            if step < 0 or step > 1 or (layout[c] != layout[c - 1] and step == 0):
                fail |= TABLE_FIELDS
    if count and (section[0] != 0 or np.int64(section[count - 1]) != n_sections - 1):
        fail |= TABLE_FIELDS
    plane_spans(kind, bits, layout, rows, cols, itemsize, sizes, at)
    for c in range(count):
        if kind[c] == _SZ:  # SZ: its body is what SZ3 made of it, at most the raw values
            fail |= TABLE_HAS_SZ
            if layout[c] != 1 or np.int64(nbytes[c]) > np.int64(rows[c]) * cols * itemsize:
                fail |= TABLE_SZ
        elif np.int64(nbytes[c]) != sizes[0, c] + sizes[1, c] + sizes[2, c]:
            fail |= TABLE_SIZES
        if kind[c] == _RAW:
            fail |= TABLE_HAS_RAW
        if layout[c] == 1:
            fail |= TABLE_HAS_BITPACK
        s = np.int64(section[c])
        if s < n_sections:
            section_chunks[s] += 1
            section_bytes[s] += np.int64(nbytes[c])
    return fail


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
