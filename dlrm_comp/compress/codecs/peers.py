"""``compress.peers=inter_node`` and ``auto``: some peers' messages travel uncompressed.

Inside a node (loopback, NVLink) bytes are cheap and the codec is not: Meta's compressed
all-to-all (torchcomms' ctran) compresses only what leaves the node. This codec routes each
message by its peer: the mode's codec where the ``raw`` mask is False, the rows as they are (their
bytes, in the rows' dtype) where it is True. ``inter_node`` sets ``raw`` to the peers on this
rank's node (this rank included) for the whole run; ``auto`` (``train/peer_policy.py``) sets it
per class of peer between steps. Being on one node is symmetric and every rank holds the same
``auto`` decisions, so a receiver routes message m exactly as its sender did. Byte-message modes
only (``codec``, ``sz``): their messages travel with their sizes already
(``dist.size_exchange=exact``), so an uncompressed message is one more byte string and the
exchange is unchanged. ``counts`` keeps what ``auto`` decides from: bytes per destination and
the inner codec's own bytes and seconds (host clock: byte messages end on the host anyway).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, nonfinite_count, rows_bytes
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.wire import offsets


def sub_layout(layout: ChunkLayout, messages: list[int]) -> ChunkLayout:
    """The layout of some of ``layout``'s messages, in order."""
    return ChunkLayout([layout.tables[m] for m in messages], [layout.rows[m] for m in messages],
                       [layout.slices[m] for m in messages], layout.dim, layout.deduplicated)


def row_bytes(values: torch.Tensor) -> np.ndarray:
    """A raw message: the contiguous host rows' bytes as a view (the sender joins every message
    into its send buffer, the one copy of the rows)."""
    return values.reshape(-1).view(torch.uint8).numpy()


def rows_of(msg, rows: int, dim: int, dtype: torch.dtype, peer: int) -> torch.Tensor:
    """The ``[rows, dim]`` values of a raw message from ``peer``, a view of the receive buffer
    where it is writable and aligned to ``dtype`` (a message after a compressed one of odd length
    is not), else of a copy."""
    item = torch.empty((), dtype=dtype).element_size()
    buf = np.frombuffer(msg, dtype=np.uint8) if len(msg) else np.zeros(0, np.uint8)
    if len(buf) != rows * dim * item:
        raise CorruptPayloadError(f"an uncompressed message from peer {peer} holds {len(buf)} bytes, expected "
                                  f"{rows} rows of {dim} {dtype}")
    if not len(buf):
        return torch.zeros(rows, dim, dtype=dtype)
    if not buf.flags.writeable or buf.ctypes.data % item:
        buf = buf.copy()
    return torch.from_numpy(buf).view(dtype).view(rows, dim)


@dataclass
class RouteCounts:
    """One direction's traffic since it was last taken: per destination, the rows' uncompressed
    bytes and the bytes sent for them; the inner codec's uncompressed bytes in and out and its
    seconds, encoding here and decoding what peers compressed for this rank."""
    raw: np.ndarray
    sent: np.ndarray
    calls: int = 0
    enc_raw: float = 0.0
    enc_sent: float = 0.0
    enc_s: float = 0.0
    dec_raw: float = 0.0
    dec_s: float = 0.0

    @classmethod
    def empty(cls, destinations: int) -> "RouteCounts":
        return cls(np.zeros(destinations), np.zeros(destinations))


