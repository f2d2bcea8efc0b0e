"""The device message format (version 1): ``codec``'s messages assembled, coded and parsed by
device ops, so the codes never leave the device (issue 21, item 3).

One message per destination, its chunks in the order of the layout both sides know::

    header (16 B)        u8 magic 0xDE | u8 version 1 | u8 dtype | u8 0 | u16 chunks | u16 cols
                         | u32 values V (the chunks' rows x cols, summed) | u32 message bytes
    chunk table (C x 16) u16 table | u8 kind | u8 bits | u32 rows | f32 minimum | f32 step
    low plane (V B)      per value: the low byte of its code (QUANT), byte 0 of its value (RAW), 0 (CONST)
    high plane (V B)     per value: the high byte of its code (0 up to 8 bits), byte 1 of its value (RAW), 0
    rest (V x (s-2) B)   per value (s = the dtype's size): bytes 2.. of its value (RAW), zeros otherwise

(little-endian; values chunk after chunk, each chunk's ``rows x cols`` values row after row, no
padding). Every field but kind, bits, minimum and step follows from the layout and the dtype, and
so does the message's size, ``16 + 16 C + s V``: the sender writes messages with no host read, and
the receiver knows what to expect before anything arrives. Byte planes, not bit widths: a lossless
stage over them sees the low plane's skewed bytes apart from the (mostly zero) high plane and rest,
and the sizes do not depend on the data. The planes of a RAW chunk are its values' bytes (the wire
format's version-4 convention: the first bytes of a RAW chunk in the primary plane).

The lossless stage runs once per direction over every destination's message
(``device_stages.py``): nvcomp's batched ANS on CUDA over 64 KiB chunks (``ChunkedStage``, the
``gpu`` extra), the identity stage where nvcomp is absent (``IdentityStage``: the message as it
is; what the CPU runs); its coded sizes stay on the device. The receiver parses by
device ops: header and table fields that the layout fixes are compared with the expected bytes, the
kind and bit width checked for range; a message that fails is counted on the device (read with the
statistics, ``QuantCodec.check_messages``) and its rows decode as NaN, never as a silently wrong
value. Then the existing reconstruction (``dequantize_planes``) runs on the planes.

Not on this path (``compress.message_path``, ``config.py``, keeps them on the host wire format):
the row cache's flag section, ``compress.layout=bitpack``, per-table host coders and the lossless
tuner, ``dist.size_exchange=slots`` and ``compress.peers`` routing.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.compress.kinds import ChunkKind
from dlrm_comp.compress.wire import DTYPES
from dlrm_comp.runtime import to_device

MAGIC, VERSION = 0xDE, 1
HEADER, ENTRY = 16, 16
_HEADER = struct.Struct("<BBBBHHII")
_ITEMSIZE = {d: torch.empty((), dtype=d).element_size() for d in DTYPES}
# the entry bytes that the layout fixes (table, rows) and those the data sets (kind, bits, minimum, step)
_FIXED = np.array([1, 1, 0, 0, 1, 1, 1, 1] + [0] * 8, dtype=bool)
MESSAGE_PATHS = ("host", "device", "auto")  # compress.message_path (config.py, exchange/plan.py check by it)


def message_bytes(chunks: int, values: int, dtype: torch.dtype) -> int:
    """The size of one device message, from its layout alone."""
    return HEADER + ENTRY * chunks + _ITEMSIZE[dtype] * values


@dataclass
class DeviceLayout:
    """What both sides derive from a ``ChunkLayout`` and the dtype, once per layout: per message
    its chunks, values and bytes; the expected header and fixed table bytes (device constants);
    and, for chunks of unequal rows (bag deduplication), the positions of the travelling values in
    the padded ``[C, N]`` planes."""

    dtype: torch.dtype
    counts: list[int]  # chunks per message
    values: list[int]  # V_m per message
    sizes: list[int]  # bytes per message
    headers: torch.Tensor  # [W, 16] uint8
    fixed: torch.Tensor  # [C, 16] uint8: the entries' layout bytes, zeros where the data writes
    fixed_mask: torch.Tensor  # [16] bool
    chunk_message: torch.Tensor  # [C] int64: each chunk's message
    gather: torch.Tensor | None  # [V] int64 positions in the flat [C * N] planes (None: every chunk full)
    width: int  # N: the padded planes' width (values)
    body: torch.Tensor  # [C] float64: each chunk's plane bytes (s x its values)
    framing: torch.Tensor  # [C] float64: its entry and its share of its message's header

    @property
    def item(self) -> int:
        return _ITEMSIZE[self.dtype]


def device_layout(tables: list[list[int]], rows: list[np.ndarray], dim: int, dtype: torch.dtype,
                  device) -> DeviceLayout:
    """The ``DeviceLayout`` of messages carrying ``tables[m]``'s chunks of ``rows[m]`` rows each."""
    if dtype not in DTYPES:
        raise TypeError(f"device messages carry {', '.join(map(str, DTYPES))}, not {dtype}")
    counts = [len(t) for t in tables]
    chunk_rows = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    values = [int(np.asarray(r, np.int64).sum()) * dim for r in rows]
    sizes = [message_bytes(c, v, dtype) for c, v in zip(counts, values)]
    if any(c > 0xFFFF for c in counts) or dim > 0xFFFF or any(size >= 2**32 for size in sizes):
        raise ValueError(f"a device message holds at most 65535 chunks of at most 65535 columns in under 4 GiB, "
                         f"got {max(counts, default=0)} chunks x {dim} columns, {max(sizes, default=0)} bytes")
    head = np.frombuffer(b"".join(_HEADER.pack(MAGIC, VERSION, DTYPES.index(dtype), 0, c, dim, v, s)
                                  for c, v, s in zip(counts, values, sizes)), np.uint8).reshape(-1, HEADER)
    fixed = np.zeros((len(chunk_rows), ENTRY), np.uint8)
    ids = np.array([t for ts in tables for t in ts], np.int64)
    fixed[:, 0:2] = ids.astype("<u2").view(np.uint8).reshape(-1, 2)
    fixed[:, 4:8] = chunk_rows.astype("<u4").view(np.uint8).reshape(-1, 4)
    u = int(chunk_rows.max()) if len(chunk_rows) else 0
    gather = None
    if len(chunk_rows) and not (chunk_rows == u).all():
        n = chunk_rows * dim
        starts = np.arange(len(chunk_rows)) * u * dim
        gather = np.repeat(starts, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        gather = to_device(torch.from_numpy(gather.astype(np.int64)), device)
    t = torch.from_numpy
    item = _ITEMSIZE[dtype]
    framing = np.repeat(HEADER / np.maximum(np.asarray(counts, np.float64), 1), counts) + ENTRY
    return DeviceLayout(dtype, counts, values, sizes, to_device(t(head.copy()), device), to_device(t(fixed), device),
                        to_device(t(_FIXED.copy()), device),
                        to_device(t(np.repeat(np.arange(len(counts)), counts).astype(np.int64)), device),
                        gather, u * dim, to_device(t((chunk_rows * dim * item).astype(np.float64)), device),
                        to_device(t(framing.astype(np.float64)), device))


def _f32_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).contiguous().view(torch.uint8).view(-1, 4)


