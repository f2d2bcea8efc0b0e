"""Error-bounded uniform quantizer relative to a chunk's value range, with a verified guarantee.

Why it is built this way (DESIGN.md section 2):
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


def round_down(value: float, ftype: np.dtype) -> float:
    """Largest value of ``ftype`` that is <= value (value >= 0 and finite assumed)."""
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
    first = eb_v - cast_err
    for half_width in ([first] if first > 0.5 * eb_v else []) + [0.5 * eb_v]:
        step = round_down(2.0 * half_width * _SHRINK, ftype)
        if not (math.isfinite(step) and step > 0.0):
            continue
        max_code = round(rng / step)
        width = width_for(max_code)
        if width == 0:
            continue
        codes = torch.round((x64 - mn) / step).clamp_(0, max_code).to(_CODE_TORCH[width])
        q = QuantizedChunk(ChunkKind.QUANT, shape, dtype, eb_rel, eb_v, mn, step, width, codes, device=x.device)
        err = (dequantize(q).reshape(-1).to(torch.float64) - x64).abs().max().item()
        if err <= eb_v:
            return q
    return raw_chunk(x, eb_rel, eb_v)


def dequantize(q: QuantizedChunk) -> torch.Tensor:
    """The receiver's reconstruction (also used by the sender to verify): min + code*step in float64."""
    if q.kind == ChunkKind.CONST:
        return torch.full(q.shape, q.minimum, dtype=q.dtype, device=q.device)
    if q.kind == ChunkKind.RAW:
        assert q.raw is not None
        return q.raw.reshape(q.shape).clone()
    if q.kind != ChunkKind.QUANT or q.codes is None:
        raise ValueError(f"cannot dequantize a chunk of kind {q.kind!r}")
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
