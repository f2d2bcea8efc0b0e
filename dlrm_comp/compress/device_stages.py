"""The lossless stage of the device message path (``device_wire.py``): every destination's message
coded in one call each way, on the device, the coded sizes left on the device.

``encode(buf, sizes)`` -> the coded messages back to back at the front of one flat uint8 tensor
(which may run longer: the sender slices it once the sizes are read) and their sizes as a ``[W]``
int64 device tensor, which goes straight into the size all-to-all: the direction's one host read
is the receive splits (``exchange/sizes.py``, ``MessageSender.send_device``), read together with
these. ``decode(coded, coded_sizes, sizes)`` -> the messages and where each starts in the returned
buffer (``device_wire.parse`` reads them there).

- ``IdentityStage``: the messages as they are (where nvcomp is absent; what the CPU runs).
- ``ChunkedStage``: each message cut into chunks of ``CHUNK`` bytes, coded by a batched coder
  (nvcomp's ANS through its C API, ``nvcomp_batched.py``), and framed without a host read::

      coded message   u32 coded size of each of its chunks, zeros to a multiple of 16 bytes
                      | each coded chunk, zeros to a multiple of 16 bytes

  Both sides know each message's chunk count from its layout size. The sender compacts the
  coders' fixed output slots into messages by one gather of 16-byte units; the receiver reads the
  sizes, checks that they add up to what arrived, and decodes every chunk in one call. A message
  whose sizes or chunks fail has its header's magic byte cleared, so ``device_wire.parse`` flags
  its chunks (they decode as NaN, and ``CorruptPayloadError`` follows at the next print interval).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.runtime import to_device

CHUNK = 1 << 16  # nvcomp's advice for ANS: chunks of about 64 KiB decode fastest
ALIGN = 16  # nvcomp's ANS alignment for inputs and outputs, and the framing's unit


def _up(n, align: int = ALIGN):
    return -(-n // align) * align


def starts_of(sizes: list[int]) -> list[int]:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).tolist() if len(sizes) else []


class DeviceStage:
    """One call each way over every destination's message (see the module docstring)."""

    name = "identity"

    def encode(self, buf: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, coded: torch.Tensor, coded_sizes: list[int], sizes: list[int]) -> tuple[torch.Tensor, list[int]]:
        raise NotImplementedError


