"""Error-bounded uniform quantizer relative to a chunk's value range, with a verified guarantee.

Why it is built this way:
* codes are offsets from the chunk MINIMUM, so their width depends on the bound, not the data's
  offset (zero-centred codes reached 1.77x the bound in fp32 and needed wide codes);
* scale and division run in float64, and every parameter the receiver needs (minimum, step) is
  rounded to the header's float type BEFORE quantizing, so the receiver reconstructs bit-exactly
  what the sender verified;
* the step leaves room for the final cast: bin width 2*(eb - c) where c bounds the cast's
  rounding error at the chunk's magnitude (half an ulp), so float32 data at eb 1e-5 keeps
  uint16 codes;
* after quantizing, the chunk is decoded with the receiver's own ``dequantize`` and checked
  against the bound (including the final cast to the input dtype). If that still fails (or c
  exceeds eb/2), the chunk is re-quantized with step eb (bin width eb instead of 2*eb: then rounding to the
  nearest representable value can at most double the half-bin error, which stays <= eb); if that
  fails too the chunk is stored raw. The stored bound ``eb_abs`` is rounded DOWN to the header
  float, so the value a payload claims is always one the data meets.

Supported dtypes: float16, bfloat16, float32 (header floats float32) and float64 (header floats
float64). Runs on any torch device; the only host syncs are the min/max/verification scalars.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

from dlrm_comp.compress.errors import NonFiniteError

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NONFINITE_POLICIES = ("raise", "error", "passthrough")  # "error" is an alias of "raise"
_SHRINK = 1.0 - 2.0**-20  # margin against float64 rounding in (x - min) / step
_MAX_CODE = {1: 255, 2: 65535, 4: 2**32 - 1}
_CODE_TORCH = {1: torch.uint8, 2: torch.int32, 4: torch.int64}  # holders wide enough, no wrap


class ChunkKind(IntEnum):
    """How a chunk is represented (also the frame's 'kind' field)."""

    RAW = 0
    CONST = 1
    QUANT = 2
    SZ = 3
    FIXED = 4


@dataclass(frozen=True)
class QuantizedChunk:
    """Result of ``quantize``; everything ``dequantize`` needs, nothing device- or process-bound."""

    kind: ChunkKind
    shape: tuple[int, ...]
    dtype: torch.dtype
    eb_rel: float
    eb_abs: float  # the verified absolute bound (exactly representable in the header float)
    minimum: float = 0.0  # QUANT: code origin; CONST: the constant
    step: float = 0.0  # QUANT: bin width (< 2*eb_abs)
    width: int = 0  # bytes per code (1, 2, 4) for QUANT, else 0
    codes: torch.Tensor | None = None  # flat, values in [0, max_code]
    raw: torch.Tensor | None = None  # flat original values for RAW
    nonfinite: int = 0  # count of NaN/Inf stored raw under nonfinite='passthrough'
    device: torch.device = torch.device("cpu")  # where dequantize builds the result

    @property
    def is_raw(self) -> bool:
        return self.kind == ChunkKind.RAW

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def max_code(self) -> int:
        return int(self.codes.max().item()) if self.codes is not None and self.codes.numel() else 0


def header_float(dtype: torch.dtype) -> np.dtype:
    """Float type of header parameters: float64 only for float64 data (else float32 is exact enough)."""
    return np.dtype("<f8") if dtype == torch.float64 else np.dtype("<f4")


_F32_MAX = float(np.finfo(np.float32).max)
_F32_NEG_INF = np.float32(-np.inf)


def round_down(value: float, ftype: np.dtype) -> float:
    """Largest value of ``ftype`` that is <= value (value >= 0 and finite assumed)."""
    if ftype.itemsize == 4:
        if value >= _F32_MAX:
            return _F32_MAX
        v32 = np.float32(value)
        v = float(v32)
        return float(np.nextafter(v32, _F32_NEG_INF)) if v > value else v
    with np.errstate(over="ignore"):
        v = ftype.type(value)
        if float(v) > value:
            v = np.nextafter(v, ftype.type(-np.inf))
    return float(v)


def width_for(max_code: int) -> int:
    """Smallest code width (bytes) holding max_code without overflow; 0 when none does."""
    for w in (1, 2, 4):
        if max_code <= _MAX_CODE[w]:
            return w
    return 0


def candidate_steps(eb_v: float, cast_err: float, rng: float, ftype):
    """The bin widths to try, widest first: 2*(eb - worst cast error), then eb as the cast-proof
    retry; each as (step, largest code, code width), skipping steps that are not finite and
    positive or whose codes would not fit. The caller verifies each against the bound."""
    first = eb_v - cast_err
    for half_width in ([first] if first > 0.5 * eb_v else []) + [0.5 * eb_v]:
        step = round_down(2.0 * half_width * _SHRINK, ftype)
        if not (math.isfinite(step) and step > 0.0):
            continue
        max_code = round(rng / step)
        width = width_for(max_code)
        if width:
            yield step, max_code, width


def max_cast_error(dtype: torch.dtype, magnitude: float) -> float:
    """Upper bound on |v - dtype(v)| for float64 v up to 2*magnitude: half an ulp at 2*magnitude
    (eps*magnitude), plus the subnormal spacing; 0 for float64 (no cast)."""
    if dtype == torch.float64:
        return 0.0
    fi = torch.finfo(dtype)
    return fi.eps * magnitude + fi.smallest_normal * fi.eps


def check_input(x: torch.Tensor, eb_rel: float | None = None) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype {x.dtype} not supported; use one of {[str(d) for d in SUPPORTED_DTYPES]}")
    if eb_rel is not None and not (math.isfinite(eb_rel) and 0.0 < eb_rel <= 0.5):
        raise ValueError(f"eb_rel must be in (0, 0.5], got {eb_rel!r}")


def count_nonfinite(x: torch.Tensor, policy: str) -> int:
    """Number of NaN/Inf in x; raises NonFiniteError when there are some and policy is 'raise'."""
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite: must be one of {NONFINITE_POLICIES}, got {policy!r}")
    bad = int(x.numel() - torch.isfinite(x).sum().item()) if x.numel() else 0
    if bad and policy != "passthrough":
        raise NonFiniteError(bad, x.numel())
    return bad


def raw_chunk(x: torch.Tensor, eb_rel: float, eb_abs: float = 0.0, nonfinite: int = 0) -> QuantizedChunk:
    return QuantizedChunk(
        ChunkKind.RAW, tuple(x.shape), x.dtype, eb_rel, eb_abs, raw=x.reshape(-1).clone(), nonfinite=nonfinite,
        device=x.device,
    )


def chunk_range(x64: torch.Tensor) -> tuple[float, float]:
    mn, mx = torch.aminmax(x64)
    return float(mn.item()), float(mx.item())


def quantize(x: torch.Tensor, eb_rel: float, *, nonfinite: str = "raise") -> QuantizedChunk:
    """Quantize x so that ``max|x - dequantize(q)| <= q.eb_abs <= eb_rel * (max - min)``."""
    check_input(x, eb_rel)
    fq = quantize_np(x, eb_rel, nonfinite)
    if fq is not None:
        return fq.chunk()
    return _quantize_torch(x, eb_rel, nonfinite)


def _quantize_torch(x: torch.Tensor, eb_rel: float, nonfinite: str) -> QuantizedChunk:
    """General path (any device, any supported dtype): torch ops in float64."""
    shape, dtype = tuple(x.shape), x.dtype
    bad = count_nonfinite(x, nonfinite)
    if bad or x.numel() == 0:
        return raw_chunk(x, eb_rel, nonfinite=bad)
    x64 = x.reshape(-1).to(torch.float64)
    mn, mx = chunk_range(x64)
    rng = mx - mn
    if rng == 0.0:
        return QuantizedChunk(ChunkKind.CONST, shape, dtype, eb_rel, 0.0, minimum=mn, device=x.device)
    ftype = header_float(dtype)
    eb_abs = eb_rel * rng
    if not math.isfinite(eb_abs):
        return raw_chunk(x, eb_rel, nonfinite=bad)
    eb_v = round_down(eb_abs, ftype)
    if eb_v <= 0.0:
        return raw_chunk(x, eb_rel, eb_v)
    # Bin width 2*(eb - worst cast error) first; bin width eb as the cast-proof retry.
    cast_err = max_cast_error(dtype, max(abs(mn), abs(mx)))
    for step, max_code, width in candidate_steps(eb_v, cast_err, rng, ftype):
        codes = torch.round((x64 - mn) / step).clamp_(0, max_code).to(_CODE_TORCH[width])
        q = QuantizedChunk(ChunkKind.QUANT, shape, dtype, eb_rel, eb_v, mn, step, width, codes, device=x.device)
        err = (dequantize(q).reshape(-1).to(torch.float64) - x64).abs().max().item()
        if err <= eb_v:
            return q
    return raw_chunk(x, eb_rel, eb_v)


# ---------------------------------------------------------------------------------------------
# CPU fast path (float32 / float64 on the CPU): numpy, no float64 copy of float32 data on the
# first attempt, a lookup table for the reconstruction. Same wire format and same guarantee:
#
# * codes are first computed in float32 (``rint((x - min) * (1/step))``). Any rounding there only
#   moves a value to a neighbouring code; it cannot break the bound silently because every
#   attempt is VERIFIED against the receiver's exact reconstruction. The largest code is the
#   code of the maximum computed by the same (monotone) float32 operations, so no clamp is
#   needed and the width never wraps. If verification fails, the float64 codes of the general
#   path are tried at the same step before the narrower step, so the outcome is never worse
#   than the general path's.
# * the reconstruction ``dtype(min + code*step)`` (float64 multiply, float64 add, one cast) is a
#   function of the code alone, so it is tabulated per code (``lut[codes]``): bit-identical to
#   the formula (same IEEE operations per entry), one gather pass instead of four.
# * verification in float32 (for float32 data): ``fl32(|y - x|) < eb`` with eb a float32 value
#   implies ``|y - x| < eb`` exactly (rounding is monotone and eb is representable), so a pass
#   is a proof; anything else (including overflow to inf) falls back to the float64 check.
# ---------------------------------------------------------------------------------------------
_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_NP_CODE = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}
_F32 = np.float32
_EPS32 = float(np.finfo(np.float32).eps)
_CAST32_TINY = float(np.finfo(np.float32).tiny) * _EPS32
_LUT_MIN_NUMEL = {1: 0, 2: 4096}  # uint16 codes: tabulate only when the chunk is big enough
_AR256 = np.arange(256, dtype=np.float64)


