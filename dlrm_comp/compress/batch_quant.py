"""The error-bounded quantizer over a batch of chunks: one call per step, tensors in and out.

Every (table x destination) chunk of a step is a row of ``x [C, n]`` with its own bound
``eb_rel[C]``. Everything per chunk (range, bound, step, code width, kind) is a tensor, so the
call has no Python loop over chunks and no host sync; it runs on the tensors' device with the
same arithmetic on CPU and CUDA (no device-dependent shortcut).

The guarantee, proved per chunk:
* codes are offsets from the chunk minimum rounded DOWN to float32 (the header float), so codes
  are >= 0 and their width depends on the bound, not on the data's offset;
* the bound ``eb_abs = eb_rel * (max - min)`` is rounded down to float32, the step leaves room
  for the final cast to the input dtype (bin width ``2*(eb - cast_err)``, or ``eb`` when the
  cast error is more than half the bound);
* the receiver's reconstruction ``dtype(code*step + min)`` (in the work dtype: float32 for
  float32/16 data, float64 for float64; the same IEEE operations on every device) is computed by
  the sender and checked against the bound; a chunk that fails, has a NaN/Inf, a zero or non-representable bound, or needs codes
  beyond 16 bits is stored RAW, chosen by mask. A constant chunk is CONST (its value exact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.compress import cpu_kernels
from dlrm_comp.compress import device as device_kernels
from dlrm_comp.compress.kinds import CONST_KIND, QUANT_KIND, RAW_KIND, SUPPORTED_DTYPES, ChunkKind
from dlrm_comp.runtime import to_device

MAX_BITS = 16
_F32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class BatchQuant:
    """Per-chunk results of ``quantize_batch`` (all tensors on the input's device)."""

    kind: torch.Tensor  # [C] uint8: ChunkKind RAW / CONST / QUANT
    bits: torch.Tensor  # [C] int64: bits per code (0 unless QUANT)
    minimum: torch.Tensor  # [C] float64, float32-representable: code origin, or the constant
    step: torch.Tensor  # [C] float64, float32-representable: bin width (0 unless QUANT)
    eb_abs: torch.Tensor  # [C] float64, float32-representable: the verified absolute bound
    low: torch.Tensor  # [C, n] uint8: low byte of each code (meaningless unless QUANT); flat [R*d] from
    # ``quantize_ragged`` (then ``low``, ``high`` and ``x`` lie value after value, ``counts`` per chunk,
    # ``entropy`` is set, and ``codes`` and ``received``, which take [C, n] planes, do not apply)
    high: torch.Tensor  # [C, n] uint8: high byte of each code
    err: torch.Tensor  # [C] float64: max |x - x_hat| of the reconstruction (0 unless QUANT)
    nonfinite: torch.Tensor  # [] int64: chunks holding a NaN/Inf (those chunks are RAW)
    ok: torch.Tensor  # [C] bool: QUANT
    x: torch.Tensor  # the input
    hist: torch.Tensor | None = None  # [C, 512] counts of low bytes, then 256 + high bytes
    x_hat: torch.Tensor | None = None  # [C, n] QUANT reconstruction when the path computed it
    entropy: torch.Tensor | None = None  # [C] entropy_bytes() when the path computed it
    counts: torch.Tensor | None = None  # [C] int64 values that travel per chunk (the rest pad it); None: all n
    base: torch.Tensor | None = None  # [C, n] the row cache's copies (delta rows' origin; zeros for new rows)
    hit: torch.Tensor | None = None  # [C, n] bool: values of rows the cache serves (only a flag travels)
    sent_mask: torch.Tensor | None = None  # [C, n] bool: values that travel (None: the first ``counts``)

    @property
    def codes(self) -> torch.Tensor:
        """[C, n] int32 codes."""
        return self.low.to(torch.int32) | (self.high.to(torch.int32) << 8)

    def received(self) -> torch.Tensor:
        """What a receiver decodes, for every kind (CONST and RAW chunks arrive exactly)."""
        if self.hit is not None:  # the row cache's path: hits are the cached copies, in RAW chunks too
            return torch.where(self.hit, self.base, torch.where(self.ok[:, None], self.x_hat, self.x))
        if self.x_hat is not None:
            return torch.where(self.ok[:, None], self.x_hat, self.x)
        return dequantize_planes(self.kind, self.minimum, self.step, self.bits, self.low, self.high, self.x,
                                 self.x.dtype)

    def error_ratio(self) -> torch.Tensor:
        """[C] max error / bound (``error_ratios``)."""
        return error_ratios(self.err, self.eb_abs)

    def entropy_bytes(self) -> torch.Tensor:
        """Order-0 entropy (bytes, n*H/8) of each chunk's codes, per byte plane: exact for codes
        up to 8 bits, the sum of the two planes' entropies (an upper bound) beyond."""
        if self.entropy is not None:
            return self.entropy
        c, n = self.low.shape
        if n == 0:
            return torch.zeros(c, dtype=torch.float64, device=self.low.device)
        hist = self.hist
        if hist is None:
            wide = (self.bits > 8)[:, None]
            high = torch.where(wide, 256 + self.high.to(torch.int64), 256)
            ones = torch.ones(c, n, dtype=torch.float64, device=self.low.device)
            if self.sent_mask is not None:  # cache hits and padding are not sent: they do not count
                ones = self.sent_mask.to(ones)
            elif self.counts is not None:  # padding (repeated rows) is not sent: it does not count
                ones = (torch.arange(n, device=ones.device)[None, :] < self.counts.to(ones.device)[:, None]).to(ones)
            hist = torch.zeros(c, 512, dtype=torch.float64, device=self.low.device)
            hist.scatter_add_(1, self.low.to(torch.int64), ones).scatter_add_(1, high, ones)
        hist = hist.to(torch.float64)
        plogp = (hist * torch.log2(hist.clamp_min(1))).sum(1)
        m = torch.full((c,), float(n), dtype=torch.float64, device=hist.device) if self.counts is None \
            else self.counts.to(device=hist.device, dtype=torch.float64)
        if self.sent_mask is not None:
            m = self.sent_mask.sum(1).to(device=hist.device, dtype=torch.float64)
        return (2 * m * torch.log2(m.clamp_min(1)) - plogp) / 8.0


def error_ratios(err: torch.Tensor, eb_abs: torch.Tensor) -> torch.Tensor:
    """Per-chunk max error / bound: a zero bound (a constant chunk) is met only by an exact copy."""
    return torch.where(eb_abs > 0, err / eb_abs.clamp_min(1e-300), torch.where(err > 0, math.inf, 0.0))


def round_down_f32(v: torch.Tensor) -> torch.Tensor:
    """Largest float32 value <= v (float64 in, float64 out); beyond the float32 range: +-max or -inf."""
    v32 = v.to(torch.float32)
    down = torch.nextafter(v32, torch.full_like(v32, -float("inf")))
    return torch.where(v32.to(torch.float64) > v, down, v32).to(torch.float64)


def bit_width(max_code: torch.Tensor) -> torch.Tensor:
    """Bits needed for codes 0..max_code (>= 1), as int64, by comparisons (exact, no log)."""
    powers = 2 ** torch.arange(MAX_BITS + 1, device=max_code.device, dtype=torch.int64)
    return (max_code.unsqueeze(-1) >= powers).sum(-1).clamp_min(1)


class _Numpy:
    """Per-chunk parameter math on a CPU batch: the same formulas as on the device, evaluated by
    numpy on ``[C]`` float64 arrays (a torch op on 26 values costs ~5 us of dispatch, numpy ~1)."""

    where, maximum, isfinite, round = staticmethod(np.where), staticmethod(np.maximum), \
        staticmethod(np.isfinite), staticmethod(np.round)

    @staticmethod
    def down(v):
        with np.errstate(over="ignore"):
            v32 = v.astype(np.float32)
        return np.where(v32.astype(np.float64) > v, np.nextafter(v32, np.float32(-np.inf)), v32).astype(np.float64)

    @staticmethod
    def bits(max_code):
        return np.maximum((max_code[:, None] >= _POW2).sum(1), 1)


class _Torch:
    where, isfinite, round = staticmethod(torch.where), staticmethod(torch.isfinite), staticmethod(torch.round)
    down = staticmethod(round_down_f32)

    @staticmethod
    def maximum(a, b):
        return torch.maximum(a, b) if isinstance(b, torch.Tensor) else a.clamp_min(b)

    @staticmethod
    def bits(max_code):
        return bit_width(max_code.to(torch.int64))


_POW2 = 2.0 ** np.arange(MAX_BITS + 1)


def chunk_params(xp, mn, mx, eb_rel, n: int, dtype: torch.dtype, bound=None) -> dict:
    """Header parameters of every chunk from its float64 range and relative bound (``xp`` is
    ``_Numpy`` or ``_Torch``: one formula for both). See ``quantize_batch`` for the margins.
    ``bound``: ``(lo, hi)``, the range the bound is relative to when it is not the quantized
    values' own (the row cache quantizes differences from cached rows; the bound stays the
    chunk's values'): then no chunk is CONST and the magnitude covers both ranges."""
    finite = xp.isfinite(mn) & xp.isfinite(mx)
    mn0, mx0 = xp.where(finite, mn, 0.0), xp.where(finite, mx, 0.0)
    mn_h = xp.down(mn0)
    b_fin, b0, b1 = finite, mn0, mx0
    if bound is not None:
        b_fin = xp.isfinite(bound[0]) & xp.isfinite(bound[1])
        b0, b1 = xp.where(b_fin, bound[0], 0.0), xp.where(b_fin, bound[1], 0.0)
        finite = finite & b_fin
    eb_abs = xp.down(eb_rel * (b1 - b0) * (1.0 - 2.0**-50))  # the margin covers the float64 roundings
    const = finite & (mx0 == mn0) & (mn_h == mn0) & (n > 0) & (bound is None)
    mag = xp.maximum(abs(mn0), abs(mx0))
    if bound is not None:
        mag = xp.maximum(mag, xp.maximum(abs(b0), abs(b1)))
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    fi, fw = torch.finfo(dtype), torch.finfo(wide)
    cast_err = 2 * fw.eps * mag + fi.eps * mag + fi.smallest_normal * fi.eps
    first = eb_abs - cast_err
    half = xp.where(first > 0.5 * eb_abs, first, 0.5 * eb_abs)
    span = mx0 - mn_h
    rough = span / xp.maximum(2.0 * half, 1e-300)
    slack = 2.0**-20 + (rough + 2.0) * (2.0**-22 if wide == torch.float32 else 2.0**-50)
    step = xp.down(2.0 * half * xp.maximum(1.0 - slack, 0.5))
    valid = finite & ~const & (eb_abs > 0) & (step > 1.0 / _F32_MAX) & (eb_abs <= _F32_MAX) & (mn_h > -_F32_MAX) \
        & (n > 0)  # a step below 1/max has no float32 reciprocal: such a chunk is RAW
    safe_step = xp.where(valid, step, 1.0)
    max_code = xp.where(valid, xp.round(span / safe_step), 0.0)
    valid = valid & (max_code < 2**MAX_BITS)
    max_code = xp.where(valid, max_code, 0.0)
    return {"finite": finite, "const": const, "valid": valid, "min": xp.where(valid | const, mn_h, 0.0),
            "step": xp.where(valid, step, 0.0), "safe_step": safe_step, "max_code": max_code,
            "eb_abs": xp.where(b_fin, xp.where(eb_abs > _F32_MAX, _F32_MAX, eb_abs), 0.0), "bound_finite": b_fin,
            "bits": xp.where(valid, xp.bits(max_code), 0)}


def check_input(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype {x.dtype} not supported; use one of {[str(d) for d in SUPPORTED_DTYPES]}")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the code computation and of the error check: float64 data in float64, narrower
    data in float32 (the same on every device: IEEE operations, no fusion)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize_batch(x: torch.Tensor, eb_rel: torch.Tensor | np.ndarray, counts: np.ndarray | None = None,
                   base: torch.Tensor | None = None, cached: torch.Tensor | None = None) -> BatchQuant:
    """Quantize each row of ``x [C, n]`` under its bound ``eb_rel[C]`` (relative to its range).

    ``counts[C]`` (host) marks the values that travel when chunks are padded to one width: the
    padding must repeat values of its own chunk (so ranges, codes and the check are unchanged),
    and only the histograms and entropies skip it.

    Codes are ``rint((x - min) * (1/step))`` in the work dtype. Its rounding moves a value by at
    most ``(max_code + 1) * 2**-22`` bins (three roundings of relative 2**-24 on a quotient below
    max_code + 1), so the step is shrunk by that much more than the float64 margin. The
    reconstruction ``dtype(code*step + min)`` runs in float64, where ``code*step`` is exact (16 x
    24 bits), so it is one rounding then the cast, identical on every device and under any
    fusion. The check ``fl(|x_hat - x|) < eb`` in the work dtype is exact (rounding is monotone
    and eb is representable): it proves the bound chunk by chunk."""
    check_input(x)
    if x.dim() != 2:
        raise ValueError(f"quantize_batch takes [chunks, values], got shape {tuple(x.shape)}")
    if base is not None:
        return quantize_delta(x, eb_rel, counts, base, cached)
    dev, wd = x.device, work_dtype(x.dtype)
    c, n = x.shape
    cpu = dev.type == "cpu"
    if n and c and device_kernels.use_triton(x):  # CUDA: fused Triton kernels, 3 launches (compress/device)
        from dlrm_comp.compress.device import quant as device_quant
        return device_quant.quantize_batch(x, eb_rel, counts)
    if cpu and x.dtype == torch.float32 and n and cpu_kernels.available():
        return _quantize_cpu(x, eb_rel, counts)
    xw = x.to(wd)
    if n:
        mn_w, mx_w = xw.amin(dim=1), xw.amax(dim=1)  # NaN propagates; Inf shows as an infinite end (aminmax(dim) is 10x slower on CPU)
    else:
        mn_w = mx_w = torch.zeros(c, dtype=wd, device=dev)
    if cpu and cpu_kernels.available():  # numpy for the per-chunk scalars (without numba: the device path)
        eb = eb_rel.numpy() if isinstance(eb_rel, torch.Tensor) else np.asarray(eb_rel, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            p = chunk_params(_Numpy, mn_w.numpy().astype(np.float64), mx_w.numpy().astype(np.float64),
                             eb.astype(np.float64), n, x.dtype)
        col = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.items()}
    else:
        eb = torch.as_tensor(eb_rel, dtype=torch.float64).to(dev)
        col = chunk_params(_Torch, mn_w.to(torch.float64), mx_w.to(torch.float64), eb, n, x.dtype)
    safe_step = col["safe_step"]
    min_w = col["min"].to(wd)[:, None]
    inv_w = (1.0 / safe_step).to(wd)[:, None]
    codes = torch.round((xw - min_w) * inv_w)
    codes = torch.minimum(codes.clamp_min_(0), col["max_code"].to(wd)[:, None])
    y = (codes.to(torch.float64) * safe_step[:, None] + col["min"][:, None]).to(x.dtype)
    err_w = (y.to(wd) - xw).abs().amax(dim=1) if n else torch.zeros(c, dtype=wd, device=dev)
    ok = col["valid"] & (err_w < col["eb_abs"].to(wd))
    kind = torch.where(ok, ChunkKind.QUANT, torch.where(col["const"], ChunkKind.CONST, ChunkKind.RAW)).to(torch.uint8)
    codes = codes.to(torch.int32)
    return BatchQuant(
        kind=kind,
        bits=torch.where(ok, col["bits"].to(torch.int64), 0),
        minimum=col["min"],
        step=torch.where(ok, col["step"], 0.0),
        eb_abs=col["eb_abs"],
        low=(codes & 255).to(torch.uint8),
        high=(codes >> 8).to(torch.uint8),
        err=torch.where(ok, err_w.to(torch.float64), 0.0),
        nonfinite=(~col["finite"]).sum(),
        ok=ok,
        x=x,
        x_hat=y,
        counts=None if counts is None else to_device(torch.from_numpy(np.asarray(counts, dtype=np.int64)), dev),
    )


def quantize_delta(x: torch.Tensor, eb_rel, counts: np.ndarray | None, base: torch.Tensor,
                   cached: torch.Tensor, fused: bool = True) -> BatchQuant:
    """``quantize_batch`` behind the row cache: ``base [C, n]`` holds the receiver's cached copy
    of each row (zeros for a row not cached), ``cached [C, U]`` which rows have one (U rows of
    n/U values). A cached row whose copy is within the chunk's bound (``max |x - c| < eb_abs``
    in the work dtype: exact, as the quantizer's own check; or equal) is a hit and only its flag
    travels; every other row travels as codes of ``x - base`` (a difference from its copy, or
    its value). The bound ``eb_abs`` is relative to the range of the chunk's values ``x``, hits
    included, as without the cache; the reconstruction ``dtype((code*step + min) + base)`` runs
    in float64 on every device and is checked against ``x`` (hits included) like any chunk: a
    chunk that fails sends its travelling rows RAW. Torch ops only: any device, no host read."""
    check_input(x)
    dev, wd = x.device, work_dtype(x.dtype)
    c, n = x.shape
    u = cached.shape[1]
    d = n // u if u else 0
    if dev.type == "cpu" and x.dtype == torch.float32 and n and cpu_kernels.available() and fused:
        return _quantize_delta_cpu(x, eb_rel, counts, base, cached, d)
    xw, bw = x.to(wd), base.to(wd)
    v = xw - bw
    if n:
        lo_x, hi_x = xw.amin(dim=1), xw.amax(dim=1)
        lo_v, hi_v = v.amin(dim=1), v.amax(dim=1)
    else:
        lo_x = hi_x = lo_v = hi_v = torch.zeros(c, dtype=wd, device=dev)
    f64 = lambda t: t.to(torch.float64)  # noqa: E731
    eb = torch.as_tensor(eb_rel, dtype=torch.float64).to(dev)
    col = chunk_params(_Torch, f64(lo_v), f64(hi_v), eb, n, x.dtype, bound=(f64(lo_x), f64(hi_x)))
    eb_w = col["eb_abs"].to(wd)
    row_err = v.abs().view(c, u, d).amax(dim=2) if n else torch.zeros(c, u, dtype=wd, device=dev)
    hit_rows = cached & ((row_err < eb_w[:, None]) | (row_err == 0))  # NaN never hits
    hit = hit_rows.repeat_interleave(d, dim=1) if d else torch.zeros_like(x, dtype=torch.bool)
    safe_step = col["safe_step"]
    codes = torch.round((v - col["min"].to(wd)[:, None]) * (1.0 / safe_step).to(wd)[:, None])
    codes = torch.minimum(codes.clamp_min_(0), col["max_code"].to(wd)[:, None])
    codes = torch.where(hit | ~torch.isfinite(codes), 0.0, codes)
    y = ((codes.to(torch.float64) * safe_step[:, None] + col["min"][:, None]) + base.to(torch.float64)).to(x.dtype)
    err_q = torch.where(hit, 0.0, (y.to(wd) - xw).abs()).amax(dim=1) if n else torch.zeros(c, dtype=wd, device=dev)
    err_h = torch.where(hit, (bw - xw).abs(), 0.0).amax(dim=1) if n else torch.zeros(c, dtype=wd, device=dev)
    ok = col["valid"] & (err_q < eb_w)
    err = torch.where(ok, torch.maximum(err_q, err_h), err_h).to(torch.float64)
    counts_t = None if counts is None else to_device(torch.from_numpy(np.asarray(counts, dtype=np.int64)), dev)
    pad = torch.arange(n, device=dev)[None, :] < (counts_t[:, None] if counts_t is not None else n)
    codes = codes.to(torch.int32)
    return BatchQuant(
        kind=torch.where(ok, ChunkKind.QUANT, ChunkKind.RAW).to(torch.uint8),
        bits=torch.where(ok, col["bits"].to(torch.int64), 0), minimum=col["min"],
        step=torch.where(ok, col["step"], 0.0), eb_abs=col["eb_abs"],
        low=(codes & 255).to(torch.uint8), high=(codes >> 8).to(torch.uint8),
        err=err, nonfinite=(~col["bound_finite"]).sum(), ok=ok, x=x, x_hat=y, counts=counts_t,
        base=base, hit=hit, sent_mask=pad & ~hit)


def _quantize_delta_cpu(x: torch.Tensor, eb_rel, counts, base: torch.Tensor, cached: torch.Tensor, d: int
                        ) -> BatchQuant:
    """``quantize_delta`` on a CPU float32 batch through ``cpu_kernels.delta_rows``."""
    xn, bn = x.detach().contiguous().numpy(), base.detach().contiguous().numpy()
    c, n = xn.shape
    eb = eb_rel.numpy() if isinstance(eb_rel, torch.Tensor) else np.asarray(eb_rel, dtype=np.float64)
    v = xn - bn
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    with np.errstate(invalid="ignore", over="ignore"):
        p = chunk_params(_Numpy, f64(v.min(axis=1)), f64(v.max(axis=1)), eb.astype(np.float64), n, torch.float32,
                         bound=(f64(xn.min(axis=1)), f64(xn.max(axis=1))))
    low, high = np.empty((c, n), np.uint8), np.empty((c, n), np.uint8)
    hit_rows = np.empty(cached.shape, np.bool_)
    y = np.empty((c, n), np.float32)
    err_q, err_h = cpu_kernels.delta_rows(xn, bn, cached.contiguous().numpy(), d, p["valid"], p["min"],
                                          p["safe_step"], p["max_code"], p["eb_abs"], low, high, hit_rows, y)
    ok = p["valid"] & (err_q.astype(np.float32) < p["eb_abs"].astype(np.float32))
    t = torch.from_numpy
    hit = t(np.repeat(hit_rows, d, axis=1))
    pad = np.arange(n)[None, :] < (np.asarray(counts, dtype=np.int64)[:, None] if counts is not None else n)
    return BatchQuant(
        kind=t(np.where(ok, ChunkKind.QUANT, ChunkKind.RAW).astype(np.uint8)),
        bits=t(np.where(ok, p["bits"], 0).astype(np.int64)), minimum=t(p["min"]),
        step=t(np.where(ok, p["step"], 0.0)), eb_abs=t(p["eb_abs"]), low=t(low), high=t(high),
        err=t(np.where(ok, np.maximum(err_q, err_h), err_h)), nonfinite=torch.tensor(int((~p["bound_finite"]).sum())),
        ok=t(ok), x=x, x_hat=t(y), counts=None if counts is None else t(np.asarray(counts, dtype=np.int64)),
        base=base, hit=hit, sent_mask=t(pad) & ~hit)


def _quantize_cpu(x: torch.Tensor, eb_rel, counts: np.ndarray | None = None) -> BatchQuant:
    """The same quantizer on a CPU float32 batch through the fused loops of ``cpu_kernels``."""
    xn = x.detach().contiguous().numpy()
    c, n = xn.shape
    sent = np.full(c, n, np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    q = _fused(xn.reshape(-1), np.arange(c, dtype=np.int64) * n, sent, xn.min(axis=1), xn.max(axis=1), eb_rel, n, x)
    q.low, q.high = q.low.view(c, n), q.high.view(c, n)
    if counts is None:
        q.counts = None
    return q


def quantize_ragged(x: torch.Tensor, rows: np.ndarray, dim: int, eb_rel) -> BatchQuant:
    """``quantize_batch`` over chunks of consecutive rows: chunk c is the next ``rows[c]`` rows
    of ``x [R, dim]`` (deduplicated chunks hold different counts). No padding to one width:
    ``low`` and ``high`` are flat ``[R*dim]``, value after value as in ``x``, and ``counts`` the
    values of each chunk; the arithmetic, and so every code and parameter, is the padded
    path's (tested). Where ``ragged_ready`` says so only."""
    xn = x.detach().contiguous().numpy().reshape(-1)
    counts = np.asarray(rows, dtype=np.int64) * dim
    if len(xn) != int(counts.sum()):
        raise ValueError(f"quantize_ragged: {tuple(x.shape)} values for chunks of {counts.sum()} ({rows} rows of {dim})")
    at = np.cumsum(counts) - counts
    mn, mx = np.zeros(len(counts), np.float32), np.zeros(len(counts), np.float32)
    some = counts > 0
    if some.any():  # numpy's reductions over each chunk's run (an empty chunk has none: RAW, no values)
        mn[some], mx[some] = np.minimum.reduceat(xn, at[some]), np.maximum.reduceat(xn, at[some])
    return _fused(xn, at, counts, mn, mx, eb_rel, counts, x)


def ragged_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether values of ``dtype`` on ``device`` take the fused CPU loops without padding
    (``quantize_ragged``, and the receiver's ``codecs.messages.reconstruct``): where the padded
    path would run them too (float32 on the CPU, the Triton kernels not asked for)."""
    return device.type == "cpu" and dtype == torch.float32 and cpu_kernels.available() \
        and not device_kernels.use_triton(torch.empty(0))


def _fused(xn: np.ndarray, at: np.ndarray, counts: np.ndarray, mn: np.ndarray, mx: np.ndarray, eb_rel,
           n, x: torch.Tensor) -> BatchQuant:
    """The fused quantizer over the flat values ``xn`` (chunk c: ``counts[c]`` values from
    ``at[c]``, range ``mn[c]..mx[c]``; ``n``: the values each chunk counts for its parameters,
    the padded width or ``counts``); flat code planes of ``xn``'s length."""
    c = len(at)
    eb = eb_rel.numpy() if isinstance(eb_rel, torch.Tensor) else np.asarray(eb_rel, dtype=np.float64)
    minimum, step, safe_step, max_code, eb_abs = (np.empty(c, np.float64) for _ in range(5))
    bits, flags = np.empty(c, np.int64), np.empty(c, np.uint8)
    eb = np.ascontiguousarray(np.broadcast_to(np.asarray(eb, dtype=np.float64), (c,)))  # one bound for all, or one each
    cpu_kernels.chunk_params_f32(mn, mx, eb,
                                 np.broadcast_to(np.asarray(n, dtype=np.int64), (c,)), minimum, step, safe_step,
                                 max_code, eb_abs, bits, flags)
    low = np.zeros(len(xn), np.uint8)
    high = np.zeros(len(xn), np.uint8)
    hist = np.zeros((c, 512), np.int64)
    entropy = np.zeros(c, np.float64)
    ok, err = cpu_kernels.quantize_rows(xn, at, counts, (flags & 4) != 0, minimum, safe_step, max_code, eb_abs,
                                        low, high, hist, entropy)
    kind = np.where(ok, QUANT_KIND, np.where(flags & 2, CONST_KIND, RAW_KIND)).astype(np.uint8)
    t = torch.from_numpy
    return BatchQuant(kind=t(kind), bits=t(np.where(ok, bits, 0)), minimum=t(minimum),
                      step=t(np.where(ok, step, 0.0)), eb_abs=t(eb_abs), low=t(low), high=t(high),
                      err=t(np.where(ok, err, 0.0)), nonfinite=torch.tensor(c - int(np.count_nonzero(flags & 1))),
                      ok=t(ok), x=x, hist=t(hist), entropy=t(entropy), counts=t(counts))


def dequantize_batch(kind: torch.Tensor, minimum: torch.Tensor, step: torch.Tensor, codes: torch.Tensor,
                     raw: torch.Tensor, dtype: torch.dtype, base: torch.Tensor | None = None) -> torch.Tensor:
    """The receiver's reconstruction of ``[C, n]`` chunks: ``dtype(code*step + min)`` in float64
    for QUANT (the operations the sender verified; ``dtype((code*step + min) + base)`` behind the
    row cache), the constant for CONST, ``raw`` (the values that travelled) for RAW."""
    m = minimum.to(torch.float64)[:, None]
    y = codes.to(torch.float64) * step.to(torch.float64)[:, None] + m
    y = (y if base is None else y + base.to(torch.float64)).to(dtype)
    k = kind.to(torch.int64)[:, None]
    return torch.where(k == ChunkKind.QUANT, y, torch.where(k == ChunkKind.CONST, m.to(dtype).expand_as(y), raw.to(dtype)))


def dequantize_planes(kind: torch.Tensor, minimum: torch.Tensor, step: torch.Tensor, bits: torch.Tensor,
                      low: torch.Tensor, high: torch.Tensor, raw: torch.Tensor, dtype: torch.dtype,
                      base: torch.Tensor | None = None) -> torch.Tensor:
    """``dequantize_batch`` from the codes' byte planes (the fused loop for CPU float32, one
    Triton launch on CUDA; behind the row cache, ``base``, the torch ops)."""
    if base is None and device_kernels.use_triton(low):
        from dlrm_comp.compress.device import quant as device_quant
        return device_quant.dequantize_planes(kind, minimum, step, bits, low, high, raw, dtype)
    if base is None and low.device.type == "cpu" and dtype == torch.float32 and cpu_kernels.available() \
            and low.shape[1]:
        c, n = low.shape
        out = np.empty((c, n), np.float32)  # np.zeros would clear it all (0.5 ms a Terabyte message)
        read = np.full(c, n, np.int64)
        at = np.arange(c, dtype=np.int64) * n
        k = kind.to(torch.int64).numpy()
        cpu_kernels.dequantize_rows(low.numpy().reshape(-1), at, high.numpy().reshape(-1), at, bits.numpy(), k,
                                    minimum.to(torch.float64).numpy(), step.to(torch.float64).numpy(), read,
                                    out.reshape(-1), at)
        travelled = np.flatnonzero((k != QUANT_KIND) & (k != CONST_KIND))
        if travelled.size:  # RAW chunks: their values as they travelled
            out[travelled] = raw[torch.from_numpy(travelled)].to(torch.float32).numpy()
        return torch.from_numpy(out)
    codes = low.to(torch.int32) | (high.to(torch.int32) << 8)
    return dequantize_batch(kind, minimum, step, codes, raw, dtype, base)
