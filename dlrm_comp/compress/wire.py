"""The batched wire format: one self-describing message per destination.

    preamble (20 B)      u8 magic 0xDB | u8 version | u8 dtype | u8 sections | u16 chunks
                         | u16 cols | u32 rows (the most rows of any chunk) | u32 message bytes
                         | u32 Adler-32 of the table
    chunk table (C x 22) u16 table | u8 kind | u8 bits | u8 section | u8 layout | u32 rows
                         | f32 minimum | f32 step | u32 body bytes
    [flag section]       behind the row cache only: one section (the same header) of one bit per
                         row the receiver holds a cached copy of, in row order, packed LSB first
                         (1: a hit, the copy stands; 0: the row travels, as codes of its difference
                         from the copy), coded by the message's first section's lossless stage
    sections             per section: u8 codec id | u8 param bytes | u16 0 | u32 raw bytes
                         | u32 coded bytes | u32 Adler-32 of the raw bytes | params | coded bytes

A section holds a run of consecutive chunks (one lossless coder, called once on all of them:
a destination's whole stream per call, never a chunk per call). A chunk holds ``rows x cols``
values, n of them; chunks of one message may hold different row counts (bag deduplication sends
one row per distinct bag). Its raw bytes are, for the
``bytes`` layout, the primary plane (n bytes per chunk: the low byte of each code, the first n
bytes of a RAW chunk, zeros for CONST), then the high byte planes of the chunks with codes wider
than 8 bits, then the remaining bytes of the RAW chunks; for the ``bitpack`` layout, each QUANT
chunk's codes at ``bits`` bits per code (LSB first), then the RAW chunks' bytes. Preamble, chunk
table and section headers count in ``bytes_sent``. Version 4 added the flag section (the row
cache, ``codecs/cache_stage.py``): a chunk's ``rows`` are then the rows that travel, and the
receiver learns which from the flags and its own cache (the section's presence and its length
are what the receiver expects from its cache; nothing in the preamble marks it). The sender assembles and the receiver parses
on the host with numpy, vectorised over chunks: both hold a message's bytes as three flat planes,
chunk after chunk (``plane_spans``: primary, high, rest), so a section's stream is a slice of each
plane (``chunk_planes`` gathers them from the quantizer's planes: a view when its codes lie back
to back, else ``cpu_kernels.gather_spans``); quantization and reconstruction stay on the tensors'
device.
"""
from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.compress import cpu_kernels
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless import CodecCache, LosslessCodec
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.kinds import CONST_KIND, QUANT_KIND, RAW_KIND, SZ_KIND

# the kinds as plain ints: numpy compares them without an enum lookup per use (Python 3.11's is slow)
_RAW, _CONST, _QUANT, _SZ = RAW_KIND, CONST_KIND, QUANT_KIND, SZ_KIND

MAGIC, VERSION = 0xDB, 5  # 5: a zstd section is a frame per chunk (4: one frame, a block per chunk)
PREAMBLE, CHUNK_HEADER, SECTION_HEADER = 20, 22, 16
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HEADER_DTYPE = np.dtype([("table", "<u2"), ("kind", "u1"), ("bits", "u1"), ("section", "u1"), ("layout", "u1"),
                         ("rows", "<u4"), ("minimum", "<f4"), ("step", "<f4"), ("nbytes", "<u4")])
assert HEADER_DTYPE.itemsize == CHUNK_HEADER
_PREAMBLE = struct.Struct("<BBBBHHIII")
_SECTION = struct.Struct("<BBHIII")
_IDENTITY = IdentityCodec()
_ITEMSIZE = {d: torch.empty((), dtype=d).element_size() for d in DTYPES}
_NP_RAW = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64, torch.bfloat16: np.uint16}


