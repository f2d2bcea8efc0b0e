"""The error-bounded quantizer of ``batch_quant`` as three Triton launches, and its
reconstruction as one, whatever the number of chunks (FBGEMM's ``_kernel_quantize_mx4`` pattern:
one grid over a flat ``[C, n]`` tensor, every offset by arithmetic).

1. ``_range_kernel``, a program per (chunk, block): partial min / max / NaN-Inf count (and it
   zeroes the chunk's histogram row and the non-finite counter for the launches after it).
2. ``_code_kernel``, a program per (chunk, block): reduces its chunk's partials, evaluates the
   chunk's parameters (``chunk_params``, the same float64 formula), then codes, the receiver's
   reconstruction (in registers; stored on request), the partial max error and the byte-plane
   histograms (atomics, exact).
3. ``_finish_kernel``, a program per block of chunks: the max error, the proof ``err < eb``,
   kind, bits, step, the non-finite count.

Bit-identical to the torch path (``tests/compress/test_device_quant.py`` holds codes, tables and
reconstructions equal under ``TRITON_INTERPRET=1``): every operation is the torch path's, in the
same dtype and order; ``round`` (half to even) is ``(a + 2^p) - 2^p``, exact in IEEE for
``|a| < 2^p``; ``nextafter`` is a bit step; float64 -> float16/bfloat16 goes through float32 as
torch's casts do; FMA contraction is off (``launches.launch``).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from dlrm_comp.compress.batch_quant import MAX_BITS, BatchQuant, work_dtype
from dlrm_comp.compress.device.launches import launch
from dlrm_comp.runtime import to_device

_F32_MAX = float(torch.finfo(torch.float32).max)
_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}
# the torch path's float64 constants, exact (a tl.constexpr meets a float64 tensor as float64)
_ONE_M = tl.constexpr(1.0 - 2.0**-50)
_P20 = tl.constexpr(2.0**-20)
_F32MAX = tl.constexpr(_F32_MAX)
_INV_F32MAX = tl.constexpr(1.0 / _F32_MAX)
_P52 = tl.constexpr(2.0**52)


@triton.jit
def _rint(v, MAGIC: tl.constexpr):
    """Round half to even (torch.round) for any v: exact for |v| < MAGIC = 2^mantissa bits."""
    a = tl.abs(v)
    r = tl.where(a < MAGIC, (a + MAGIC) - MAGIC, a)
    return tl.where(v < 0, -r, r)


@triton.jit
def _down_f32(v):
    """``batch_quant.round_down_f32``: the largest float32 <= v (float64 in and out)."""
    v32 = v.to(tl.float32)
    b = v32.to(tl.int32, bitcast=True)
    step = tl.where(v32 > 0, b - 1, tl.where(v32 == 0, -2147483647, b + 1))  # toward -inf
    down = step.to(tl.float32, bitcast=True)
    return tl.where(v32.to(tl.float64) > v, down, v32).to(tl.float64)


@triton.jit
def _f32_to_bf16(v):
    """float32 -> bfloat16 rounded to nearest even by bits (c10's ``round_to_nearest_even``):
    the interpreter's cast truncates, the GPU's rounds; this is the same on both."""
    b = v.to(tl.int32, bitcast=True)
    r = (b + (0x7FFF + ((b >> 16) & 1))) >> 16
    r = tl.where(v != v, 0x7FC0, r)
    return (r & 0xFFFF).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _widen(v, WD: tl.constexpr):
    """Data -> work dtype, exact; bfloat16 by bits (the interpreter's cast loses subnormals)."""
    if v.dtype == tl.bfloat16:
        w = (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        w = v.to(WD)
    return w


@triton.jit
def _narrow(y64, OUT: tl.constexpr):
    """float64 -> OUT as torch casts: float32 directly, half precision through float32."""
    if OUT == tl.float64:
        y = y64
    elif OUT == tl.float32:
        y = y64.to(tl.float32)
    elif OUT == tl.bfloat16:
        y = _f32_to_bf16(y64.to(tl.float32))
    else:
        y = y64.to(tl.float32).to(OUT)
    return y


@triton.jit
def _chunk_params(mn, mx, finite, eb_rel, EPS2W: tl.constexpr, EPSI: tl.constexpr, TINY: tl.constexpr,
                  SLACK: tl.constexpr):
    """``batch_quant.chunk_params`` for one chunk (n > 0), float64, in the same order of operations."""
    mn0 = tl.where(finite, mn, 0.0)
    mx0 = tl.where(finite, mx, 0.0)
    mn_h = _down_f32(mn0)
    eb_abs = _down_f32(eb_rel * (mx0 - mn0) * _ONE_M)
    const = finite & (mx0 == mn0) & (mn_h == mn0)
    mag = tl.maximum(tl.abs(mn0), tl.abs(mx0))
    cast_err = EPS2W * mag + EPSI * mag + TINY
    first = eb_abs - cast_err
    half = tl.where(first > 0.5 * eb_abs, first, 0.5 * eb_abs)
    span = mx0 - mn_h
    rough = span / tl.maximum(2.0 * half, 1e-300)
    slack = _P20 + (rough + 2.0) * SLACK
    step = _down_f32(2.0 * half * tl.maximum(1.0 - slack, 0.5))
    valid = finite & (const == 0) & (eb_abs > 0) & (step > _INV_F32MAX) & (eb_abs <= _F32MAX) & (mn_h > -_F32MAX)
    safe_step = tl.where(valid, step, 1.0)
    max_code = tl.where(valid, _rint(span / safe_step, _P52), 0.0)
    valid = valid & (max_code < 65536.0)
    max_code = tl.where(valid, max_code, 0.0)
    minimum = tl.where(valid | const, mn_h, 0.0)
    eb_out = tl.where(finite, tl.where(eb_abs > _F32MAX, _F32MAX, eb_abs), 0.0)
    # bit_width: floor(log2(max_code)) + 1 from the float64 exponent field (max_code is an integer)
    bits = ((max_code.to(tl.int64, bitcast=True) >> 52) & 2047) - 1022
    bits = tl.where(valid, tl.maximum(bits, 1), 0)
    return valid, const, minimum, step, safe_step, max_code, eb_out, bits


@triton.jit
def _range_kernel(x_ptr, pmin_ptr, pmax_ptr, pbad_ptr, hist_ptr, nonfinite_ptr, n, NB,
                  WD: tl.constexpr, BLOCK: tl.constexpr, HIST: tl.constexpr):
    c = tl.program_id(0)
    b = tl.program_id(1)
    offs = b * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = _widen(tl.load(x_ptr + c.to(tl.int64) * n + offs, mask=m, other=0.0), WD)
    bad = m & ((v != v) | (tl.abs(v) == float("inf")))
    i = c * NB + b
    tl.store(pmin_ptr + i, tl.min(tl.where(m, v, float("inf")), axis=0))
    tl.store(pmax_ptr + i, tl.max(tl.where(m, v, -float("inf")), axis=0))
    tl.store(pbad_ptr + i, tl.sum(bad.to(tl.int32), axis=0))
    if HIST:
        if b == 0:
            tl.store(hist_ptr + c.to(tl.int64) * 512 + tl.arange(0, 512), tl.zeros([512], dtype=tl.int32))
    if c == 0:
        if b == 0:
            tl.store(nonfinite_ptr, tl.full([], 0, tl.int64))


@triton.jit
def _code_kernel(x_ptr, eb_ptr, cnt_ptr, pmin_ptr, pmax_ptr, pbad_ptr, perr_ptr, low_ptr, high_ptr, xhat_ptr,
                 hist_ptr, par_min_ptr, par_step_ptr, par_eb_ptr, par_flags_ptr, par_bits_ptr, n, NB,
                 WD: tl.constexpr, OUT: tl.constexpr, MAGIC: tl.constexpr, EPS2W: tl.constexpr,
                 EPSI: tl.constexpr, TINY: tl.constexpr, SLACK: tl.constexpr, BLOCK: tl.constexpr,
                 NBP2: tl.constexpr, HIST: tl.constexpr, HAS_COUNTS: tl.constexpr, XHAT: tl.constexpr):
    c = tl.program_id(0)
    b = tl.program_id(1)
    j = tl.arange(0, NBP2)
    jm = j < NB
    mn = tl.min(tl.load(pmin_ptr + c * NB + j, mask=jm, other=float("inf")), axis=0).to(tl.float64)
    mx = tl.max(tl.load(pmax_ptr + c * NB + j, mask=jm, other=-float("inf")), axis=0).to(tl.float64)
    finite = tl.sum(tl.load(pbad_ptr + c * NB + j, mask=jm, other=0), axis=0) == 0
    eb_rel = tl.load(eb_ptr + c)
    valid, const, minimum, step, safe_step, max_code, eb_abs, bits = _chunk_params(
        mn, mx, finite, eb_rel, EPS2W, EPSI, TINY, SLACK)
    if b == 0:
        tl.store(par_min_ptr + c, minimum)
        tl.store(par_step_ptr + c, step)
        tl.store(par_eb_ptr + c, eb_abs)
        tl.store(par_flags_ptr + c, valid.to(tl.int32) | (const.to(tl.int32) << 1) | (finite.to(tl.int32) << 2))
        tl.store(par_bits_ptr + c, bits)

    offs = b * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    base = c.to(tl.int64) * n
    v = _widen(tl.load(x_ptr + base + offs, mask=m, other=0.0), WD)
    min_w = minimum.to(WD)
    inv_w = (1.0 / safe_step).to(WD)
    q = _rint((v - min_w) * inv_w, MAGIC)
    q = tl.minimum(tl.maximum(q, 0.0), max_code.to(WD))
    k = q.to(tl.int32)
    y = _narrow(k.to(tl.float64) * safe_step + minimum, OUT)
    err = tl.where(m, tl.abs(_widen(y, WD) - v), 0.0)
    tl.store(perr_ptr + c * NB + b, tl.max(err, axis=0))
    tl.store(low_ptr + base + offs, (k & 255).to(tl.uint8), mask=m)
    tl.store(high_ptr + base + offs, (k >> 8).to(tl.uint8), mask=m)
    if XHAT:
        tl.store(xhat_ptr + base + offs, y, mask=m)
    if HIST:
        if valid:
            if HAS_COUNTS:
                hm = m & (offs < tl.load(cnt_ptr + c))
            else:
                hm = m
            row = hist_ptr + c.to(tl.int64) * 512
            bins = tl.arange(0, 256)
            tl.atomic_add(row + bins, tl.histogram(k & 255, 256, mask=hm))
            if max_code > 255.0:
                tl.atomic_add(row + 256 + bins, tl.histogram(k >> 8, 256, mask=hm))
            else:
                tl.atomic_add(row + 256, tl.sum(hm.to(tl.int32), axis=0))


@triton.jit
def _finish_kernel(perr_ptr, par_eb_ptr, par_step_ptr, par_flags_ptr, par_bits_ptr, kind_ptr, bits_ptr,
                   step_ptr, err_ptr, ok_ptr, nonfinite_ptr, C, NB, WD: tl.constexpr, BLOCK_C: tl.constexpr,
                   NBP2: tl.constexpr):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    j = tl.arange(0, NBP2)
    e = tl.load(perr_ptr + cs[:, None] * NB + j[None, :], mask=cm[:, None] & (j < NB)[None, :], other=0.0)
    err = tl.max(e, axis=1)
    flags = tl.load(par_flags_ptr + cs, mask=cm, other=4)
    valid = (flags & 1) != 0
    const = (flags & 2) != 0
    finite = (flags & 4) != 0
    eb = tl.load(par_eb_ptr + cs, mask=cm, other=0.0)
    ok = valid & (err < eb.to(WD))
    kind = tl.where(ok, 2, tl.where(const, 1, 0))
    tl.store(kind_ptr + cs, kind.to(tl.uint8), mask=cm)
    tl.store(ok_ptr + cs, ok.to(tl.uint8), mask=cm)
    tl.store(bits_ptr + cs, tl.where(ok, tl.load(par_bits_ptr + cs, mask=cm, other=0), 0), mask=cm)
    tl.store(step_ptr + cs, tl.where(ok, tl.load(par_step_ptr + cs, mask=cm, other=0.0), 0.0), mask=cm)
    tl.store(err_ptr + cs, tl.where(ok, err.to(tl.float64), 0.0), mask=cm)
    tl.atomic_add(nonfinite_ptr, tl.sum((cm & (finite == 0)).to(tl.int64), axis=0))


def _constants(dtype: torch.dtype) -> dict:
    """The dtype-dependent constants of ``chunk_params`` (powers of two: exact as constexprs)."""
    wide = work_dtype(dtype)
    fi, fw = torch.finfo(dtype), torch.finfo(wide)
    return {"EPS2W": 2 * fw.eps, "EPSI": fi.eps, "TINY": fi.smallest_normal * fi.eps,
            "SLACK": 2.0 ** -22 if wide == torch.float32 else 2.0 ** -50,
            "MAGIC": 2.0 ** 23 if wide == torch.float32 else 2.0 ** 52}


def _blocks(n: int, block: int) -> tuple[int, int, int]:
    """(values per program, programs per chunk, their power of two): few distinct shapes (each
    is a compilation), at least 128 values and 16 partial slots unless a smaller block is asked."""
    block = min(block, max(128, triton.next_power_of_2(n)))
    nb = triton.cdiv(n, block)
    return block, nb, max(16, triton.next_power_of_2(nb))


def quantize_batch(x: torch.Tensor, eb_rel, counts: np.ndarray | None = None, block: int = 4096,
                   hist: bool = True, x_hat: bool = False) -> BatchQuant:
    """``batch_quant.quantize_batch`` for ``x [C, n]`` with C, n > 0, in 3 launches. Also
    returns the byte-plane histograms (``BatchQuant.hist``) when ``hist``. The reconstruction
    is checked in registers and stored only when ``x_hat`` (the codec never reads it: a quarter
    to a third of the traffic saved; ``BatchQuant.received`` rebuilds it in one launch)."""
    assert MAX_BITS == 16
    dev, dtype = x.device, x.dtype
    c, n = x.shape
    x = x.detach().contiguous()
    wd = work_dtype(dtype)
    eb = torch.as_tensor(eb_rel, dtype=torch.float64)
    eb = (eb if eb.device == dev else to_device(eb, dev)).contiguous()
    cnt = None if counts is None else to_device(torch.from_numpy(np.asarray(counts, dtype=np.int64)), dev)
    block, nb, nbp2 = _blocks(n, block)
    # few allocations (each costs host time on the launch path): views of six buffers
    par_min, par_step, par_eb, step, err = torch.empty((5, c), dtype=torch.float64, device=dev)
    pmin, pmax, perr = torch.empty((3, c * nb), dtype=wd, device=dev)
    ints = torch.empty(c * nb + c + (c * 512 if hist else 0), dtype=torch.int32, device=dev)
    pbad, par_flags = ints[:c * nb], ints[c * nb:c * nb + c]
    hist_t = ints[c * nb + c:].view(c, 512) if hist else pbad
    longs = torch.empty(2 * c + 1, dtype=torch.int64, device=dev)
    par_bits, bits, nonfinite = longs[:c], longs[c:2 * c], longs[2 * c]
    kind, ok = torch.empty((2, c), dtype=torch.uint8, device=dev)
    low, high = torch.empty((2, c, n), dtype=torch.uint8, device=dev)
    y = torch.empty((c, n), dtype=dtype, device=dev) if x_hat else x
    wdt = _TL[wd]
    launch(_range_kernel, (c, nb), x, pmin, pmax, pbad, hist_t, nonfinite, n, nb, WD=wdt, BLOCK=block, HIST=hist)
    launch(_code_kernel, (c, nb), x, eb, cnt if cnt is not None else pbad, pmin, pmax, pbad, perr, low, high, y,
           hist_t, par_min, par_step, par_eb, par_flags, par_bits, n, nb, WD=wdt, OUT=_TL[dtype], BLOCK=block,
           NBP2=nbp2, HIST=hist, HAS_COUNTS=cnt is not None, XHAT=x_hat, **_constants(dtype))
    block_c = 32
    launch(_finish_kernel, (triton.cdiv(c, block_c),), perr, par_eb, par_step, par_flags, par_bits, kind, bits, step,
           err, ok, nonfinite, c, nb, WD=wdt, BLOCK_C=block_c, NBP2=nbp2)
    return BatchQuant(kind=kind, bits=bits, minimum=par_min, step=step, eb_abs=par_eb, low=low, high=high, err=err,
                      nonfinite=nonfinite, ok=ok.view(torch.bool), x=x, hist=hist_t if hist else None,
                      x_hat=y if x_hat else None,
                      counts=cnt)


@triton.jit
def _dequant_kernel(low_ptr, high_ptr, raw_ptr, kind_ptr, min_ptr, step_ptr, bits_ptr, out_ptr, n,
                    OUT: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    b = tl.program_id(1)
    offs = b * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    base = c.to(tl.int64) * n
    kind = tl.load(kind_ptr + c)
    minimum = tl.load(min_ptr + c)
    if kind == 2:  # QUANT: dtype(code*step + min) in float64, as the sender verified
        code = tl.load(low_ptr + base + offs, mask=m, other=0).to(tl.int32)
        if tl.load(bits_ptr + c) > 8:
            code = code | (tl.load(high_ptr + base + offs, mask=m, other=0).to(tl.int32) << 8)
        y64 = code.to(tl.float64) * tl.load(step_ptr + c) + minimum
    else:  # CONST: the value (RAW takes the travelled values below)
        y64 = tl.zeros([BLOCK], dtype=tl.float64) + minimum
    y = _narrow(y64, OUT)
    if kind != 2:
        if kind != 1:
            y = tl.load(raw_ptr + base + offs, mask=m, other=0.0)
    tl.store(out_ptr + base + offs, y, mask=m)


def dequantize_planes(kind, minimum, step, bits, low, high, raw, dtype: torch.dtype, block: int = 4096) -> torch.Tensor:
    """``batch_quant.dequantize_planes`` in one launch (``raw`` in ``dtype`` or cast by torch)."""
    c, n = low.shape
    dev = low.device
    out = torch.empty((c, n), dtype=dtype, device=dev)
    if not c or not n:
        return out
    raw = (raw if raw.dtype == dtype else raw.to(dtype)).contiguous()
    block, nb, _ = _blocks(n, block)
    launch(_dequant_kernel, (c, nb), low.contiguous(), high.contiguous(), raw, kind.contiguous(),
           minimum.to(torch.float64).contiguous(), step.to(torch.float64).contiguous(), bits.contiguous(), out, n,
           OUT=_TL[dtype], BLOCK=block)
    return out