class NpQuant:
    """Result of the CPU fast path: the chunk's parameters, its numpy codes and the verified
    reconstruction ``y`` (what any receiver decodes, bit for bit) with its max error."""

    __slots__ = ("kind", "shape", "dtype", "eb_rel", "eb_abs", "minimum", "step", "width", "codes", "y",
                 "err", "raw", "nonfinite", "deq_s")

    def __init__(self, kind, shape, dtype, eb_rel, eb_abs=0.0, minimum=0.0, step=0.0, width=0, codes=None,
                 y=None, err=0.0, raw=None, nonfinite=0, deq_s=0.0):
        self.kind, self.shape, self.dtype, self.eb_rel, self.eb_abs = kind, shape, dtype, eb_rel, eb_abs
        self.minimum, self.step, self.width, self.codes, self.y, self.err = minimum, step, width, codes, y, err
        self.raw, self.nonfinite, self.deq_s = raw, nonfinite, deq_s

    def chunk(self) -> QuantizedChunk:
        """The equivalent public QuantizedChunk (torch codes in the general path's holder dtypes)."""
        if self.kind == ChunkKind.QUANT:
            c = self.codes if self.width == 1 else self.codes.astype(np.int32 if self.width == 2 else np.int64)
            return QuantizedChunk(ChunkKind.QUANT, self.shape, self.dtype, self.eb_rel, self.eb_abs, self.minimum,
                                  self.step, self.width, torch.from_numpy(c))
        if self.kind == ChunkKind.CONST:
            return QuantizedChunk(ChunkKind.CONST, self.shape, self.dtype, self.eb_rel, 0.0, minimum=self.minimum)
        return QuantizedChunk(ChunkKind.RAW, self.shape, self.dtype, self.eb_rel, self.eb_abs, raw=self.raw,
                              nonfinite=self.nonfinite)


