"""The embedding all-to-all, forward and backward, compressed or not: one code path for one
process (loopback, W virtual destinations) and for many (gloo / NCCL process group).

Forward: this process owns some tables and looked them up for the whole batch ``[B, d]``. Rows
``[q*B/W, (q+1)*B/W)`` of every owned table go to destination q (the last takes the remainder),
as one message per destination. A receiver decodes what it got and hands every table's rows to
the dense part. Backward sends each received chunk's gradient back to the table's owner, exact
or compressed, scaled by ``1/world_size`` so the owner sees the gradient of the global-batch
mean (world_size is 1 in loopback: one process computes the loss over the whole batch).

With bag deduplication (``CompressionPlan.dedup``, ``dedup.py``) a chunk carries one row per
distinct bag of its slice; the receiver expands them from the ids it holds, and the backward
sums the gradients of equal bags before they travel. Every mode runs on the same rows: the
exchange's unit is a flat ``[R, d]`` block of the rows that travel, message after message.

Per step and direction the codec path runs once over all (table x destination) chunks:
``quantize_batch`` (tensor ops, on the device; chunks padded to one width by repeating their own
rows) -> the code planes and chunk table on the host -> one lossless call per (destination,
coder) -> W message sizes in one small all-to-all (or per-pair slots, ``size_exchange="slots"``)
-> one host read of the split sizes -> the byte all-to-all -> one parse per received message.
Fixed-rate modes and ``off``/``simulate`` know their sizes in advance: no size exchange, no host
read. The bag index is built on the host from the batch's ids: no host read either.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import BatchQuant, dequantize_planes, error_ratios, quantize_batch
from dlrm_comp.compress.errors import CorruptPayloadError, NonFiniteError
from dlrm_comp.compress.fixed_batch import chunk_nbytes, decode_fixed, encode_fixed, row_nbytes
from dlrm_comp.compress.lossless import CodecCache, SymbolModelStore
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.quantize import ChunkKind
from dlrm_comp.compress.wire import (
    CHUNK_HEADER,
    HEADER_DTYPE,
    PREAMBLE,
    SECTION_HEADER,
    HostChunks,
    Parsed,
    assemble,
    bitpack,
    bitunpack,
    body_sizes,
    message_length,
    parse,
    section_ids,
)
from dlrm_comp.exchange.dedup import BagIndex, bag_order, build_bag_index, identity_index, sum_by_bag
from dlrm_comp.exchange.plan import CompressionPlan, DirectionPlan
from dlrm_comp.runtime import to_device

_IDENTITY = IdentityCodec()


def destination_rows(batch: int, destinations: int) -> list[tuple[int, int]]:
    """Row ranges per destination: B//W rows each, the last one takes the remainder."""
    if destinations < 1:
        raise ValueError(f"destinations must be >= 1, got {destinations}")
    per = batch // destinations
    bounds = [(q * per, (q + 1) * per) for q in range(destinations)]
    bounds[-1] = (bounds[-1][0], batch)
    return [(a, b) for a, b in bounds if b > a]


@dataclass
class Messages:
    """One side of a direction: the chunk tables of each message, the rows each chunk carries
    (distinct bags, or all of its slice's rows) and the slice each message covers."""

    tables: list[list[int]]
    rows: list[np.ndarray]  # per message: [C_m] int64 rows per chunk
    slices: list[tuple[int, int]]  # per message: the batch rows its chunks cover

    @property
    def counts(self) -> list[int]:
        return [len(ts) for ts in self.tables]

    @property
    def chunk_tables(self) -> list[int]:
        return [t for ts in self.tables for t in ts]

    @property
    def chunk_rows(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)

    @property
    def message_rows(self) -> list[int]:
        return [int(r.sum()) for r in self.rows]

    def full_rows(self) -> np.ndarray:
        """[C] rows of each chunk's slice (before deduplication)."""
        return np.concatenate([np.full(len(ts), hi - lo, np.int64) for ts, (lo, hi) in
                               zip(self.tables, self.slices)]) if self.tables else np.zeros(0, np.int64)


@dataclass
class Layout:
    """Both sides of one direction of one step. ``owner`` holds the tables' messages (forward
    senders, backward receivers), ``consumer`` the dense side's. ``src`` picks the travelling
    rows out of the owner's stacked ``[T_own * B, d]`` tables, ``expand`` maps every consumer row
    ``(message, chunk, slice row)`` to its travelling row; both None where dedup is off for
    every table (then the rows are the slices themselves, and views or one stack do)."""

    owner: Messages
    consumer: Messages
    src: torch.Tensor | None
    expand: torch.Tensor | None
    index: BagIndex
    bag_order: tuple[torch.Tensor, torch.Tensor] | None = None  # ``dedup.sum_by_bag`` on a device