def plane_spans(h: np.ndarray, cols: int, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of each chunk in the three planes its section's stream is made of, ``[3, C]``: the
    primary plane (``bytes``: n bytes, the low code bytes, a RAW chunk's first n bytes, zeros for
    CONST; ``bitpack``: a QUANT chunk's packed codes), the high plane (``bytes`` QUANT chunks
    wider than 8 bits: n bytes) and the rest (RAW chunks' remaining bytes); SZ bodies follow them.
    And each chunk's offset in each plane, ``[3, C+1]``: one compiled pass over the chunk table
    (``cpu_kernels.plane_spans``)."""
    c = len(h)
    return cpu_kernels.plane_spans(h["kind"], h["bits"], h["layout"], h["rows"], cols, itemsize,
                                   np.empty((3, c), np.int64), np.empty((3, c + 1), np.int64))


def offsets(sizes: np.ndarray) -> np.ndarray:
    """[C+1] offsets of consecutive runs of ``sizes``."""
    out = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


@dataclass
class HostChunks:
    """A sender's chunks on the host, ready to assemble: the chunk table and its three byte
    planes flat, chunk after chunk (``plane_spans``), so a section's stream is a slice of each
    (built by ``chunk_planes``)."""

    header: np.ndarray  # structured HEADER_DTYPE, one row per chunk (nbytes set)
    cols: int
    primary: np.ndarray  # uint8, the chunks' primary planes one after another
    high: np.ndarray  # uint8, the wide chunks' high planes
    rest: np.ndarray  # uint8, the RAW chunks' remaining bytes
    at: tuple[np.ndarray, np.ndarray, np.ndarray]  # [C+1] offsets of each chunk in primary, high, rest
    sz: list[bytes] | None = None  # SZ3 bodies, by chunk (sz mode)
    flags: list[np.ndarray] | None = None  # per message: the row cache's flags (uint8), the flag section
    flag_rows: np.ndarray | None = None  # [C] flags of each chunk (its share of the flag section's bytes)


def chunk_planes(h: np.ndarray, cols: int, itemsize: int, low: tuple[np.ndarray, np.ndarray],
                high: tuple[np.ndarray, np.ndarray] | None = None, raw: tuple[np.ndarray, np.ndarray] | None = None,
                **extra) -> HostChunks:
    """``HostChunks`` from where each chunk's bytes lie: ``low``, ``high`` and ``raw`` are
    ``(flat uint8 plane, [C] offset of each chunk in it)``: its low code bytes (``bitpack``: its
    packed codes), its high code bytes, its values' bytes (read only for RAW chunks; None when
    there are none). Chunks padded to one width are planes ``[C, W]`` at offsets ``c*W``
    (``padded``); deduplicated chunks quantized without padding lie back to back, and then the
    primary plane is the low plane itself, no copy (``_gather``). ``extra``: ``HostChunks``'s
    optional fields (``sz``, ``flags``, ``flag_rows``). Sets the chunk table's ``nbytes`` (an SZ chunk's
    body follows the planes)."""
    sizes, spans = plane_spans(h, cols, itemsize)
    p, hs, rs = sizes
    sz = extra.get("sz")
    h["nbytes"] = p + hs + rs if sz is None else \
        np.where(h["kind"] == _SZ, np.array([len(b) for b in sz], dtype=np.int64), p + hs + rs)
    kind, packed = h["kind"], h["layout"] == 1
    primary = _gather(*low, p)
    fill = np.flatnonzero(~packed & (kind != _QUANT))  # a CONST chunk's primary bytes are zeros, a RAW one's its first n
    if fill.size:
        primary = primary.copy() if primary.base is not None else primary
        at = spans[0]
        for c in fill.tolist():
            span = slice(int(at[c]), int(at[c + 1]))
            primary[span] = raw[0][int(raw[1][c]):int(raw[1][c]) + span.stop - span.start] if kind[c] == _RAW else 0
    wide = _gather(*high, hs) if high is not None and hs.any() else np.zeros(0, np.uint8)
    rest = _gather(raw[0], raw[1] + np.where(packed, 0, p), rs) if raw is not None and rs.any() \
        else np.zeros(0, np.uint8)
    return HostChunks(h, cols, primary, wide, rest, tuple(spans), **extra)


def padded(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``[C, W]`` plane as ``chunk_planes`` takes it: flat, chunk c at ``c*W``."""
    return plane.reshape(-1), np.arange(len(plane), dtype=np.int64) * plane.shape[1]