def dequantize_np(codes: np.ndarray, minimum: float, step: float, out: np.dtype, max_code: int | None = None) -> np.ndarray:
    """``out(minimum + code*step)`` computed in float64, elementwise; bit-identical to dequantize's
    formula. uint8 (and large uint16) code arrays go through a per-code table."""
    n = codes.size
    w = codes.dtype.itemsize
    if w in _LUT_MIN_NUMEL and n >= _LUT_MIN_NUMEL[w]:
        if max_code is None:
            max_code = 255 if w == 1 else int(codes.max()) if n else 0
        lut = _AR256 * step if max_code == 255 else np.arange(max_code + 1, dtype=np.float64) * step
        lut += minimum
        if out != np.float64 and not -3.4e38 < lut[-1] < 3.4e38:  # entries past the data may overflow
            with np.errstate(over="ignore"):
                return lut.astype(out).take(codes)
        return lut.astype(out).take(codes)
    y = codes.astype(np.float64)
    y *= step
    y += minimum
    with np.errstate(over="ignore"):
        return y.astype(out)


def quantize_np(x: torch.Tensor, eb_rel: float, nonfinite: str = "raise") -> NpQuant | None:
    """CPU fast path for float32/float64 tensors; None when x is elsewhere or of another dtype
    (the caller then takes the general torch path). eb_rel must already be validated."""
    dtype = x.dtype
    npd = _NP_DTYPES.get(dtype)
    if npd is None or x.device.type != "cpu":
        return None
    shape = tuple(x.shape)
    a = x.detach().reshape(-1).numpy()
    if a.size == 0:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite: must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        return NpQuant(ChunkKind.RAW, shape, dtype, eb_rel, raw=x.detach().reshape(-1).clone())
    mn_s, mx_s = a.min(), a.max()
    mn, mx = float(mn_s), float(mx_s)
    if not (math.isfinite(mn) and math.isfinite(mx)):  # NaN propagates through min/max; Inf shows
        bad = count_nonfinite(x, nonfinite)
        return NpQuant(ChunkKind.RAW, shape, dtype, eb_rel, raw=x.detach().reshape(-1).clone(), nonfinite=bad)
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite: must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    rng = mx - mn
    if rng == 0.0:
        return NpQuant(ChunkKind.CONST, shape, dtype, eb_rel, minimum=mn,
                       y=torch.full(shape, mn, dtype=dtype))
    f32 = dtype == torch.float32
    ftype = header_float(dtype)
    eb_abs = eb_rel * rng
    eb_v = round_down(eb_abs, ftype) if math.isfinite(eb_abs) else 0.0
    if eb_v <= 0.0:
        return NpQuant(ChunkKind.RAW, shape, dtype, eb_rel, eb_v, raw=x.detach().reshape(-1).clone())
    mag = max(abs(mn), abs(mx))
    cast_err = (_EPS32 * mag + _CAST32_TINY) if f32 else 0.0
    for step, max_code, _ in candidate_steps(eb_v, cast_err, rng, ftype):
        attempts = ("f32", "f64") if f32 and max_code < (1 << 22) and rng < 1e38 else ("f64",)
        for how in attempts:
            if how == "f32":
                inv = _F32(1.0 / step)
                mn32 = _F32(mn_s)
                top = int(np.rint((_F32(mx_s) - mn32) * inv))
                width = width_for(top)
                if width == 0:
                    continue
                t = a - mn32
                t *= inv
                np.rint(t, out=t)
                codes = t.astype(_NP_CODE[width])
            else:
                width = width_for(max_code)
                t = a.astype(np.float64)
                t -= mn
                t /= step
                np.rint(t, out=t)
                np.clip(t, 0, max_code, out=t)
                codes = t.astype(_NP_CODE[width])
                top = max_code
            t0 = time.perf_counter()
            y = dequantize_np(codes, mn, step, npd, top if width == 1 or codes.size >= 4096 else None)
            deq_s = time.perf_counter() - t0
            if f32:
                d = np.subtract(y, a)
                np.abs(d, out=d)
                err = float(d.max())
                ok = err < eb_v
                if not ok:  # exact check (rare): float64 differences of float32 values
                    err = float(np.abs(y.astype(np.float64) - a).max())
                    ok = err <= eb_v
            else:
                err = float(np.abs(y - a).max())
                ok = err <= eb_v
            if ok:
                return NpQuant(ChunkKind.QUANT, shape, dtype, eb_rel, eb_v, mn, step, width, codes,
                               torch.from_numpy(y).reshape(shape), err, deq_s=deq_s)
    return NpQuant(ChunkKind.RAW, shape, dtype, eb_rel, eb_v, raw=x.detach().reshape(-1).clone())