def planes(q, chunks: torch.Tensor, item: int) -> torch.Tensor:
    """``[C, N, s]`` uint8: per value its low byte, high byte and rest (above), for every kind."""
    c, n = chunks.shape
    xb = chunks.contiguous().view(torch.uint8).view(c, n, item)
    codes = torch.stack([q.low, q.high], -1)
    if item > 2:
        codes = torch.nn.functional.pad(codes, (0, item - 2))
    codes = codes.masked_fill((q.kind != ChunkKind.QUANT)[:, None, None], 0)
    return torch.where((q.kind == ChunkKind.RAW)[:, None, None], xb, codes)


def assemble(q, chunks: torch.Tensor, lay: DeviceLayout) -> torch.Tensor:
    """Every destination's message, one after the other, as one flat uint8 tensor on the chunks'
    device (torch ops only: no host read; a constant number of ops whatever the chunk count)."""
    c, n = chunks.shape
    item = lay.item
    flat = planes(q, chunks, item).view(c * n, item)
    if lay.gather is not None:
        flat = flat.index_select(0, lay.gather)
    rest = flat[:, 2:].contiguous().view(-1) if item > 2 else None
    entries = torch.cat([lay.fixed[:, 0:2], q.kind.to(torch.uint8)[:, None], q.bits.to(torch.uint8)[:, None],
                         lay.fixed[:, 4:8], _f32_bytes(q.minimum), _f32_bytes(q.step)], 1)
    low, high = flat[:, 0], flat[:, 1]
    pieces, c0, v0 = [], 0, 0
    for m, (cm, vm) in enumerate(zip(lay.counts, lay.values)):
        pieces += [lay.headers[m], entries[c0:c0 + cm].reshape(-1), low[v0:v0 + vm], high[v0:v0 + vm]]
        if rest is not None:
            pieces.append(rest[v0 * (item - 2):(v0 + vm) * (item - 2)])
        c0, v0 = c0 + cm, v0 + vm
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.uint8, device=chunks.device)