def _gather(plane: np.ndarray, at: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``plane[at[c]:at[c] + length[c]]`` for every chunk, back to back: a view when the spans
    already lie back to back, else one copy per span (numba; a Python loop without it)."""
    total = int(length.sum())
    if not len(at) or (int(at[0]) + total <= len(plane) and np.array_equal(at[1:], at[:-1] + length[:-1])):
        return plane[int(at[0]) if len(at) else 0:][:total]
    out = np.empty(total, np.uint8)
    if cpu_kernels.available():
        return cpu_kernels.gather_spans(plane, at.astype(np.int64), length.astype(np.int64), out)
    pos = 0
    for a, k in zip(at.tolist(), length.tolist()):
        out[pos:pos + k] = plane[a:a + k]
        pos += k
    return out


def bitpack(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``[C, 2n]`` uint8: each chunk's codes at its own bit width, LSB first (pure torch, any
    device; bytes past ``ceil(n*bits/8)`` are 0)."""
    c, n = codes.shape
    j = torch.arange(16, device=codes.device, dtype=torch.int64)
    use = j < bits[:, None, None]
    pos = torch.arange(n, device=codes.device, dtype=torch.int64)[None, :, None] * bits[:, None, None] + j
    pos = torch.where(use, pos, 0)
    val = torch.where(use, ((codes.to(torch.int64).unsqueeze(-1) >> j) & 1) << (pos & 7), 0)
    out = torch.zeros(c, 2 * n, device=codes.device, dtype=torch.int64)
    out.scatter_add_(1, (pos >> 3).reshape(c, -1), val.reshape(c, -1))
    return out.to(torch.uint8)


def bitunpack(packed: torch.Tensor, bits: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``bitpack``: ``[C, 2n]`` uint8 -> ``[C, n]`` int32 codes."""
    c = packed.shape[0]
    j = torch.arange(16, device=packed.device, dtype=torch.int64)
    pos = torch.arange(n, device=packed.device, dtype=torch.int64)[None, :, None] * bits[:, None, None] + j
    use = j < bits[:, None, None]
    pos = torch.where(use, pos, 0)
    byte = torch.gather(packed.to(torch.int64), 1, (pos >> 3).reshape(c, -1)).reshape(c, n, 16)
    bit = torch.where(use, (byte >> (pos & 7)) & 1, 0)
    return (bit << j).sum(-1).to(torch.int32)


def _section_raw(hc: HostChunks, lo: int, hi: int) -> tuple[bytes, list[int]]:
    """The raw stream of chunks lo..hi-1 (one section, one layout): a slice of each plane, and
    its block sizes (one block per chunk's primary plane, then the rest):
    coders that can start a new entropy table per block give every chunk its own, as per-chunk
    coding would, in one stream."""
    h = hc.header[lo:hi]
    p, w, r = hc.at
    parts = [hc.primary[p[lo]:p[hi]], hc.high[w[lo]:w[hi]], hc.rest[r[lo]:r[hi]]]
    if hc.sz is not None:
        parts += [np.frombuffer(hc.sz[lo + c], dtype=np.uint8) for c in np.flatnonzero(h["kind"] == _SZ)]
    raw = b"".join(parts)  # one copy (numpy slices are bytes-like)
    primary = int(p[hi] - p[lo])
    if h["layout"][0] == 1 or not primary:
        return raw, [len(raw)]
    blocks = np.diff(p[lo:hi + 1]).tolist()
    if len(raw) > primary:
        blocks.append(len(raw) - primary)
    return raw, blocks


def apportion(total: int, share: np.ndarray) -> np.ndarray:
    """``total`` bytes split by ``share`` (summing to 1) as whole bytes that add up to it: the
    floors, then one more byte for the largest remainders (so every count stays an integer)."""
    exact = total * share
    out = np.floor(exact).astype(np.int64)
    rest = int(total - out.sum())
    if rest > 0:
        out[np.argsort(out - exact, kind="stable")[:rest]] += 1
    return out


@functools.lru_cache(maxsize=64)
def _table_framing(count: int) -> np.ndarray:
    """Each of ``count`` chunks' share of a message's fixed framing: its chunk table entry and
    an even share of the preamble (the same for every message of ``count`` chunks: kept)."""
    per = CHUNK_HEADER + apportion(PREAMBLE, np.full(count, 1.0 / max(count, 1)))
    per.flags.writeable = False
    return per


def assemble(hc: HostChunks, dtype: torch.dtype, counts: list[int], coders: list[list[LosslessCodec]],
             weights: np.ndarray | None = None) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Messages of consecutive chunk runs (``counts[m]`` chunks each; ``coders[m][s]`` codes
    section s of message m). Returns the messages, and per chunk its wire bytes and the part of
    them that is framing. A section is coded as one stream, so its bytes are attributed to its
    chunks in proportion to ``weights`` (their order-0 entropy; body sizes when not given), in
    whole bytes: totals are exact, the split between tables of one stream is that estimate."""
    h = hc.header
    if len(h) > 0xFFFF or hc.cols > 0xFFFF:
        raise ValueError(f"a message holds at most 65535 chunks of at most 65535 columns, got {len(h)} x {hc.cols}")
    sent = np.zeros(len(h))
    framing = np.zeros(len(h))
    messages, c0 = [], 0
    for m, count in enumerate(counts):
        secs = h["section"][c0:c0 + count].astype(np.int64)
        bounds = np.flatnonzero(np.diff(secs)) + 1
        starts = np.concatenate([[0], bounds, [count]]) if count else np.zeros(1, np.int64)
        parts = []
        for s in range(len(starts) - 1):
            lo, hi = c0 + int(starts[s]), c0 + int(starts[s + 1])
            raw, blocks = _section_raw(hc, lo, hi)
            coder = coders[m][s]
            coded = coder.compress_blocks(raw, blocks) if raw and coder.codec_id else raw
            if len(coded) >= len(raw):
                coder, coded = _IDENTITY, raw
            params = coder.header_params()
            head = _SECTION.pack(coder.codec_id, len(params), 0, len(raw), len(coded), zlib.adler32(raw)) + params
            parts += [head, coded]
            share = (weights[lo:hi] if weights is not None else h["nbytes"][lo:hi]).astype(np.float64)
            share = share / share.sum() if share.sum() else np.full(hi - lo, 1.0 / (hi - lo))
            sent[lo:hi] += apportion(len(coded) + len(head), share)
            framing[lo:hi] += len(head) * share
        if hc.flags is not None:  # the flag section, first: the receiver needs it to know the rows
            head, coded = _flag_section(hc.flags[m], coders[m][0] if coders[m] else _IDENTITY)
            parts = [head, coded] + parts
            share = hc.flag_rows[c0:c0 + count].astype(np.float64)
            share = share / share.sum() if share.sum() else np.full(count, 1.0 / max(count, 1))
            sent[c0:c0 + count] += apportion(len(head) + len(coded), share)
            framing[c0:c0 + count] += len(head) * share
        table = h[c0:c0 + count].tobytes()
        body = b"".join(parts)
        widest = int(h["rows"][c0:c0 + count].max()) if count else 0
        pre = _PREAMBLE.pack(MAGIC, VERSION, DTYPES.index(dtype), len(starts) - 1, count, hc.cols, widest,
                             PREAMBLE + len(table) + len(body), zlib.adler32(table))
        messages.append(pre + table + body)
        per = _table_framing(count)
        sent[c0:c0 + count] += per
        framing[c0:c0 + count] += per
        c0 += count
    return messages, sent, framing


def _flag_section(flags: np.ndarray, coder: LosslessCodec) -> tuple[bytes, bytes]:
    """Header and coded bytes of one message's flag section (stored as is when coding does not pay)."""
    raw = np.packbits(np.asarray(flags, dtype=bool), bitorder="little").tobytes()
    coded = coder.compress(raw, 1) if raw and coder.codec_id else raw
    if len(coded) >= len(raw):
        coder, coded = _IDENTITY, raw
    params = coder.header_params()
    return _SECTION.pack(coder.codec_id, len(params), 0, len(raw), len(coded), zlib.adler32(raw)) + params, coded


def _read_flags(buf: memoryview, pos: int, size: int, expect: int, codecs: CodecCache) -> tuple[np.ndarray, int]:
    """The flag section at ``pos`` (``expect`` flags, each 0 or 1), and where the sections begin."""
    if pos + SECTION_HEADER > size:
        raise CorruptPayloadError("message truncated in its flag section")
    codec_id, plen, _, raw_n, coded_n, checksum = _SECTION.unpack_from(buf, pos)
    pos += SECTION_HEADER
    if raw_n != (expect + 7) // 8:
        raise CorruptPayloadError(f"flag section of {raw_n} bytes, the receiver's cache expects {expect} flags")
    if pos + plen + coded_n > size:
        raise CorruptPayloadError("message truncated in its flag section")
    params = bytes(buf[pos:pos + plen])
    coded = buf[pos + plen:pos + plen + coded_n]
    if codec_id:
        stream = codecs.get(codec_id, params).decompress(bytes(coded), raw_n)
    elif coded_n != raw_n:
        raise CorruptPayloadError(f"flag section: stored {coded_n} bytes, header says {raw_n}")
    else:
        stream = bytes(coded)
    if zlib.adler32(stream) != checksum:
        raise CorruptPayloadError("flag section: checksum mismatch, message corrupted")
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")
    if np.any(bits[expect:]):
        raise CorruptPayloadError("flag section: padding bits set, message corrupted")
    return bits[:expect], pos + plen + coded_n


@dataclass
class Parsed:
    """One received message on the host: its chunk table and its three byte planes flat, chunk
    after chunk, as ``HostChunks`` holds them (``plane_spans``; their offsets: ``at``), and
    the SZ chunks' decoded values."""

    dtype: torch.dtype
    header: np.ndarray
    cols: int
    primary: np.ndarray  # uint8: each chunk's primary plane (``bytes``: its n low code bytes)
    high: np.ndarray  # uint8: the wide chunks' high code bytes
    rest: np.ndarray  # uint8: the RAW chunks' remaining bytes
    at: tuple[np.ndarray, np.ndarray, np.ndarray]  # [C+1] offsets of each chunk in primary, high, rest
    sz: dict[int, np.ndarray]  # chunk -> its decoded values (the dtype's numpy type)
    flags: np.ndarray | None = None  # the row cache's flags (a message with a flag section)
    holds: int = -1  # ``cpu_kernels.TABLE_HAS_*`` bits: which of RAW, SZ and bit-packed chunks it holds (-1: any)

    @property
    def np_dtype(self) -> type:
        """The numpy type RAW and SZ values arrive in (bfloat16 as its uint16 bits)."""
        return _NP_RAW[self.dtype]

    def values(self, c: int) -> np.ndarray:
        """Chunk c's values as they travelled (a RAW or SZ chunk), in the dtype's numpy type."""
        if c in self.sz:
            return self.sz[c]
        p, _, r = self.at
        n = int(self.header["rows"][c]) * self.cols
        body = self.rest[r[c]:r[c + 1]] if self.header["layout"][c] == 1 else \
            np.concatenate([self.primary[p[c]:p[c] + n], self.rest[r[c]:r[c + 1]]])
        return body.view(self.np_dtype)


def parse(msg: bytes | memoryview, rows, cols: int, codecs: CodecCache | None = None,
          expect_chunks: int | None = None, expect_dtype: torch.dtype | None = None,
          flags: int | None = None) -> Parsed:
    """Validate one message and split it into its byte planes: magic, version, lengths,
    the chunk-table checksum, every coder's exact output size and every section's checksum.
    ``rows`` (one count, or one per chunk: the receiver knows them) and ``expect_chunks`` are
    checked before anything is allocated. ``codecs``: the receiver's codec cache and model store
    (None: a fresh cache without models, for one message). ``flags``: the number of row-cache
    flags the receiver expects (None: no flag section); then ``rows`` may be a function of the
    flags giving the rows each chunk carries, checked like a fixed count."""
    buf = memoryview(msg)
    size = len(buf)
    if size < PREAMBLE:
        raise CorruptPayloadError(f"message of {size} bytes is shorter than its preamble")
    magic, version, dtype_id, n_sections, n_chunks, m_cols, m_rows, total, table_sum = _PREAMBLE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CorruptPayloadError(f"bad magic 0x{magic:02x} (expected 0x{MAGIC:02x}): not a dlrm_comp message")
    if version != VERSION:
        raise CorruptPayloadError(f"unsupported message version {version} (this build reads {VERSION})")
    if dtype_id >= len(DTYPES):
        raise CorruptPayloadError(f"unknown dtype id {dtype_id}")
    if total != size:
        raise CorruptPayloadError(f"message of {size} bytes, its preamble says {total}")
    table_end = PREAMBLE + n_chunks * CHUNK_HEADER
    if table_end > size:
        raise CorruptPayloadError(f"message of {size} bytes is shorter than its chunk table ({table_end})")
    if expect_chunks is not None and n_chunks != expect_chunks:
        raise CorruptPayloadError(f"message holds {n_chunks} chunks, expected {expect_chunks}")
    if m_cols != cols:
        raise CorruptPayloadError(f"message chunks hold rows of {m_cols} values, expected {cols}")
    if n_chunks == 0 and n_sections != 0:
        raise CorruptPayloadError("a message without chunks has no sections")
    if zlib.adler32(buf[PREAMBLE:table_end]) != table_sum:
        raise CorruptPayloadError("chunk table checksum mismatch: message corrupted")
    h = np.frombuffer(buf[PREAMBLE:table_end], dtype=HEADER_DTYPE)
    codecs = codecs if codecs is not None else CodecCache()
    flag_values, sections_at = None, table_end
    if flags is not None:
        flag_values, sections_at = _read_flags(buf, table_end, size, flags, codecs)
    want = np.asarray(rows(flag_values) if callable(rows) else rows, dtype=np.int64)
    if want.ndim and len(want) != n_chunks:
        raise CorruptPayloadError(f"message holds {n_chunks} chunks, expected {len(want)}")
    dtype = DTYPES[dtype_id]
    item = _ITEMSIZE[dtype]
    sizes, at = np.empty((3, n_chunks), np.int64), np.empty((3, n_chunks + 1), np.int64)
    section_chunks, section_bytes = np.zeros(n_sections, np.int64), np.zeros(n_sections, np.int64)
    fail = cpu_kernels.check_table(h["kind"], h["bits"], h["layout"], h["section"], h["rows"], h["nbytes"],
                                   np.broadcast_to(want, (n_chunks,)), m_rows, cols, item, n_sections, sizes, at,
                                   section_chunks, section_bytes)
    if fail & cpu_kernels.TABLE_ROWS:
        raise CorruptPayloadError(f"message chunks hold {h['rows'].tolist()} rows (of at most {m_rows}), "
                                  f"expected {np.broadcast_to(want, (n_chunks,)).tolist()}")
    if expect_dtype is not None and dtype != expect_dtype:  # the dtype byte is outside the table's checksum
        raise CorruptPayloadError(f"message carries {dtype} values, expected {expect_dtype}")
    if fail & cpu_kernels.TABLE_FIELDS:  # every field in range, and sections numbered 0, 1, ... in order, one layout each
        raise CorruptPayloadError("chunk table has out-of-range fields")
    if fail & cpu_kernels.TABLE_SZ:
        raise CorruptPayloadError("SZ chunk with a bad layout or a body larger than its raw size")
    if fail & cpu_kernels.TABLE_SIZES:
        raise CorruptPayloadError("chunk body sizes do not match their kinds and widths")
    has_sz = bool(fail & cpu_kernels.TABLE_HAS_SZ)
    pieces: list[list] = [[], [], []]  # each section's slice of the primary, high and rest planes
    sz_bodies: dict[int, bytes] = {}
    pos, lo = sections_at, 0
    for s in range(n_sections):
        if pos + SECTION_HEADER > size:
            raise CorruptPayloadError("message truncated in a section header")
        codec_id, plen, _, raw_n, coded_n, checksum = _SECTION.unpack_from(buf, pos)
        pos += SECTION_HEADER
        if pos + plen + coded_n > size:
            raise CorruptPayloadError("message truncated in a section body")
        params = bytes(buf[pos:pos + plen])
        pos += plen
        hi = lo + int(section_chunks[s])
        if int(section_bytes[s]) != raw_n:
            raise CorruptPayloadError(f"section {s}: {raw_n} raw bytes, its chunks claim otherwise")
        coded = buf[pos:pos + coded_n]
        pos += coded_n
        if codec_id:
            stream = codecs.get(codec_id, params).decompress(bytes(coded), raw_n)
        else:
            if coded_n != raw_n:
                raise CorruptPayloadError(f"section {s}: stored {coded_n} bytes, header says {raw_n}")
            stream = coded
        if zlib.adler32(stream) != checksum:
            raise CorruptPayloadError(f"section {s}: checksum mismatch, message corrupted")
        stream, cut = np.frombuffer(stream, dtype=np.uint8), 0
        for plane, a in zip(pieces, at):  # the section's stream: a run of each plane, then its SZ bodies
            plane.append(stream[cut:cut + int(a[hi] - a[lo])])
            cut += int(a[hi] - a[lo])
        for c in np.flatnonzero(h["kind"][lo:hi] == _SZ).tolist() if has_sz else ():
            nb = int(h["nbytes"][lo + c])
            sz_bodies[lo + c] = stream[cut:cut + nb].tobytes()
            cut += nb
        lo = hi
    if pos != size:
        raise CorruptPayloadError(f"{size - pos} unexpected trailing bytes")
    primary, high, rest = (p[0] if len(p) == 1 else np.concatenate(p) if p else np.zeros(0, np.uint8)
                           for p in pieces)
    return Parsed(dtype, h, cols, primary, high, rest, tuple(at),
                  _sz_values(sz_bodies, dtype, h["rows"], cols) if sz_bodies else {}, flag_values,
                  fail & (cpu_kernels.TABLE_HAS_SZ | cpu_kernels.TABLE_HAS_RAW | cpu_kernels.TABLE_HAS_BITPACK))


def _sz_values(bodies: dict, dtype: torch.dtype, rows: np.ndarray, cols: int) -> dict[int, np.ndarray]:
    """Decode the SZ3 chunks (SZ3 works in float64 for float64 data, else float32; the receiver
    casts to the dtype exactly as the sender did before verifying)."""
    from dlrm_comp.compress.sz import sz_decompress
    out = {}
    work = np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)
    for c, blob in bodies.items():
        r = int(rows[c])
        try:
            y = sz_decompress(blob, work, (r, cols))
        except (ValueError, RuntimeError) as e:
            raise CorruptPayloadError(f"SZ3 chunk {c}: {e}") from None
        y = torch.from_numpy(np.ascontiguousarray(y).reshape(-1)).to(dtype)
        out[c] = (y.view(torch.int16) if dtype == torch.bfloat16 else y).numpy().view(_NP_RAW[dtype])
    return out


def section_ids(keys: list) -> list[int]:
    """Section index of each chunk of a message whose chunks are grouped by coder key."""
    out, last, s = [], object(), -1
    for k in keys:
        if k != last:
            s, last = s + 1, k
        out.append(s)
    return out


def message_length(head: bytes | memoryview | np.ndarray) -> int:
    """A message's total length from its first PREAMBLE bytes (to receive the rest of it)."""
    buf = memoryview(head if not isinstance(head, np.ndarray) else head.tobytes())
    if len(buf) < PREAMBLE:
        raise CorruptPayloadError(f"{len(buf)} bytes hold no preamble")
    magic, version = buf[0], buf[1]
    if magic != MAGIC or version != VERSION:
        raise CorruptPayloadError("not a dlrm_comp message of this version")
    return _PREAMBLE.unpack_from(buf, 0)[7]