def dequantize(q: QuantizedChunk) -> torch.Tensor:
    """The receiver's reconstruction (also used by the sender to verify): min + code*step in float64."""
    if q.kind == ChunkKind.CONST:
        return torch.full(q.shape, q.minimum, dtype=q.dtype, device=q.device)
    if q.kind == ChunkKind.RAW:
        assert q.raw is not None
        return q.raw.reshape(q.shape).clone()
    if q.kind != ChunkKind.QUANT or q.codes is None:
        raise ValueError(f"cannot dequantize a chunk of kind {q.kind!r}")
    npd = _NP_DTYPES.get(q.dtype)
    if npd is not None and q.codes.device.type == "cpu" and q.width in _NP_CODE:
        codes = q.codes.numpy()
        if codes.dtype != _NP_CODE[q.width]:
            codes = codes.astype(_NP_CODE[q.width])
        y = torch.from_numpy(dequantize_np(codes, q.minimum, q.step, npd)).reshape(q.shape)
        return y if q.device.type == "cpu" else y.to(q.device)
    y = q.codes.to(torch.float64) * q.step + q.minimum
    return y.to(q.dtype).reshape(q.shape)


def codes_to_bytes(q: QuantizedChunk) -> bytes:
    """Little-endian codes at the chunk's width (uint8/uint16/uint32)."""
    assert q.codes is not None and q.width in _MAX_CODE
    return q.codes.cpu().numpy().astype(f"<u{q.width}", copy=False).tobytes()


def codes_from_bytes(buf: bytes, width: int, numel: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse of codes_to_bytes, into the same holder dtype quantize produced."""
    if width not in _MAX_CODE or len(buf) != width * numel:
        raise ValueError(f"code buffer of {len(buf)} bytes does not hold {numel} codes of width {width}")
    arr = np.frombuffer(buf, dtype=f"<u{width}").astype(np.int64 if width == 4 else (np.int32 if width == 2 else np.uint8))
    return torch.from_numpy(arr).to(device or "cpu")


def tensor_to_bytes(x: torch.Tensor) -> bytes:
    """Little-endian raw bytes of any supported dtype (bfloat16 via its 16-bit pattern)."""
    flat = x.reshape(-1).contiguous().cpu()
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().astype(flat.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def tensor_from_bytes(buf: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bfloat16:
        arr = np.frombuffer(buf, dtype="<i2").copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(shape)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
    arr = np.frombuffer(buf, dtype=np_dtype).astype(np_dtype.newbyteorder("="))
    return torch.from_numpy(arr).reshape(shape)