class IdentityStage(DeviceStage):
    """The messages as they are (the ``identity`` lossless codec's semantics): where nvcomp is absent."""

    name = "identity"

    def encode(self, buf: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return buf, to_device(torch.tensor(list(sizes), dtype=torch.int64), buf.device)

    def decode(self, coded: torch.Tensor, coded_sizes: list[int], sizes: list[int]) -> tuple[torch.Tensor, list[int]]:
        if list(coded_sizes) != list(sizes):
            raise CorruptPayloadError(f"device messages of {list(coded_sizes)} bytes, the layout expects "
                                      f"{list(sizes)} (identity stage)")
        return coded, starts_of(sizes)


def aligned(buf: torch.Tensor, sizes: list[int], align: int = ALIGN) -> tuple[torch.Tensor, list[int]]:
    """``buf``'s consecutive pieces of ``sizes`` bytes, each moved to start at a multiple of
    ``align`` (zero gaps; one ``cat``), and their new offsets."""
    pieces, offsets, at, out = [], [], 0, 0
    gap = torch.zeros(align, dtype=torch.uint8, device=buf.device)
    for size in sizes:
        offsets.append(out)
        pieces.append(buf[at:at + size])
        pad = -size % align
        if pad:
            pieces.append(gap[:pad])
        at, out = at + size, out + size + pad
    return (torch.cat(pieces) if pieces else buf[:0]), offsets


@dataclass
class _Geometry:
    """What both sides derive from the messages' layout sizes, once per layout."""

    counts: list[int]  # chunks per message
    first: list[int]  # each message's first chunk
    tables: list[int]  # bytes of each message's size table
    nbytes: torch.Tensor  # [N] int64: each chunk's uncoded bytes
    chunk_message: torch.Tensor  # [N] int64
    size_bytes: torch.Tensor  # [4N] int64: where each chunk's u32 size goes in the table area
    order: torch.Tensor  # [W + N] int64: the stream's segments (tables first, then chunks) in message order
    source: torch.Tensor  # [W + N] int64: each segment's first 16-byte unit in the stage buffer
    table_units: torch.Tensor  # [W] int64
    table_bytes: torch.Tensor  # [W] int64
    size_message: torch.Tensor  # [4N] int64: the message of each size-table byte
    size_within: torch.Tensor  # [4N] int64: its offset in its coded message
    first_chunk: torch.Tensor  # [N] int64: the first chunk of each chunk's message
    magic: torch.Tensor  # [W] int64: where each decoded message's magic byte lands


class ChunkedStage(DeviceStage):
    """Messages cut into chunks and coded by a batched coder on the device (module docstring).
    ``coder``: ``name``, ``max_out(chunk)``, ``compress(src [N, chunk], nbytes [N], dst [N, slot])``
    -> coded sizes ``[N]``, ``decompress(src, offsets, nbytes, dst [N, chunk], expect)`` -> ok ``[N]``."""

    def __init__(self, coder, chunk: int = CHUNK):
        if chunk % ALIGN:
            raise ValueError(f"chunks of a multiple of {ALIGN} bytes, got {chunk}")
        self.coder, self.chunk = coder, chunk
        self.slot = _up(coder.max_out(chunk))
        self.name = coder.name
        self._geometry_memo: dict = {}

    MEMO = 256  # geometries kept (bag deduplication changes the message sizes from step to step)

    def _geometry(self, sizes: list[int], device) -> _Geometry:
        key = (tuple(sizes), str(device))
        g = self._geometry_memo.get(key)
        if g is None:
            if len(self._geometry_memo) >= self.MEMO:  # as the codecs' memo: bounded, rebuilt on demand
                self._geometry_memo.clear()
            g = self._geometry_memo[key] = self._build_geometry(list(sizes), device)
        return g

    def _build_geometry(self, sizes: list[int], device) -> _Geometry:
        w, k = len(sizes), self.chunk
        counts = [-(-s // k) for s in sizes]
        n = sum(counts)
        first = starts_of(counts)
        tables = [_up(4 * c) for c in counts]
        table_at = starts_of(tables)
        nbytes = np.concatenate([np.minimum(s - np.arange(c) * k, k) for s, c in zip(sizes, counts)]) \
            if n else np.zeros(0, np.int64)
        msg = np.repeat(np.arange(w), counts)
        size_bytes = (np.repeat(np.asarray(table_at, np.int64), counts) + 4 * (np.arange(n) - np.repeat(first, counts)))
        size_bytes = (size_bytes[:, None] + np.arange(4)).reshape(-1)
        order = np.concatenate([np.concatenate([[m], w + first[m] + np.arange(counts[m])]) for m in range(w)]) \
            if w else np.zeros(0, np.int64)
        table_area = sum(tables)
        source = np.concatenate([np.asarray(table_at, np.int64), table_area + np.arange(n) * self.slot]) // ALIGN
        t = lambda a: to_device(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)), device)  # noqa: E731
        within = (4 * (np.arange(n) - np.repeat(first, counts))[:, None] + np.arange(4)).reshape(-1)
        return _Geometry(counts, first, tables, t(nbytes), t(msg), t(size_bytes), t(order),
                         t(source[order]), t(np.asarray(tables) // ALIGN), t(tables), t(np.repeat(msg, 4)), t(within),
                         t(np.repeat(first, counts)), t(np.asarray(first, np.int64) * self.chunk))

    def encode(self, buf: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        g, dev = self._geometry(sizes, buf.device), buf.device
        n, w = int(sum(g.counts)), len(sizes)
        if n == 0:
            return buf[:0], torch.zeros(w, dtype=torch.int64, device=dev)
        src = aligned(buf, sizes, self.chunk)[0].view(n, self.chunk)
        area = sum(g.tables)
        stage = torch.zeros(area + n * self.slot, dtype=torch.uint8, device=dev)
        coded = self.coder.compress(src, g.nbytes, stage[area:].view(n, self.slot)).clamp(0, self.slot)
        stage[:area].index_copy_(0, g.size_bytes, coded.to(torch.int32).view(torch.uint8))
        units = torch.cat([g.table_units, _up(coded) // ALIGN]).index_select(0, g.order)  # per segment, in order
        ends = torch.cumsum(units, 0)
        at = torch.arange(stage.numel() // ALIGN, device=dev)
        seg = torch.searchsorted(ends, at, right=True).clamp_max(units.numel() - 1)
        take = (g.source.index_select(0, seg) + at - (ends - units).index_select(0, seg)).clamp_max(at.numel() - 1)
        out = stage.view(-1, ALIGN).index_select(0, take).view(-1)  # the messages, compacted, then leftovers
        msg_sizes = g.table_bytes + torch.zeros(w, dtype=torch.int64, device=dev).index_add_(0, g.chunk_message,
                                                                                             _up(coded))
        return out, msg_sizes

    def decode(self, coded: torch.Tensor, coded_sizes: list[int], sizes: list[int]) -> tuple[torch.Tensor, list[int]]:
        g, dev = self._geometry(sizes, coded.device), coded.device
        n, w = int(sum(g.counts)), len(sizes)
        if coded.numel() != sum(coded_sizes) or len(coded_sizes) != w:
            raise CorruptPayloadError(f"{coded.numel()} bytes arrived for coded messages of {list(coded_sizes)}")
        short = [m for m in range(w) if coded_sizes[m] < g.tables[m] or coded_sizes[m] % ALIGN]
        if short:
            raise CorruptPayloadError(f"coded device message {short[0]} is {coded_sizes[short[0]]} bytes: not its "
                                      f"{g.tables[short[0]]}-byte size table and 16-byte chunks ({self.name})")
        at, got = to_device(torch.tensor([starts_of(coded_sizes), list(coded_sizes)], dtype=torch.int64), dev)
        c = coded.index_select(0, at.index_select(0, g.size_message) + g.size_within)
        c = c.view(torch.int32).to(torch.int64)  # the size tables, u32 little-endian
        valid = (c >= 0) & (c <= self.slot)
        padded = _up(c.clamp(0, self.slot))
        body = torch.zeros(w, dtype=torch.int64, device=dev).index_add_(0, g.chunk_message, padded)
        wrong = torch.zeros(w, dtype=torch.int64, device=dev).index_add_(0, g.chunk_message, (~valid).long())
        bad = (g.table_bytes + body != got) | (wrong > 0)
        excl = torch.cumsum(padded, 0) - padded
        offsets = (at + g.table_bytes).index_select(0, g.chunk_message) + excl - excl.index_select(0, g.first_chunk)
        chunk_bad = bad.index_select(0, g.chunk_message)
        offsets, nbytes = offsets.masked_fill(chunk_bad, 0), c.masked_fill(chunk_bad, 0)
        out = torch.empty(n, self.chunk, dtype=torch.uint8, device=dev)
        ok = self.coder.decompress(coded, offsets, nbytes, out, g.nbytes)
        failed = torch.zeros(w, dtype=torch.int64, device=dev).index_add_(0, g.chunk_message, (~ok).long())
        bad = bad | (failed > 0)
        flat = out.view(-1)
        flat.index_copy_(0, g.magic, flat.index_select(0, g.magic).masked_fill(bad, 0))  # parse flags a bad message
        return flat, [f * self.chunk for f in g.first]


def default_stage(device) -> DeviceStage:
    """nvcomp's ANS on CUDA where its library loads, else the identity stage."""
    if torch.device(device).type == "cuda" and nvcomp_ready():  # pragma: no cover - CUDA only
        from dlrm_comp.compress.nvcomp_batched import BatchedAns
        return ChunkedStage(BatchedAns())
    return IdentityStage()


def nvcomp_ready() -> bool:
    """nvcomp's batched ANS can run here: its library loads and CUDA is available."""
    from dlrm_comp.compress import nvcomp_batched
    return torch.cuda.is_available() and nvcomp_batched.available()
