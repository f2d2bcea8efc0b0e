"""Self-describing, checksummed wire format for one compressed chunk.

Messages are small (a 32x32 chunk is 1 KiB of uint8 codes), so the header is packed: varints
for shape and length, 4-bit fields, float32 parameters unless the data is float64. A receiver in
another process needs nothing but these bytes. Layout (little-endian):

    u8 magic 0xDC | u8 version | u8 mode<<4 | has_eb<<3 | kind | u8 dtype<<6 | width_code<<4 | nfloats
    u8 codec id | u8 len + codec params | u8 ndim + varint dims | varint body length
    [f32 eb_rel, F eb_abs if has_eb] | nfloats x F params | body | u32 CRC32(all of the above)

F is float64 for float64 data, else float32 (exactly what the sender used and verified with).
A 2-D float32 QUANT frame with raw DEFLATE costs 31 bytes of header + CRC. Any truncation,
extension or single corrupted byte raises CorruptPayloadError (CRC32 detects every error burst
up to 32 bits); shapes beyond MAX_NUMEL elements are rejected before anything is allocated.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import torch

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.modes import MODES
from dlrm_comp.compress.quantize import ChunkKind

MAGIC = 0xDC
VERSION = 1
MAX_NDIM = 8
MAX_NUMEL = 1 << 28  # 1 GiB of float32: far above any chunk, blocks decompression bombs
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
WIDTHS = (0, 1, 2, 4)
MODE_IDS = {m.name: m.frame_id for m in MODES if m.frame_id}
MODE_NAMES = {v: k for k, v in MODE_IDS.items()}
_KINDS = frozenset(int(k) for k in ChunkKind)


@dataclass(frozen=True)
class FrameHeader:
    """Decoded header fields; ``params`` are kind-specific floats (e.g. minimum, step)."""

    mode: str
    kind: ChunkKind
    dtype: torch.dtype
    shape: tuple[int, ...]
    width: int = 0
    codec_id: int = 0
    codec_params: bytes = b""
    eb_rel: float | None = None
    eb_abs: float | None = None
    params: tuple[float, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def float_fmt(self) -> str:
        return "d" if self.dtype == torch.float64 else "f"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pack_header(h: FrameHeader, body_len: int) -> bytes:
    """Header bytes (everything before the body) for a body of body_len bytes."""
    if h.mode not in MODE_IDS or not 0 <= h.kind < 8 or h.dtype not in DTYPES or h.width not in WIDTHS:
        raise ValueError(f"frame: cannot encode header {h}")
    if len(h.params) > 3 or len(h.codec_params) > 255 or len(h.shape) > MAX_NDIM or h.numel > MAX_NUMEL:
        raise ValueError(f"frame: header fields out of range in {h}")
    has_eb = h.eb_rel is not None
    f = h.float_fmt
    out = bytearray([
        MAGIC, VERSION, MODE_IDS[h.mode] << 4 | has_eb << 3 | h.kind,
        DTYPES.index(h.dtype) << 6 | WIDTHS.index(h.width) << 4 | len(h.params),
        h.codec_id, len(h.codec_params),
    ])
    out += h.codec_params
    out.append(len(h.shape))
    for d in h.shape:
        out += _varint(int(d))
    out += _varint(body_len)
    if has_eb:
        out += struct.pack("<f" + f, h.eb_rel, h.eb_abs if h.eb_abs is not None else 0.0)
    if h.params:
        out += struct.pack("<" + f * len(h.params), *h.params)
    return bytes(out)


def encode_frame(h: FrameHeader, body: bytes) -> bytes:
    data = pack_header(h, len(body)) + body
    return data + zlib.crc32(data).to_bytes(4, "little")


def frame_overhead(h: FrameHeader, body_len: int) -> int:
    """Bytes a frame adds around a body of body_len bytes (header + CRC)."""
    return len(pack_header(h, body_len)) + 4


class _Reader:
    def __init__(self, buf: bytes, end: int) -> None:
        self.buf, self.pos, self.end = buf, 0, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CorruptPayloadError(f"payload truncated: need {n} bytes at offset {self.pos}, have {self.end - self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        n = shift = 0
        for _ in range(10):
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
        raise CorruptPayloadError("payload has an over-long varint")


def _varint_at(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    n = shift = 0
    for _ in range(10):
        if pos >= end:
            raise CorruptPayloadError(f"payload truncated: need 1 bytes at offset {pos}, have 0")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
    raise CorruptPayloadError("payload has an over-long varint")


_FLOAT_SIZE = {"f": 4, "d": 8}
_UNPACK = {}  # (fmt) -> struct.Struct


def _unpack(fmt: str, buf: bytes, pos: int) -> tuple:
    st = _UNPACK.get(fmt)
    if st is None:
        st = _UNPACK[fmt] = struct.Struct(fmt)
    return st.unpack_from(buf, pos)


def decode_frame(payload: bytes | bytearray | memoryview) -> tuple[FrameHeader, bytes]:
    """Validate a payload and split it into header fields and body."""
    buf = payload if type(payload) is bytes else bytes(payload)
    n = len(buf)
    if n < 12:
        raise CorruptPayloadError(f"payload of {n} bytes is shorter than any valid frame")
    if buf[0] != MAGIC:
        raise CorruptPayloadError(f"bad magic 0x{buf[0]:02x} (expected 0x{MAGIC:02x}): not a dlrm_comp payload")
    if buf[1] != VERSION:
        raise CorruptPayloadError(f"unsupported format version {buf[1]} (this build reads {VERSION})")
    end = n - 4
    if zlib.crc32(memoryview(buf)[:end]) != int.from_bytes(buf[end:], "little"):
        raise CorruptPayloadError("CRC32 mismatch: payload corrupted, truncated or extended")
    b2, b3, codec_id, plen = buf[2], buf[3], buf[4], buf[5]
    mode_id, has_eb, kind = b2 >> 4, bool(b2 >> 3 & 1), b2 & 7
    dtype_id, width_code, nfloats = b3 >> 6, b3 >> 4 & 3, b3 & 15
    if mode_id not in MODE_NAMES or nfloats > 3:
        raise CorruptPayloadError(f"unknown mode id {mode_id} or {nfloats} parameters")
    if kind not in _KINDS:
        raise CorruptPayloadError(f"unknown chunk kind {kind}")
    pos = 6 + plen
    if pos + 1 > end:
        raise CorruptPayloadError(f"payload truncated: need {plen + 1} bytes at offset 6, have {end - 6}")
    codec_params = buf[6:pos]
    ndim = buf[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise CorruptPayloadError(f"ndim {ndim} exceeds {MAX_NDIM}")
    dims = []
    for _ in range(ndim):
        d, pos = _varint_at(buf, pos, end)
        dims.append(d)
    shape = tuple(dims)
    if math.prod(shape) > MAX_NUMEL:
        raise CorruptPayloadError(f"shape {shape} exceeds {MAX_NUMEL} elements (decompression bomb guard)")
    body_len, pos = _varint_at(buf, pos, end)
    dtype = DTYPES[dtype_id]
    f = "d" if dtype == torch.float64 else "f"
    fs = _FLOAT_SIZE[f]
    eb_rel = eb_abs = None
    need = (4 + fs if has_eb else 0) + fs * nfloats
    if pos + need > end:
        raise CorruptPayloadError(f"payload truncated: need {need} bytes at offset {pos}, have {end - pos}")
    if has_eb:
        eb_rel, eb_abs = _unpack("<f" + f, buf, pos)
        pos += 4 + fs
    params = _unpack("<" + f * nfloats, buf, pos)
    pos += fs * nfloats
    if pos + body_len > end:
        raise CorruptPayloadError(f"payload truncated: need {body_len} bytes at offset {pos}, have {end - pos}")
    if pos + body_len != end:
        raise CorruptPayloadError(f"{end - pos - body_len} unexpected trailing bytes after the body")
    body = buf[pos:end]
    header = FrameHeader(MODE_NAMES[mode_id], ChunkKind(kind), dtype, shape, WIDTHS[width_code], codec_id,
                         codec_params, eb_rel, eb_abs, params)
    return header, body