@dataclass
class DeviceReceived:
    """What a direction's device messages arrive as: one flat uint8 tensor, message after
    message, and each message's (coded) size, read on the host by the size protocol."""

    buffer: torch.Tensor
    sizes: list[int]

    @classmethod
    def looped(cls, payload: torch.Tensor, sizes: torch.Tensor) -> "DeviceReceived":
        """What one process receives from itself (tests and benchmarks): the coded sizes read,
        the payload cut to them."""
        host = [int(s) for s in sizes.tolist()]
        return cls(payload[:sum(host)], host)


@dataclass
class DeviceParsed:
    """The received messages' chunk tables and planes, padded to ``[C, N]`` (device tensors)."""

    kind: torch.Tensor  # [C] int64
    bits: torch.Tensor  # [C] int64
    minimum: torch.Tensor  # [C] float64
    step: torch.Tensor  # [C] float64
    low: torch.Tensor  # [C, N] uint8
    high: torch.Tensor  # [C, N] uint8
    raw: torch.Tensor  # [C, N] of the dtype
    bad: torch.Tensor  # [C] bool: its message failed a check


def parse(buf: torch.Tensor, lay: DeviceLayout, starts: list[int]) -> DeviceParsed:
    """Split the received messages (one flat uint8 tensor, each of its ``lay.sizes`` bytes at
    ``starts``, where the lossless stage's ``decode`` put them, lengths checked there) by device
    ops, and check every field the layout fixes and the data-set ones' ranges, without a host read."""
    item, dev = lay.item, buf.device
    c, v = int(sum(lay.counts)), int(sum(lay.values))
    heads, tabs, lows, highs, rests = [], [], [], [], []
    for cm, vm, at in zip(lay.counts, lay.values, starts):
        p = at + HEADER
        heads.append(buf[at:p])
        tabs.append(buf[p:p + ENTRY * cm])
        p += ENTRY * cm
        lows.append(buf[p:p + vm])
        highs.append(buf[p + vm:p + 2 * vm])
        if item > 2:
            rests.append(buf[p + 2 * vm:p + item * vm])
    if c == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return DeviceParsed(empty, empty, empty.double(), empty.double(), torch.zeros(0, 0, dtype=torch.uint8,
                            device=dev), torch.zeros(0, 0, dtype=torch.uint8, device=dev),
                            torch.zeros(0, 0, dtype=lay.dtype, device=dev), empty.bool())
    head_bad = (torch.cat(heads).view(-1, HEADER) != lay.headers).any(1)
    entries = torch.cat(tabs).view(c, ENTRY)
    kind, bits = entries[:, 2].to(torch.int64), entries[:, 3].to(torch.int64)
    minimum = entries[:, 8:12].contiguous().view(torch.float32).view(c).to(torch.float64)
    step = entries[:, 12:16].contiguous().view(torch.float32).view(c).to(torch.float64)
    quant = kind == ChunkKind.QUANT
    bad = (entries.masked_fill(~lay.fixed_mask, 0) != lay.fixed).any(1) | (kind > ChunkKind.QUANT) \
        | torch.where(quant, (bits < 1) | (bits > 16), bits != 0) | head_bad.index_select(0, lay.chunk_message)
    cols = [torch.cat(lows)[:, None], torch.cat(highs)[:, None]]
    if item > 2:
        cols.append(torch.cat(rests).view(v, item - 2))
    flat = torch.cat(cols, 1)  # [V, s]
    if lay.gather is not None:
        flat = torch.zeros(c * lay.width, item, dtype=torch.uint8, device=dev).index_copy_(0, lay.gather, flat)
    n = lay.width
    return DeviceParsed(kind, bits, minimum, step, flat[:, 0].contiguous().view(c, n),
                        flat[:, 1].contiguous().view(c, n), flat.view(lay.dtype).view(c, n), bad)