class PeerRoutedCodec(ModeCodec):
    """``inner`` (a byte-message codec) for the peers where ``raw`` is False, raw rows elsewhere;
    ``local``: the peers on this rank's node (``raw`` defaults to them, ``inter_node``)."""

    byte_messages = True

    def __init__(self, inner: ModeCodec, local: Sequence[bool], raw: Sequence[bool] | None = None,
                 fixed: ModeCodec | None = None):
        if not inner.byte_messages:
            raise ValueError(f"compress.peers routes byte-message modes (codec, sz), not {inner.name!r}")
        if fixed is not None and fixed.byte_messages:
            raise ValueError(f"compress.peers_fixed: a fixed-rate mode, not {fixed.name!r}")
        super().__init__(inner.plan, inner.cache, inner.device)
        self.inner, self.local = inner, [bool(v) for v in local]
        self.name = inner.name
        self.raw = self.local if raw is None else raw
        self.fixed = fixed  # compress.peers_fixed's codec (auto's third route), None: codec or raw only
        self.whole_fixed = False  # the direction travels whole in ``fixed`` (set between steps, as ``raw``)
        self.bytes_local = 0  # bytes of the messages to this node's ranks (they never cross a link)
        self._local_mask = np.asarray(self.local, dtype=bool)
        self.counts = RouteCounts.empty(len(self.local))

    @property
    def raw(self) -> list[bool]:
        return self._raw

    @raw.setter
    def raw(self, mask: Sequence[bool]) -> None:
        """Takes effect from the next message: set between steps, the same on every rank."""
        if len(mask) != len(self.local):
            raise ValueError(f"a raw mask of {len(mask)} destinations for {len(self.local)}")
        self._raw = [bool(v) for v in mask]
        self.remote = [m for m, r in enumerate(self._raw) if not r]  # the messages the inner codec codes

    @cached_property
    def all_raw(self) -> "AllRawRoute":
        """What the exchange runs while every destination gets raw rows."""
        return AllRawRoute(self)

    @cached_property
    def all_fixed(self) -> "AllFixedRoute":
        """What the exchange runs while the direction travels whole in the fixed-rate mode."""
        if self.fixed is None:
            raise ValueError("a route in a fixed-rate mode needs compress.peers_fixed")
        return AllFixedRoute(self, self.fixed)

    def count(self, raw: np.ndarray | list, sent: np.ndarray | list) -> None:
        """One call's bytes per destination: uncompressed, and what was sent for them (the
        policy's counts; ``bytes_local``: what stayed on this node)."""
        self.counts.calls += 1
        self.counts.raw += raw
        self.counts.sent += sent
        self.bytes_local += int(np.asarray(sent, dtype=np.float64)[self._local_mask].sum())

    def take_counts(self) -> RouteCounts:
        counts, self.counts = self.counts, RouteCounts.empty(len(self.local))
        return counts

    def order(self, tables: list[int]) -> list[int]:
        return self.inner.order(tables)

    def sizes(self, layout: ChunkLayout) -> None:
        return None

    def encode(self, x: torch.Tensor, eb: torch.Tensor | None, layout: ChunkLayout) -> Encoded:
        rows, chunks = offsets(layout.message_rows), offsets(layout.counts)
        item = x.element_size()
        inner = None
        if self.remote:
            xr, ebr = _rows_of_messages(x, rows, self.remote), None if eb is None else _rows_of_messages(eb, chunks,
                                                                                                        self.remote)
            t0 = time.perf_counter()
            inner = self.inner.encode(xr, ebr, sub_layout(layout, self.remote))
            self.counts.enc_s += time.perf_counter() - t0
            self.counts.enc_raw += xr.numel() * item
            self.counts.enc_sent += sum(len(m) for m in inner.messages)
        # per-chunk statistics on the host (the messages are host bytes): a raw chunk's bytes as sent
        sent = (layout.chunk_rows * (layout.dim * item)).astype(np.float64)
        ideal, ratio = sent.copy(), np.zeros(len(sent))
        keep_ratio = True
        if inner is not None:
            coded = np.concatenate([np.arange(chunks[m], chunks[m + 1]) for m in self.remote])
            sent[coded] = inner.sent.numpy()
            ideal[coded] = (inner.ideal if inner.ideal is not None else inner.sent).numpy()
            keep_ratio = inner.err_ratio is not None
            if keep_ratio:
                ratio[coded] = inner.err_ratio.numpy()
        pending = iter(inner.messages if inner is not None else ())
        raw_messages = [m for m, raw_here in enumerate(self.raw) if raw_here]
        nonfinite = torch.zeros((), dtype=torch.int64)
        raw_bytes = {}
        if raw_messages:  # their rows back to back on the host: a view of x on the CPU where they follow one another
            host = _rows_of_messages(x.detach(), rows, raw_messages).contiguous().cpu()
            at = offsets([int(rows[m + 1] - rows[m]) for m in raw_messages])
            raw_bytes = {m: row_bytes(host[at[i]:at[i + 1]]) for i, m in enumerate(raw_messages)}
            nonfinite = nonfinite_count(host)
        messages = [raw_bytes[m] if raw_here else next(pending) for m, raw_here in enumerate(self.raw)]
        self.count(np.diff(rows) * (layout.dim * item), [len(msg) for msg in messages])
        if inner is not None and inner.nonfinite is not None:
            nonfinite = nonfinite + inner.nonfinite.to(torch.int64).cpu()
        return Encoded(torch.zeros(0, dtype=torch.uint8), [len(m) for m in messages], sent=torch.from_numpy(sent),
                       ideal=torch.from_numpy(ideal), err_ratio=torch.from_numpy(ratio) if keep_ratio else None,
                       nonfinite=nonfinite, messages=messages)

    def decode(self, received: Sequence, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or torch.float32
        remote = None
        if self.remote:
            sub = sub_layout(layout, self.remote)
            t0 = time.perf_counter()
            got = self.inner.decode([received[m] for m in self.remote], sub, dtype)
            self.counts.dec_s += time.perf_counter() - t0
            self.counts.dec_raw += got.numel() * got.element_size()
            remote = iter(torch.split(got, sub.message_rows))
        out = []
        for m, raw_here in enumerate(self.raw):
            if not raw_here:
                out.append(next(remote).to(self.device))
                continue
            rows = int(layout.message_rows[m])
            out.append(rows_of(received[m], rows, layout.dim, dtype, m).to(self.device))
        return torch.cat(out) if out else torch.zeros(0, layout.dim, device=self.device)


def _rows_of_messages(values: torch.Tensor, at: np.ndarray, messages: list[int]) -> torch.Tensor:
    """The rows (or per-chunk values) of some messages, ``at``: each message's start: a view
    where they follow one another (one remote message, or a node's peers in rank order), else
    one copy."""
    first, last = messages[0], messages[-1]
    if last - first + 1 == len(messages):
        return values[int(at[first]):int(at[last + 1])]
    return torch.cat([values[int(at[m]):int(at[m + 1])] for m in messages])


class AllRawRoute(ModeCodec):
    """A routed direction whose every destination gets raw rows: they travel as ``off`` sends
    them, in one tensor all-to-all of sizes known from the layout (no size exchange, no host
    copy), so ``compress.peers=auto`` costs nothing over ``off`` where compression never pays.
    Counted as its routed codec counts raw messages (the policy's bytes, ``bytes_local``)."""

    byte_messages = False

    def __init__(self, routed: PeerRoutedCodec):
        super().__init__(routed.plan, routed.cache, routed.device)
        self.routed = routed
        self.name = routed.name

    def order(self, tables: list[int]) -> list[int]:
        return self.routed.order(tables)  # the layout is the routed codec's: both sides switch together

    def sizes(self, layout: ChunkLayout) -> list[int]:
        return [r * layout.dim for r in layout.message_rows]

    def encode(self, x: torch.Tensor, eb: torch.Tensor | None, layout: ChunkLayout) -> Encoded:
        item = x.element_size()
        per_message = np.asarray(layout.message_rows, dtype=np.float64) * layout.dim * item
        self.routed.count(per_message, per_message)
        sent = rows_bytes(layout, layout.dim * item, 0, x.device)
        return Encoded(x.reshape(-1), self.sizes(layout), sent=sent, ideal=sent,
                       err_ratio=torch.zeros_like(sent), nonfinite=nonfinite_count(x))

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        return received.view(-1, layout.dim)


class AllFixedRoute(ModeCodec):
    """A routed direction sent whole in a fixed-rate mode (``compress.peers_fixed``, e.g. fp16):
    ``compress.peers=auto``'s third route beside the codec and raw rows, for links where the codec
    costs more than it saves and half the bytes still pay (the link benchmark at 1 Gbit/s: fp16
    1.03x, the codec 1.02x). Its row records travel as that mode sends them, in one tensor
    all-to-all of sizes known from the layout; counted as its routed codec counts messages."""

    byte_messages = False

    def __init__(self, routed: PeerRoutedCodec, fixed: ModeCodec):
        super().__init__(routed.plan, routed.cache, routed.device)
        self.routed, self.fixed = routed, fixed
        self.name = fixed.name

    def order(self, tables: list[int]) -> list[int]:
        return self.routed.order(tables)  # the layout is the routed codec's: both sides switch together

    def sizes(self, layout: ChunkLayout) -> list[int]:
        return self.fixed.sizes(layout)

    def encode(self, x: torch.Tensor, eb: torch.Tensor | None, layout: ChunkLayout) -> Encoded:
        enc = self.fixed.encode(x, None, layout)
        raw = np.asarray(layout.message_rows, dtype=np.float64) * layout.dim * x.element_size()
        self.routed.count(raw, np.asarray(enc.sizes, dtype=np.float64) * enc.payload.element_size())
        return enc

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.fixed.decode(received, layout, dtype)