class Exchange:
    """Holds the plan by reference; returns its statistics through the recorder's device
    accumulators (never mutating the training extension). Owns its receiver's codec cache and
    the model store ('ans' sections) it decodes with: nothing is shared with other exchanges."""

    def __init__(self, transport, owners: Sequence[int], dim: int, plan: CompressionPlan | None = None,
                 recorder=None, size_exchange: str = "exact", store: SymbolModelStore | None = None):
        self.transport = transport
        self.owners = list(owners)
        self.dim = dim
        self.plan = plan or CompressionPlan.off(len(self.owners))
        self._off = DirectionPlan("off", len(self.owners))  # what exact directions are labelled
        self.recorder = recorder
        self.loopback = not hasattr(transport, "group")
        w = transport.destinations
        self.rank = transport.rank
        if self.loopback:
            self.mine = list(range(len(self.owners)))
            self.by_source = [self.mine] * w  # message q (to virtual rank q) holds every table
        else:
            self.mine = [t for t, o in enumerate(self.owners) if o == transport.rank]
            self.by_source = [[t for t, o in enumerate(self.owners) if o == p] for p in range(w)]
        if size_exchange not in ("exact", "slots"):
            raise ValueError(f"dist.size_exchange: must be exact or slots, got {size_exchange!r}")
        self.size_exchange = size_exchange
        self._sizers: dict[str, SlotSizer] = {}
        self.bytes_meta = 0  # size-exchange bytes this process sent
        self.bytes_pad = 0  # slot padding this process sent (size_exchange=slots)
        self.last_sample: dict[int, torch.Tensor] = {}  # a forward chunk per owned table (lossless tuning)
        self.host_syncs = 0  # host reads of the exchange itself (tests count them)
        self.bag_counts = np.zeros((len(self.owners), 2), np.int64)  # [distinct bags, rows] per table, every step
        self.codecs = CodecCache(store)  # receiver-side coders, per exchange (not process-wide)
        self._inflight = None  # (finish, compress, layout) of a started forward (Req/Wait)
        self._indices: dict = {}  # device index tensors of table lists (built once)
        self._host_indices: dict = {}
        self._orders: dict = {}  # memo of message layouts per table list and coders
        self._nonfinite = None  # device count of NaN/Inf chunks not yet checked
        self._pooled_grads = None

    # -------------------------------------------------------------------------- layout
    def slice_rows(self, batch: int) -> list[tuple[int, int]]:
        rows = destination_rows(batch, self.transport.destinations)
        if len(rows) != self.transport.destinations:
            raise ValueError(f"batch of {batch} rows cannot be split over {self.transport.destinations} destinations")
        return rows

    def bag_index(self, batch: int, bags) -> BagIndex:
        """The step's distinct bags (``bags``: anything with per-table ``indices`` and ``offsets``
        of the global batch, e.g. a ``Batch``); the identity where no table is deduplicated."""
        slices = self.slice_rows(batch)
        dedup = self.plan.dedup
        identity = self._memo_get(("identity", batch), lambda: identity_index(len(self.owners), slices))
        if bags is None or not (any(dedup) or self.plan.measure_bags):
            return identity
        index = build_bag_index(bags.indices, bags.offsets, slices, dedup)
        self.bag_counts[:, 0] += index.distinct.sum(axis=1)
        self.bag_counts[:, 1] += batch
        return index if index.active else identity

    def _order(self, tables: list[int], plan: DirectionPlan) -> list[int]:
        """Tables of one message, grouped by coder (a section each), stable within a coder
        (memoised on the plan's version: the plan bumps it whenever a coder changes)."""
        if plan.mode != "codec":
            return list(tables)
        def build() -> list[int]:
            keys = [self._coder_key(plan, t) for t in tables]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            return [t for _, t in sorted(zip(keys, tables), key=lambda kt: first[kt[0]])]
        return self._memo_get((id(plan), plan.version, tuple(tables)), build)

    def _memo(self, key, value) -> None:
        if len(self._orders) > 256:
            self._orders.clear()
        self._orders[key] = value

    def _memo_get(self, key, build):
        hit = self._orders.get(key)
        if hit is None:
            hit = build()
            self._memo(key, hit)
        return hit

    @staticmethod
    def _coder_key(plan: DirectionPlan, t: int):
        """What a section shares: the coder and the code layout."""
        c = plan.coders[t]
        return c.codec_id, c.header_params(), bool(plan.bitpack[t])

    def _sections(self, plan: DirectionPlan, tables: list[int], counts: list[int]) -> tuple[list[int], list[list]]:
        """Section index of every chunk and the coder of every section, per message."""
        def build() -> tuple[list[int], list[list]]:
            ids, coders, c0 = [], [], 0
            for count in counts:
                ts = tables[c0:c0 + count]
                keys = [self._coder_key(plan, t) for t in ts]
                ids += section_ids(keys)
                first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
                coders.append([plan.coders[ts[i]] if plan.mode == "codec" else _IDENTITY for i in first])
                c0 += count
            return ids, coders
        return self._memo_get(("sections", id(plan), plan.version, tuple(tables), tuple(counts)), build)

    def layout(self, index: BagIndex, plan: DirectionPlan) -> Layout:
        """Messages of both sides and the row maps of one direction, memoised on the index (per
        table order: the backward of a step reuses its forward's when the order agrees; the
        identity index lives as long as the exchange, a step's dedup index as long as its step)."""
        own = self._order(self.mine, plan)
        recv = [self._order(ts, plan) for ts in self.by_source]
        key = (tuple(own), tuple(tuple(ts) for ts in recv))
        hit = index.layouts.get(key)  # held by the step's index: freed with it
        if hit is None:
            hit = index.layouts[key] = self._build_layout(index, own, recv)
        return hit

    def _build_layout(self, index: BagIndex, own: list[int], recv: list[list[int]]) -> Layout:
        slices = index.slices
        batch = slices[-1][1]
        counts = index.counts
        owner = Messages([own] * len(slices), [counts[own, q] for q in range(len(slices))], list(slices))
        mine_slice = list(slices) if self.loopback else [slices[self.rank]] * len(slices)
        consumer = Messages(recv, [counts[ts, (q if self.loopback else self.rank)] for q, ts in enumerate(recv)],
                            mine_slice)
        if not index.active:
            return Layout(owner, consumer, None, None, index)
        dev = self.transport.device
        src = [pos * batch + index.sent_rows(t, q) for q in range(len(slices)) for pos, t in enumerate(own)]
        expand, base = [], 0
        for m, ts in enumerate(recv):
            s = m if self.loopback else self.rank
            lo, hi = slices[s]
            for t in ts:
                expand.append(base + index.bag[t][lo:hi])
                base += int(counts[t, s])
        flat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
        src_h, expand_h = flat(src), flat(expand)
        dev_t = lambda a: to_device(torch.from_numpy(a), dev)  # noqa: E731
        order = None
        if dev.type != "cpu":
            perm, lengths = bag_order(expand_h, int(consumer.chunk_rows.sum()))
            order = (dev_t(perm), dev_t(lengths))
        return Layout(owner, consumer, dev_t(src_h), dev_t(expand_h), index, order)

    # -------------------------------------------------------------------------- entry points
    def __call__(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None) -> list[torch.Tensor]:
        """Owned tables' ``[B, d]`` -> every table's rows for this process (``[B_rank, d]``; all
        ``[B, d]`` in loopback). Differentiable: the backward is the gradient exchange. ``bags``
        (the global batch's ids) enables deduplication where the plan asks for it."""
        return list(_ExchangeFn.apply(self, compress, bags, *pooled))

    def forward(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None) -> list[torch.Tensor]:
        return self.begin_forward(pooled, compress, bags=bags)[0]()

    def begin_forward(self, pooled: Sequence[torch.Tensor], compress: bool, async_op: bool = False, bags=None):
        """Encode and launch the forward exchange; returns ``(finish, index)``: ``finish()`` ->
        the received tables, and the step's bag index (the backward uses the same). With
        ``async_op`` the data collective is in flight until ``finish`` waits on it."""
        batch = pooled[0].shape[0] if pooled else 0
        plan = self.plan.fwd if compress and self.plan.fwd.enabled else None
        index = self.bag_index(batch, bags if compress else None)
        if plan is None and self.loopback and not index.active:  # one process, nothing changes: the identity
            return (lambda: [p.detach() for p in pooled]), index
        lay = self.layout(index, plan or self.plan.fwd)
        flat = self._owner_rows([p.detach() for p in pooled], lay)
        if compress and self.mine:  # the rows the first chunk of each table sends
            for i, t in enumerate(self.mine):
                rows = index.sent_rows(t, 0)
                self.last_sample[t] = pooled[i].detach()[int(rows[0]):int(rows[-1]) + 1] if not index.dedup[t] \
                    else pooled[i].detach()[to_device(torch.from_numpy(rows), pooled[i].device)]
        finish = self._run(flat, lay.owner, lay.consumer, plan, "fwd", async_op, index.active)

        def received() -> list[torch.Tensor]:
            rows = finish()
            if lay.expand is not None:
                rows = rows.index_select(0, lay.expand)
            out: dict[int, list[torch.Tensor]] = {}
            pos = 0
            for tables, (lo, hi) in zip(lay.consumer.tables, lay.consumer.slices):
                n = len(tables) * (hi - lo)
                for t, y in zip(tables, rows[pos:pos + n].view(len(tables), hi - lo, self.dim).unbind(0)):
                    out.setdefault(t, []).append(y)
                pos += n
            return [parts[0] if len(parts) == 1 else torch.cat(parts) for _, parts in sorted(out.items())]
        return received, index

    def encode(self, pooled: Sequence[torch.Tensor], bags=None) -> list[bytes]:
        """The forward messages of one step (codec and sz modes), without a transport: what the
        benchmarks time as the encoder. Statistics are recorded as in a real exchange."""
        plan = self.plan.fwd
        if not plan.byte_messages:
            raise ValueError(f"encode: only byte modes build messages, not {plan.mode!r}")
        lay = self.layout(self.bag_index(pooled[0].shape[0], bags), plan)
        return self._encode(self._owner_rows(list(pooled), lay), lay.owner, plan, "fwd")

    def decode(self, messages: Sequence[bytes], rows: Sequence[int | np.ndarray]) -> list[torch.Tensor]:
        """Each message's travelling rows ``[R_m, d]`` (the receiver's side of ``encode``;
        ``rows[m]``: the rows of every chunk of message m, one count or one per chunk)."""
        return [self._decode_message(m, r) for m, r in zip(messages, rows)]

    def _decode_message(self, msg, rows, tables: list[int] | None = None) -> torch.Tensor:
        """One message's travelling rows, in the sender's dtype (``tables``: what the receiver
        expects the message to carry, checked)."""
        rec = parse(msg, rows, self.dim, self.codecs, expect_chunks=None if tables is None else len(tables))
        if tables is not None and rec.header["table"].astype(np.int64).tolist() != list(tables):
            raise CorruptPayloadError(f"message carries tables {rec.header['table'].tolist()}, expected {list(tables)}")
        return _unpad(self._reconstruct(rec, self.transport.device), rec.header["rows"].astype(np.int64), self.dim)

    def start(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None) -> "PendingExchange":
        """Launch the forward exchange (async collective) and return at once: the upstream DLRM
        Req/Wait split. ``wait()`` on the result gives the received tables, differentiable."""
        token = _Request.apply(self, compress, bags, *pooled)
        return PendingExchange(self, token)

    def backward(self, grads: Sequence[torch.Tensor], compress: bool, index: BagIndex) -> list[torch.Tensor]:
        plan = self.plan.bwd if compress and self.plan.bwd.enabled else None
        if plan is None and self.loopback and not index.active:  # one process, exact gradients: the identity
            return list(grads)
        scale = 1.0 / self.transport.world_size
        lay = self.layout(index, plan or self.plan.bwd)
        by_table = dict(zip(sorted({t for ts in lay.consumer.tables for t in ts}), grads))
        rows = self._chunk_rows(by_table, lay.consumer, relative=not self.loopback)
        if lay.expand is not None:  # equal bags: one gradient, their sum, deterministic on every device
            rows = sum_by_bag(rows, lay.expand, int(lay.consumer.chunk_rows.sum()), lay.bag_order)
        if scale != 1.0:
            rows = rows * scale
        got = self._run(rows, lay.consumer, lay.owner, plan, "bwd", False, index.active)()
        return self._owner_grads(got, lay)

    # -------------------------------------------------------------------------- rows
    def _chunk_rows(self, tensors: dict[int, torch.Tensor], side: Messages, relative: bool) -> torch.Tensor:
        """``[sum_m C_m * slice rows, d]``: each message's chunks' slice rows, message after
        message (``relative``: the tensors hold only their slice's rows). Equal slices of the
        same tables take one stack and one transpose, anything else a concatenation."""
        if not any(side.tables):
            dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
            return torch.zeros(0, self.dim, device=self.transport.device, dtype=dtype)
        if relative:
            return torch.cat([tensors[t] for ts in side.tables for t in ts])
        ts = side.tables[0]
        sizes = {hi - lo for lo, hi in side.slices}
        if len(sizes) == 1 and all(t == ts for t in side.tables):
            w, r = len(side.slices), sizes.pop()  # one copy: [W, T, r, d] straight from the [B, d] tables
            return torch.stack([tensors[t].view(w, r, self.dim) for t in ts], dim=1).view(-1, self.dim)
        return torch.cat([tensors[t][lo:hi] for tables, (lo, hi) in zip(side.tables, side.slices) for t in tables])

    def _owner_rows(self, pooled: list[torch.Tensor], lay: Layout) -> torch.Tensor:
        """The travelling rows of the owned tables' ``[B, d]`` outputs, in message order."""
        by_table = dict(zip(self.mine, pooled))
        if lay.src is None:
            return self._chunk_rows(by_table, lay.owner, relative=False)
        own = lay.owner.tables[0]
        return torch.stack([by_table[t] for t in own]).view(-1, self.dim).index_select(0, lay.src)

    def _owner_grads(self, got: torch.Tensor, lay: Layout) -> list[torch.Tensor]:
        """Inverse of ``_owner_rows`` for the gradients: each owned table's ``[B, d]`` (a
        deduplicated bag's gradient sits on its first row, the others are zero)."""
        own = lay.owner.tables[0] if lay.owner.tables else []
        batch = lay.index.slices[-1][1]
        if lay.src is not None:
            full = got.new_zeros(len(own) * batch, self.dim).index_copy_(0, lay.src, got)
            by_table = dict(zip(own, full.view(len(own), batch, self.dim).unbind(0)))
        else:
            sizes = {hi - lo for lo, hi in lay.owner.slices}
            if len(sizes) == 1:
                r = sizes.pop()
                full = got.view(len(lay.owner.slices), len(own), r, self.dim).transpose(0, 1)
                by_table = dict(zip(own, full.reshape(len(own), batch, self.dim).unbind(0)))
            else:
                parts: dict[int, list[torch.Tensor]] = {}
                pos = 0
                for (lo, hi) in lay.owner.slices:
                    for t in own:
                        parts.setdefault(t, []).append(got[pos:pos + hi - lo])
                        pos += hi - lo
                by_table = {t: torch.cat(p) for t, p in parts.items()}
        return [by_table[t] for t in self.mine]

    # -------------------------------------------------------------------------- one direction
    def _run(self, flat: torch.Tensor, out: Messages, inc: Messages, plan: DirectionPlan | None, direction: str,
             async_op: bool = False, dedup: bool = False):
        """Send the travelling rows ``flat`` as ``out``'s messages; returns ``finish()`` -> the
        received messages' travelling rows, message after message (waiting on the collective)."""
        mode = plan.mode if plan is not None else "off"
        d = self.dim
        if mode in ("off", "simulate"):
            if mode == "simulate":
                flat = self._simulate(flat, out, plan, direction)
            elif dedup:  # exact rows, fewer of them: the saving is measured as any other
                t0 = time.perf_counter()
                sent = torch.from_numpy((out.chunk_rows * d * flat.element_size()).astype(np.float64))
                self._record(direction, plan or self._off, out, flat.element_size(), to_device(sent, flat.device),
                             None, None, time.perf_counter() - t0)
            in_splits = [r * d for r in out.message_rows]
            out_splits = [r * d for r in inc.message_rows]
            handle = self.transport.exchange(flat.reshape(-1), in_splits, out_splits, async_op)
            return lambda: handle.wait().view(-1, d)
        if plan.fixed_rate:
            return self._run_fixed(flat, out, inc, plan, direction, async_op)
        return self._run_bytes(flat, out, inc, plan, direction, async_op)

    def _eb(self, plan: DirectionPlan, tables: list[int], device) -> torch.Tensor:
        return to_device(torch.tensor([plan.eb_rel[t] for t in tables], dtype=torch.float64), device)

    def _index(self, tables: list[int], device) -> torch.Tensor:
        key = (tuple(tables), str(device))
        index = self._indices.get(key)
        if index is None:
            index = self._indices[key] = torch.tensor(tables, dtype=torch.int64).to(device)
        return index

    def _check_finite(self, nonfinite: torch.Tensor, plan: DirectionPlan, x: torch.Tensor) -> None:
        """Policy 'raise': on the CPU at once (free); on a device the count accumulates and
        ``check_finite`` reads it at the next print interval (no per-step host read; a NaN
        reaching the loss stops the step anyway)."""
        if plan.nonfinite == "passthrough":
            return
        if nonfinite.device.type == "cpu":
            if int(nonfinite):  # the exact count only on the way to the error
                raise NonFiniteError(int((~torch.isfinite(x)).sum()), x.numel())
            return
        self._nonfinite = nonfinite if self._nonfinite is None else self._nonfinite + nonfinite

    def check_finite(self) -> None:
        """Raise NonFiniteError if a device-side exchange saw NaN/Inf chunks since the last check."""
        pending, self._nonfinite = self._nonfinite, None
        if pending is not None and int(pending):
            raise NonFiniteError(int(pending), -1)

    def _record(self, direction: str, plan: DirectionPlan, side: Messages, item: int, sent: torch.Tensor,
                ideal, err_ratio, enc_s: float, dec_s: float = 0.0) -> None:
        """One direction's chunk statistics: raw bytes are the chunks' whole slices (what an
        exchange without dedup or compression moves), so the ratio counts both savings."""
        if self.recorder is None:
            return
        tables = side.chunk_tables
        full, rows = side.full_rows(), side.chunk_rows
        self.recorder.record_batch(direction, self._host_index(tables), self._index(tables, sent.device),
                                   full * self.dim * item, sent, ideal, err_ratio, enc_s, dec_s,
                                   lambda: _labels(plan), plan.estimated, rows=full, distinct=rows)

    def _host_index(self, tables: list[int]) -> np.ndarray:
        key = tuple(tables)
        index = self._host_indices.get(key)
        if index is None:
            index = self._host_indices[key] = np.asarray(tables, dtype=np.int64)
        return index

    def _simulate(self, flat: torch.Tensor, out: Messages, plan: DirectionPlan, direction: str) -> torch.Tensor:
        t0 = time.perf_counter()
        rows = out.chunk_rows
        x, counts = self._pad(flat, rows)
        q = quantize_batch(x, self._eb(plan, out.chunk_tables, x.device), counts)
        self._check_finite(q.nonfinite, plan, x)
        n = to_device(torch.from_numpy((rows * self.dim).astype(np.float64)), x.device)
        quant = q.kind == ChunkKind.QUANT
        ideal = q.entropy_bytes() + CHUNK_HEADER
        raw_body = n * x.element_size()
        est = torch.where(quant, ideal, torch.where(q.kind == ChunkKind.RAW, raw_body, 0.0) + CHUNK_HEADER)
        est = est + (PREAMBLE + SECTION_HEADER) / max(len(rows), 1) * len(out.counts)
        self._record(direction, plan, out, x.element_size(), est, est, q.error_ratio(), time.perf_counter() - t0)
        return _unpad(q.received(), rows, self.dim)

    def _run_fixed(self, flat, out: Messages, inc: Messages, plan, direction, async_op=False):
        t0 = time.perf_counter()
        mode, d = plan.mode, self.dim
        if plan.nonfinite != "passthrough":  # max|x| is finite iff every value is (NaN propagates)
            bad = (~torch.isfinite(flat.abs().amax())).to(torch.int64) if flat.numel() else torch.zeros((),
                                                                                                      dtype=torch.int64)
            self._check_finite(bad, plan, flat)
        rb, cb = row_nbytes(mode, d), chunk_nbytes(mode)
        rows = out.chunk_rows
        records, trailers = encode_fixed(mode, flat, self._chunk_ids(rows, flat.device) if cb else None, len(rows))
        if cb:
            parts, r0, c0 = [], 0, 0
            for r, c in zip(out.message_rows, out.counts):
                parts += [records[r0:r0 + r].reshape(-1), trailers[c0:c0 + c].reshape(-1)]
                r0, c0 = r0 + r, c0 + c
            send = torch.cat(parts)
        else:
            send = records.reshape(-1)
        in_splits = [r * rb + c * cb for r, c in zip(out.message_rows, out.counts)]
        sent = to_device(torch.from_numpy((rows * rb + cb).astype(np.float64)), flat.device)
        self._record(direction, plan, out, flat.element_size(), sent, None, None, time.perf_counter() - t0)
        dtype = flat.dtype  # every rank exchanges its model's dtype
        out_splits = [r * rb + c * cb for r, c in zip(inc.message_rows, inc.counts)]
        handle = self.transport.exchange(send, in_splits, out_splits, async_op)

        def finish():
            got = handle.wait()
            t1 = time.perf_counter()
            if not cb:
                result = decode_fixed(mode, got.view(-1, rb), got[:0], None, dtype)
            else:
                result = []
                for part, r, chunk_rows in zip(got.split(out_splits), inc.message_rows, inc.rows):
                    result.append(decode_fixed(mode, part[:r * rb].view(r, rb), part[r * rb:],
                                               self._chunk_ids(chunk_rows, got.device), dtype))
                result = torch.cat(result) if result else got.new_zeros(0, d, dtype=dtype)
            self._add_decode(direction, inc, time.perf_counter() - t1)
            return result
        return finish

    def _chunk_ids(self, rows: np.ndarray, device) -> torch.Tensor:
        """Each travelling row's chunk (host-built: no device-side repeat that would sync)."""
        return to_device(torch.from_numpy(np.repeat(np.arange(len(rows)), rows)), device)

    def _add_decode(self, direction, inc: Messages, seconds: float) -> None:
        if self.recorder is not None:
            self.recorder.add_decode_time(direction, self._host_index(inc.chunk_tables), seconds)

    def _pad(self, flat: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """``[C, U*d]`` chunks of U = max rows each, the shorter ones padded with their own last
        row (ranges and codes unchanged), and the values that travel per chunk (None: all)."""
        u = int(rows.max()) if len(rows) else 0
        if len(rows) and (rows == u).all():
            return flat.reshape(len(rows), u * self.dim), None
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        take = starts[:, None] + np.minimum(np.arange(u)[None, :], np.maximum(rows - 1, 0)[:, None])
        idx = to_device(torch.from_numpy(take.reshape(-1)), flat.device)
        return flat.index_select(0, idx).view(len(rows), u * self.dim), rows * self.dim

    # -------------------------------------------------------------------------- byte messages
    def _host_chunks(self, x: torch.Tensor, counts: np.ndarray | None, rows: np.ndarray, tables: list[int],
                     sections: list[int], plan: DirectionPlan) -> tuple[HostChunks, BatchQuant]:
        """Quantize on the device, then bring the chunk table and body planes to the host (the
        CPU stream coders need host bytes: one copy per direction, not per chunk)."""
        n = x.shape[1]
        q = quantize_batch(x, self._eb(plan, tables, x.device), counts)
        self._check_finite(q.nonfinite, plan, x)
        h = np.zeros(len(tables), dtype=HEADER_DTYPE)
        kind = q.kind.cpu().numpy()
        bits = q.bits.cpu().numpy()
        h["table"], h["kind"], h["bits"], h["rows"] = tables, kind, bits, rows
        h["minimum"], h["step"] = q.minimum.cpu().numpy(), q.step.cpu().numpy()
        h["section"] = sections
        bp = np.array([plan.bitpack[t] for t in tables], dtype=bool)
        h["layout"] = bp
        low = q.low
        if bp.any():
            packed = bitpack(q.codes, q.bits)
            low = torch.where(torch.from_numpy(bp).to(x.device)[:, None], packed,
                              torch.nn.functional.pad(low, (0, n)))
        high = q.high.cpu().numpy() if (bits > 8).any() else None
        raw = x.contiguous().view(torch.uint8).reshape(len(h), -1).cpu().numpy() if (kind == ChunkKind.RAW).any() else None
        h["nbytes"] = body_sizes(h, self.dim, x.element_size())
        return HostChunks(h, n // self.dim if self.dim else 0, self.dim, low.cpu().numpy(), high, raw), q

    def _encode(self, flat: torch.Tensor, out: Messages, plan: DirectionPlan, direction: str) -> list[bytes]:
        """Messages (host bytes) of one direction, with their statistics recorded."""
        t0 = time.perf_counter()
        rows, tables = out.chunk_rows, out.chunk_tables
        x, counts = self._pad(flat, rows)
        sections, coders = self._sections(plan, tables, out.counts)
        if plan.mode == "sz":
            hc, ratio = self._sz_chunks(x, rows, tables, plan)
            ideal_body = None
        else:
            hc, q = self._host_chunks(x, counts, rows, tables, sections, plan)
            ratio = q.error_ratio()
            ideal_body = torch.where(q.kind == ChunkKind.QUANT, q.entropy_bytes(),
                                     torch.from_numpy(hc.header["nbytes"].astype(np.float64)).to(q.kind.device))
        weights = None if ideal_body is None else ideal_body.cpu().numpy()
        messages, sent, framing = assemble(hc, x.dtype, out.counts, coders, weights)
        ideal = None if ideal_body is None else ideal_body.cpu() + torch.from_numpy(framing)
        self._record(direction, plan, out, x.element_size(), torch.from_numpy(sent), ideal, ratio.cpu(),
                     time.perf_counter() - t0)
        return messages

    def _sz_chunks(self, x: torch.Tensor, rows: np.ndarray, tables: list[int], plan: DirectionPlan
                   ) -> tuple[HostChunks, torch.Tensor]:
        """SZ3 stays a CPU byte path, one pysz call per chunk (its stated cost), verified like
        the quantizer: SZ3 runs in float64 for float64 data, else float32, and the receiver's
        value (SZ3's output cast to the data's dtype) is checked against the bound; a chunk that
        fails, or has no usable bound, travels RAW in its own dtype."""
        from dlrm_comp.compress.batch_quant import round_down_f32
        from dlrm_comp.compress.sz import sz_compress, sz_decompress
        x = x.detach().cpu()
        n, item = x.shape[1], x.element_size()
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        self._check_finite((~torch.isfinite(x)).sum(), plan, x)
        x64 = x.to(torch.float64)
        if n:
            mn, mx = x64.amin(1), x64.amax(1)
        else:
            mn = mx = torch.zeros(len(x), dtype=torch.float64)
        eb_abs = round_down_f32(self._eb(plan, tables, "cpu") * (mx - mn)).clamp_max(3.0e38)
        h = np.zeros(len(tables), dtype=HEADER_DTYPE)
        h["table"], h["layout"], h["rows"] = tables, 1, rows
        arr = x.to(work).numpy()
        ref = x64.numpy()
        bodies, errs = [b""] * len(tables), np.zeros(len(tables))
        for c, eb in enumerate(eb_abs.tolist()):
            r = int(rows[c])
            m = r * self.dim
            if eb > 0 and np.isfinite(ref[c, :m]).all():
                blob = sz_compress(arr[c, :m].reshape(r, self.dim), eb)
                y = sz_decompress(blob, arr.dtype, (r, self.dim)).reshape(-1)
                got = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).to(torch.float64).numpy()
                err = float(np.abs(got - ref[c, :m]).max()) if y.size else 0.0
                if err <= eb and len(blob) < m * item:
                    bodies[c], h["kind"][c], errs[c] = blob, ChunkKind.SZ, err
        h["nbytes"] = body_sizes(h, self.dim, item, bodies)
        ratio = error_ratios(torch.from_numpy(errs), eb_abs)
        raw = x.contiguous().view(torch.uint8).reshape(len(h), -1).numpy()
        return HostChunks(h, n // self.dim if self.dim else 0, self.dim, np.zeros((len(h), 2 * n), np.uint8), None,
                          raw, bodies), ratio

    def _run_bytes(self, flat, out: Messages, inc: Messages, plan, direction, async_op=False):
        messages = self._encode(flat, out, plan, direction)
        if self.size_exchange == "slots" and not self.loopback:
            return self._run_slots(messages, inc, plan, direction, async_op)
        sizes = torch.tensor([len(m) for m in messages], dtype=torch.int64)
        recv_sizes = self.transport.exchange_sizes(sizes.to(self.transport.device))
        self.bytes_meta += 0 if self.loopback else 8 * len(messages)
        out_splits = recv_sizes.tolist()  # the one host read of the exchange: the receive splits
        self.host_syncs += 1
        handle = self.transport.exchange(_as_tensor(b"".join(messages)), sizes.tolist(), out_splits, async_op)

        def finish():
            host = _host_bytes(handle.wait())
            pos, received = 0, []
            for size in out_splits:
                received.append(host[pos:pos + size])
                pos += size
            return self._decode_received(received, inc, plan, direction)
        return finish

    def _run_slots(self, messages, inc: Messages, plan, direction, async_op=False):
        """Fixed slots instead of the size all-to-all: each pair's slot is a capacity both sides
        compute from the sizes they already saw (``SlotSizer``); a message is zero-padded to its
        slot, its real length travels in its preamble, and what exceeds the slot follows
        point-to-point. One collective instead of two; the padding is reported as ``bytes_pad``."""
        sizer = self._sizers.setdefault(direction, SlotSizer(len(messages)))
        me = self.transport.rank
        caps_out, caps_in = sizer.send_caps(), sizer.recv_caps()
        caps_out[me] = caps_in[me] = 0  # this rank's own message stays local, whole
        slots = []
        for q, (m, cap) in enumerate(zip(messages, caps_out)):
            if q == me:
                slots.append(b"")
            elif len(m) <= cap:
                slots.append(m + bytes(cap - len(m)))
                self.bytes_pad += cap - len(m)
            else:  # the rest follows point-to-point (a cut preamble first, so the receiver learns the length)
                slots.append(m[:cap])
        handle = self.transport.exchange(_as_tensor(b"".join(slots)), caps_out, caps_in, async_op)

        def finish():
            host = _host_bytes(handle.wait())  # the one host read: the preambles in the slots
            self.host_syncs += 1
            starts = np.concatenate([[0], np.cumsum(caps_in)])
            got = [bytes(host[starts[p]:starts[p + 1]]) for p in range(len(caps_in))]
            peers = [q for q in range(len(messages)) if q != me]
            # round 1: a slot smaller than a preamble sends the rest of the preamble first
            short_out = [q for q in peers if caps_out[q] < PREAMBLE]
            short_in = [p for p in peers if caps_in[p] < PREAMBLE]
            heads = {p: torch.empty(PREAMBLE - caps_in[p], dtype=torch.uint8, device=self.transport.device)
                     for p in short_in}
            self.transport.p2p([(_as_tensor(messages[q][caps_out[q]:PREAMBLE]), q) for q in short_out],
                               [(heads[p], p) for p in short_in])
            for p in short_in:
                got[p] += bytes(heads[p].cpu().numpy())
            # round 2: whatever exceeds max(slot, preamble), both sides now know how much
            lengths = [len(messages[me]) if p == me else message_length(got[p][:PREAMBLE]) for p in range(len(got))]
            sent_from = [max(c, PREAMBLE) for c in caps_out]
            recv_from = [max(c, PREAMBLE) for c in caps_in]
            rest_in = {p: torch.empty(lengths[p] - recv_from[p], dtype=torch.uint8, device=self.transport.device)
                       for p in peers if lengths[p] > recv_from[p]}
            self.transport.p2p([(_as_tensor(messages[q][sent_from[q]:]), q) for q in peers
                                if len(messages[q]) > sent_from[q]], list((t, p) for p, t in rest_in.items()))
            received = []
            for p in range(len(got)):
                if p == me:
                    received.append(messages[me])
                elif p in rest_in:
                    received.append(got[p] + bytes(rest_in[p].cpu().numpy()))
                else:
                    received.append(got[p][:lengths[p]])
            sizer.update([len(m) for m in messages], lengths)
            return self._decode_received(received, inc, plan, direction)
        return finish

    def _decode_received(self, received, inc: Messages, plan, direction) -> torch.Tensor:
        t0 = time.perf_counter()
        result = [self._decode_message(msg, rows, ts) for msg, ts, rows in zip(received, inc.tables, inc.rows)]
        self._add_decode(direction, inc, time.perf_counter() - t0)
        return torch.cat(result) if result else torch.zeros(0, self.dim, device=self.transport.device)

    @staticmethod
    def _reconstruct(rec: Parsed, dev: torch.device) -> torch.Tensor:
        h = rec.header
        n = rec.low.shape[1]
        t = torch.from_numpy
        kind = np.where(h["kind"] == ChunkKind.SZ, ChunkKind.RAW, h["kind"]).astype(np.int64)
        bits = h["bits"].astype(np.int64)
        low, high = t(rec.low), t(rec.high)
        if rec.bitpacked is not None:  # bit-packed chunks: unpack (torch, on the device) into the planes
            codes = bitunpack(t(rec.bitpacked).to(dev), t(bits).to(dev), n)
            use = t(h["layout"] == 1).to(dev)[:, None]
            low = torch.where(use, (codes & 255).to(torch.uint8), low.to(dev))
            high = torch.where(use, (codes >> 8).to(torch.uint8), high.to(dev))
        raw = t(rec.raw.view(np.int16) if rec.dtype == torch.bfloat16 else rec.raw)
        raw = raw.view(torch.bfloat16) if rec.dtype == torch.bfloat16 else raw
        return dequantize_planes(t(kind).to(dev), t(h["minimum"].astype(np.float64)).to(dev),
                                 t(h["step"].astype(np.float64)).to(dev), t(bits).to(dev), low.to(dev),
                                 high.to(dev), raw.to(dev), rec.dtype)


def _unpad(x: torch.Tensor, rows: np.ndarray, dim: int) -> torch.Tensor:
    """Inverse of ``Exchange._pad``: the travelling rows ``[sum rows, d]`` of ``[C, U*d]`` chunks."""
    rows = np.asarray(rows, dtype=np.int64)
    u = x.shape[1] // dim if dim else 0
    if not len(rows) or (rows == u).all():
        return x.reshape(-1, dim)
    take = (np.arange(len(rows)) * u).repeat(rows) + (np.arange(int(rows.sum())) - np.repeat(
        np.concatenate([[0], np.cumsum(rows)[:-1]]), rows))
    return x.reshape(-1, dim).index_select(0, to_device(torch.from_numpy(take), x.device))


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _host_bytes(out: torch.Tensor) -> memoryview:
    return memoryview(out.cpu().numpy() if out.device.type != "cpu" else out.numpy()).cast("B")


class SlotSizer:
    """Per-peer slot capacities for one direction, computed alike by both sides of every pair
    from the message sizes they have already seen (the sender its own, the receiver from the
    preambles), so no size travels ahead of the data: ``MARGIN`` x the largest of the last
    ``HISTORY`` sizes, rounded up to ``ALIGN`` bytes. It starts at 0: the first step's messages
    all follow point-to-point."""

    HISTORY, MARGIN, ALIGN = 8, 1.125, 64

    def __init__(self, peers: int):
        self.sent = [[] for _ in range(peers)]
        self.received = [[] for _ in range(peers)]

    def _cap(self, history: list[int]) -> int:
        if not history:
            return 0
        need = int(max(history[-self.HISTORY:]) * self.MARGIN)
        return -(-need // self.ALIGN) * self.ALIGN

    def send_caps(self) -> list[int]:
        return [self._cap(h) for h in self.sent]

    def recv_caps(self) -> list[int]:
        return [self._cap(h) for h in self.received]

    def update(self, sent: list[int], received: list[int]) -> None:
        for h, n in zip(self.sent + self.received, list(sent) + list(received)):
            h.append(n)
            del h[:-self.HISTORY]


def _labels(plan: DirectionPlan) -> tuple[list, list[str]]:
    """Per-table bound and codec name, as the plan holds them now (read when statistics are)."""
    return (list(plan.eb_rel) if plan.error_bounded else [None] * plan.num_tables), plan.codec_names()


def _zero_grads(ex: Exchange, index: BagIndex, grads):
    """Outputs that got no gradient get zeros of their shape and dtype."""
    slices = index.slices
    n_rows = slices[-1][1] if ex.loopback else slices[ex.rank][1] - slices[ex.rank][0]
    dev = ex.transport.device
    dtype = next((g.dtype for g in grads if g is not None), torch.float32)
    return [g.contiguous() if g is not None else torch.zeros(n_rows, ex.dim, device=dev, dtype=dtype) for g in grads]


class _ExchangeFn(torch.autograd.Function):
    """Forward: the exchange of the pooled outputs. Backward: the gradient exchange back to
    each table's owner (straight through the compression: d x_hat / d x = I)."""

    @staticmethod
    def forward(ctx, exchange: Exchange, compress: bool, bags, *pooled: torch.Tensor):
        ctx.exchange, ctx.compress = exchange, compress
        finish, ctx.index = exchange.begin_forward([p.detach() for p in pooled], compress, bags=bags)
        return tuple(finish())

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        return (None, None, None, *ex.backward(_zero_grads(ex, ctx.index, grads), ctx.compress, ctx.index))


class _Request(torch.autograd.Function):
    """Req half of the Req/Wait pair: launches the forward exchange (async); its backward hands
    the pooled outputs the gradients that the Wait half's backward exchanged."""

    @staticmethod
    def forward(ctx, exchange: Exchange, compress: bool, bags, *pooled: torch.Tensor):
        ctx.exchange = exchange
        if exchange._inflight is not None:
            raise RuntimeError("Exchange.start: the previous exchange was never waited on")
        finish, index = exchange.begin_forward([p.detach() for p in pooled], compress, async_op=True, bags=bags)
        exchange._inflight = (finish, compress, index)
        return pooled[0].new_zeros(0)

    @staticmethod
    def backward(ctx, _token_grad):
        grads, ctx.exchange._pooled_grads = ctx.exchange._pooled_grads, None
        return (None, None, None, *grads)


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exchange: Exchange, token: torch.Tensor):
        finish, ctx.compress, ctx.index = exchange._inflight
        exchange._inflight = None
        ctx.exchange = exchange
        return tuple(finish())

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        ex._pooled_grads = ex.backward(_zero_grads(ex, ctx.index, grads), ctx.compress, ctx.index)
        return None, torch.zeros(0, device=ex.transport.device)


class PendingExchange:
    """A forward exchange in flight (torchrec's Awaitable): ``wait()`` -> the received tables."""

    def __init__(self, exchange: Exchange, token: torch.Tensor):
        self.exchange, self.token = exchange, token

    def wait(self) -> list[torch.Tensor]:
        return list(_Wait.apply(self.exchange, self.token))
