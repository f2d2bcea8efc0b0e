"""The embedding all-to-all, forward and backward, compressed or not: one code path for one
process (loopback, W virtual destinations) and for many (gloo / NCCL process group).

The exchange routes; it does no codec arithmetic. Per step and direction: the bag index and the
layout (``layout.py``: which rows go where, one message per destination), the travelling rows
``[R, d]`` in one gather, the mode's codec (``compress/codecs/``, named by its row in
``compress/modes.py``) encodes them under the per-chunk bounds into an ``Encoded`` value, the
exchange records its statistics and applies the NaN/Inf policy, and the transport moves the
payload: sizes known from the layout go straight into one all-to-all; byte messages go through
the size protocol (``sizes.py``). The receiver's codec decodes, and the rows are expanded back
to every table's ``[B_rank, d]``. The backward (``autograd.py``) sends each received chunk's
gradient back to its owner the same way, scaled by ``1/world_size`` so the owner sees the
gradient of the global-batch mean (world_size is 1 in loopback).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec
from dlrm_comp.compress.codecs.peers import PeerRoutedCodec
from dlrm_comp.compress.errors import NonFiniteError
from dlrm_comp.compress.lossless import CodecCache, SymbolModelStore
from dlrm_comp.compress.modes import build_codec
from dlrm_comp.exchange.autograd import ExchangeFn, PendingExchange, Request
from dlrm_comp.exchange.dedup import BagIndex, build_bag_index, identity_index, sum_by_bag
from dlrm_comp.exchange.layout import Layout, build_layout, destination_rows
from dlrm_comp.exchange.plan import CompressionPlan, DirectionPlan, StepBounds
from dlrm_comp.exchange.sizes import MessageSender
from dlrm_comp.runtime import to_device
from dlrm_comp.stopwatch import Stopwatch

__all__ = ["Exchange", "PendingExchange", "destination_rows"]


class Exchange:
    """Holds the plan by reference; returns its statistics through the recorder's device
    accumulators (never mutating the training extension). Owns its receiver's codec cache and
    the model store ('ans' sections) it decodes with: nothing is shared with other exchanges."""

    def __init__(self, transport, owners: Sequence[int], dim: int, plan: CompressionPlan | None = None,
                 recorder=None, size_exchange: str = "exact", store: SymbolModelStore | None = None,
                 local_peers: Sequence[bool] | None = None, peers_fixed: str | None = None):
        self.transport = transport
        self.local_peers = local_peers  # compress.peers: per destination, on this node (None: not routed)
        self.raw_peers: dict[str, list[bool]] = {}  # compress.peers=auto: per direction, who gets raw rows
        self.peers_fixed = peers_fixed  # compress.peers_fixed: the fixed-rate mode auto may send a direction in
        self.fixed_routes: dict[str, bool] = {}  # compress.peers=auto: per direction, sent whole in peers_fixed
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
        self.sender = MessageSender(transport, size_exchange)  # the byte messages' size protocol
        self.stopwatch = Stopwatch(transport.device)  # codec time: events on a GPU, read with the statistics
        self.wire_raw = 0  # fp32 bytes of every slice this process sent, every direction and mode (host counts)
        self.wire_sent = 0  # payload bytes it handed to the transport for them
        self._last_forward: tuple[dict[int, torch.Tensor], BagIndex] | None = None  # for ``last_sample``
        self.bag_counts = np.zeros((len(self.owners), 2), np.int64)  # [distinct bags, rows] per table, every step
        self.codecs = CodecCache(store)  # receiver-side coders, per exchange (not process-wide)
        self._mode_codecs: dict = {}  # (plan, mode) -> its ModeCodec
        self._inflight = None  # (finish, compress, layout) of a started forward (Req/Wait)
        self._indices: dict = {}  # device and host index tensors of table lists (built once)
        self._identity: dict = {}
        self._nonfinite = None  # device count of NaN/Inf chunks not yet checked
        self._backward_finish = None

    @property
    def bytes_meta(self) -> int:
        """Size-exchange bytes this process sent."""
        return self.sender.bytes_meta

    @property
    def bytes_pad(self) -> int:
        """Slot padding this process sent (``size_exchange=slots``)."""
        return self.sender.bytes_pad

    @property
    def bytes_local(self) -> int:
        """Bytes this process sent uncompressed to ranks on its own node (``compress.peers=inter_node``)."""
        return sum(getattr(c, "bytes_local", 0) for c in self._mode_codecs.values())

    @property
    def host_syncs(self) -> int:
        """Host reads of the exchange itself (tests count them)."""
        return self.sender.host_syncs

    def codec(self, plan: DirectionPlan) -> ModeCodec:
        """The codec of ``plan``'s mode (one per plan and mode, kept)."""
        key = (id(plan), plan.mode)
        codec = self._mode_codecs.get(key)
        if codec is None:
            codec = build_codec(plan.mode, plan, self.codecs, self.transport.device)
            if hasattr(codec, "host_only"):  # the device message path carries neither of these
                if self.sender.size_exchange == "slots" and not self.loopback:
                    codec.host_only = "dist.size_exchange=slots"
                if self.local_peers is not None:
                    codec.host_only = "compress.peers routing"
            if self.local_peers is not None and codec.byte_messages:
                fixed = build_codec(self.peers_fixed, plan, self.codecs, self.transport.device) \
                    if self.peers_fixed else None
                codec = PeerRoutedCodec(codec, self.local_peers, self.raw_peers.get(self._direction(plan)), fixed)
                codec.whole_fixed = self.fixed_routes.get(self._direction(plan), False)
            self._mode_codecs[key] = codec
        if isinstance(codec, PeerRoutedCodec):
            if codec.whole_fixed:  # the whole direction in the fixed-rate mode, as that mode sends it
                return codec.all_fixed
            if all(codec.raw):  # nothing to code: the rows as `off` sends them
                return codec.all_raw
        return codec

    def _direction(self, plan: DirectionPlan) -> str:
        return "bwd" if plan is self.plan.bwd else "fwd"

    def route(self, direction: str, raw: Sequence[bool], fixed: bool = False) -> None:
        """``compress.peers=auto``: from the next step on, ``direction``'s messages to the
        destinations where ``raw`` is True travel uncompressed, the others through its codec;
        ``fixed``: every message in ``compress.peers_fixed``'s mode instead."""
        if fixed and not self.peers_fixed:
            raise ValueError("a route in a fixed-rate mode needs compress.peers_fixed")
        self.raw_peers[direction] = list(raw)
        self.fixed_routes[direction] = bool(fixed)
        codec = self.routed(direction)
        if codec is not None:
            codec.raw = raw
            codec.whole_fixed = bool(fixed)

    def routed(self, direction: str) -> PeerRoutedCodec | None:
        """The routed codec of ``direction`` where one is built (None: not routed, or not yet used)."""
        plan = self.plan.bwd if direction == "bwd" else self.plan.fwd
        codec = self._mode_codecs.get((id(plan), plan.mode))
        return codec if isinstance(codec, PeerRoutedCodec) else None

    @property
    def row_cache(self):
        """The forward codec's row cache stage (``compress.row_cache``), None without one."""
        return self.codec(self.plan.fwd).stage if self.plan.fwd.enabled else None

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
        identity = self._identity.get(batch)
        if identity is None:
            identity = self._identity[batch] = identity_index(len(self.owners), slices)
        if bags is None or not (any(dedup) or self.plan.measure_bags):
            return identity
        index = build_bag_index(bags.indices, bags.offsets, slices, dedup)
        self.bag_counts[:, 0] += index.distinct.sum(axis=1)
        self.bag_counts[:, 1] += batch
        return index if index.active else identity

    def layout(self, index: BagIndex, plan: DirectionPlan) -> Layout:
        """Messages of both sides and the row maps of one direction, in the order ``plan``'s codec
        gives each message's tables; memoised on the index (the backward of a step reuses its
        forward's when the order agrees; the identity index lives as long as the exchange, a
        step's dedup index as long as its step)."""
        codec = self.codec(plan)
        own = codec.order(self.mine)
        recv = [codec.order(ts) for ts in self.by_source]
        key = (tuple(own), tuple(tuple(ts) for ts in recv))
        hit = index.layouts.get(key)  # held by the step's index: freed with it
        if hit is None:
            hit = index.layouts[key] = build_layout(index, own, recv, self.rank, self.loopback, self.dim,
                                                    self.transport.device)
        return hit

    # -------------------------------------------------------------------------- entry points
    def __call__(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None,
                 bounds: StepBounds | None = None) -> list[torch.Tensor]:
        """Owned tables' ``[B, d]`` -> every table's rows for this process (``[B_rank, d]``; all
        ``[B, d]`` in loopback). Differentiable: the backward is the gradient exchange. ``bags``
        (the global batch's ids) enables deduplication where the plan asks for it; ``bounds`` the
        step's per-table bounds (None: the plan's configured ones)."""
        return list(ExchangeFn.apply(self, compress, bags, bounds, *pooled))

    def forward(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None,
                bounds: StepBounds | None = None) -> list[torch.Tensor]:
        return self.begin_forward(pooled, compress, bags=bags, bounds=bounds)[0]()

    @property
    def last_sample(self) -> dict[int, torch.Tensor]:
        """Per owned table, the rows its first forward chunk sent in the last compressed step
        (the lossless tuner's sample, read at its intervals: gathered then, not every step)."""
        if self._last_forward is None:
            return {}
        pooled, index = self._last_forward
        sample = {}
        for t, rows_of in pooled.items():
            rows = index.sent_rows(t, 0)
            sample[t] = rows_of[int(rows[0]):int(rows[-1]) + 1] if not index.dedup[t] \
                else rows_of[to_device(torch.from_numpy(rows), rows_of.device)]
        return sample

    def begin_forward(self, pooled: Sequence[torch.Tensor], compress: bool, async_op: bool = False, bags=None,
                      bounds: StepBounds | None = None):
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
        if compress:  # kept by reference: ``last_sample`` gathers its rows only when asked
            self._last_forward = (dict(zip(self.mine, (p.detach() for p in pooled))), index)
        finish = self._run(flat, lay.owner, lay.consumer, plan, "fwd", async_op, bounds, count=compress)

        def received() -> list[torch.Tensor]:
            rows = finish()
            if lay.expand is not None:
                rows = rows.index_select(0, lay.expand)
            return self._table_rows(rows, lay.consumer)
        return received, index

    def _table_rows(self, rows: torch.Tensor, side: ChunkLayout) -> list[torch.Tensor]:
        """Inverse of ``_chunk_rows`` on the receiving side: each table's rows, tables in order.
        Equal slices of the same tables (the loopback's W destinations) take one transpose,
        whatever the number of tables; a table that arrives in one message is a view."""
        ts = side.tables[0] if side.tables else []
        sizes = {hi - lo for lo, hi in side.slices}
        if len(side.tables) > 1 and len(sizes) == 1 and all(t == ts for t in side.tables):
            w, r = len(side.slices), sizes.pop()
            per_table = rows.view(w, len(ts), r, self.dim).transpose(0, 1).reshape(len(ts), w * r, self.dim)
            return [y for _, y in sorted(zip(ts, per_table.unbind(0)), key=lambda pair: pair[0])]
        out: dict[int, list[torch.Tensor]] = {}
        pos = 0
        for tables, (lo, hi) in zip(side.tables, side.slices):
            n = len(tables) * (hi - lo)
            for t, y in zip(tables, rows[pos:pos + n].view(len(tables), hi - lo, self.dim).unbind(0)):
                out.setdefault(t, []).append(y)
            pos += n
        return [parts[0] if len(parts) == 1 else torch.cat(parts) for _, parts in sorted(out.items())]

    def encode(self, pooled: Sequence[torch.Tensor], bags=None, bounds: StepBounds | None = None) -> list[bytes]:
        """The forward messages of one step (byte-message modes), without a transport: what the
        benchmarks time as the encoder. Statistics are recorded as in a real exchange."""
        plan = self.plan.fwd
        if not plan.byte_messages:
            raise ValueError(f"encode: only byte modes build messages, not {plan.mode!r}")
        lay = self.layout(self.bag_index(pooled[0].shape[0], bags), plan)
        enc = self._encode(self._owner_rows(list(pooled), lay), lay.owner, plan, "fwd", bounds)
        if enc.device_messages:
            raise ValueError("encode: the forward took the device message path (compress.message_path); host wire "
                             "messages need compress.message_path=host")
        return [bytes(m) for m in enc.messages]  # a raw route's messages are views of the rows

    def decode(self, messages: Sequence[bytes], rows: Sequence[int | np.ndarray]) -> list[torch.Tensor]:
        """Each message's travelling rows ``[R_m, d]`` (the receiver's side of ``encode``;
        ``rows[m]``: the rows of every chunk of message m, one count or one per chunk). Wire
        messages describe themselves: any exchange decodes them, whatever its own plan's mode."""
        codec = build_codec("codec", None, self.codecs, self.transport.device)
        return [codec.decode_message(m, r, self.dim) for m, r in zip(messages, rows)]

    def start(self, pooled: Sequence[torch.Tensor], compress: bool, bags=None,
              bounds: StepBounds | None = None) -> PendingExchange:
        """Launch the forward exchange (async collective) and return at once: the upstream DLRM
        Req/Wait split. ``wait()`` on the result gives the received tables, differentiable."""
        token = Request.apply(self, compress, bags, bounds, *pooled)
        return PendingExchange(self, token)

    def backward(self, grads: Sequence[torch.Tensor], compress: bool, index: BagIndex,
                 bounds: StepBounds | None = None) -> list[torch.Tensor]:
        """Each owned table's gradient ``[B, d]`` from the received tables' gradients."""
        return self.begin_backward(grads, compress, index, bounds)()

    def begin_backward(self, grads: Sequence[torch.Tensor], compress: bool, index: BagIndex,
                       bounds: StepBounds | None = None, async_op: bool = False):
        """Encode and launch the gradient exchange; returns ``finish()`` -> the owned tables'
        gradients. With ``async_op`` its collectives are in flight until ``finish`` (the Wait
        half's backward launches, the Req half's finishes: the bottom MLP's backward runs between)."""
        plan = self.plan.bwd if compress and self.plan.bwd.enabled else None
        if plan is None and self.loopback and not index.active:  # one process, exact gradients: the identity
            same = list(grads)
            return lambda: same
        scale = 1.0 / self.transport.world_size
        lay = self.layout(index, plan or self.plan.bwd)
        by_table = dict(zip(sorted({t for ts in lay.consumer.tables for t in ts}), grads))
        rows = self._chunk_rows(by_table, lay.consumer, relative=not self.loopback)
        if lay.expand is not None:  # equal bags: one gradient, their sum, deterministic on every device
            rows = sum_by_bag(rows, lay.expand, int(lay.consumer.chunk_rows.sum()), lay.bag_order)
        if scale != 1.0:
            rows = rows * scale
        finish = self._run(rows, lay.consumer, lay.owner, plan, "bwd", async_op, bounds, count=compress)
        return lambda: self._owner_grads(finish(), lay)

    # -------------------------------------------------------------------------- rows
    def _chunk_rows(self, tensors: dict[int, torch.Tensor], side: ChunkLayout, relative: bool) -> torch.Tensor:
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
    def _encode(self, flat: torch.Tensor, side: ChunkLayout, plan: DirectionPlan, direction: str,
                bounds: StepBounds | None = None) -> Encoded:
        """``plan``'s codec over the travelling rows, its statistics recorded, the NaN/Inf policy applied."""
        t0 = self.stopwatch.now()
        table_bounds = eb = None
        if plan.error_bounded:  # per chunk, from the step's per-table bounds (the plan's configured ones without)
            table_bounds = bounds.direction(direction) if bounds is not None else \
                torch.tensor(plan.eb_rel, dtype=torch.float64)
            eb = to_device(table_bounds.index_select(0, self._index(side.chunk_tables, "cpu")), flat.device)
        enc = self.codec(plan).encode(flat, eb, side)
        if enc.nonfinite is not None:
            self._check_finite(enc.nonfinite, plan, flat)
        if enc.sent is not None:
            self._record(direction, plan, side, flat.element_size(), enc, self.stopwatch.span(t0), table_bounds)
        return enc

    def _run(self, flat: torch.Tensor, out: ChunkLayout, inc: ChunkLayout, plan: DirectionPlan | None,
             direction: str, async_op: bool = False, bounds: StepBounds | None = None, count: bool = True):
        """Send the travelling rows ``flat`` as ``out``'s messages; returns ``finish()`` -> the
        received messages' travelling rows, message after message (waiting on the collective)."""
        plan = plan or self._off
        codec = self.codec(plan)
        enc = self._encode(flat, out, plan, direction, bounds)
        sent_sizes = enc.sizes
        if enc.device_messages:  # the device message path: the payload stays on the device
            sent_sizes, receive = self.sender.send_device(enc.payload, enc.sizes, direction, async_op)
        elif codec.byte_messages:
            receive = self.sender.send(enc.messages, direction, async_op)
        else:
            receive = self.transport.exchange(enc.payload, enc.sizes, codec.sizes(inc), async_op).wait
        if count:  # training traffic (evaluation batches are neither compressed nor counted)
            self.wire_raw += int(out.full_rows.sum()) * self.dim * flat.element_size()
            self.wire_sent += sum(sent_sizes) * (1 if codec.byte_messages else enc.payload.element_size())
        dtype = flat.dtype  # every rank exchanges its model's dtype

        def finish() -> torch.Tensor:
            got = receive()
            t0 = self.stopwatch.now()
            rows = codec.decode(got, inc, dtype).to(dtype)
            if enc.sent is not None and self.recorder is not None:
                self.recorder.add_decode_time(direction, self._index(inc.chunk_tables, None), self.stopwatch.span(t0))
            return rows
        return finish

    def _index(self, tables: list[int], device) -> torch.Tensor | np.ndarray:
        """The table list as a device index (``device`` None: a host array), built once."""
        key = (tuple(tables), None if device is None else str(device))
        index = self._indices.get(key)
        if index is None:
            host = np.asarray(tables, dtype=np.int64)
            index = self._indices[key] = host if device is None else torch.from_numpy(host).to(device)
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
        """Raise NonFiniteError if a device-side exchange saw NaN/Inf chunks since the last check,
        and CorruptPayloadError if a device message failed its checks (``QuantCodec.check_messages``)."""
        pending, self._nonfinite = self._nonfinite, None
        for codec in list(self._mode_codecs.values()):  # device messages that failed their checks
            check = getattr(codec, "check_messages", None)
            if check is not None:
                check()
        if pending is not None and int(pending):
            raise NonFiniteError(int(pending), -1)

    def _record(self, direction: str, plan: DirectionPlan, side: ChunkLayout, item: int, enc: Encoded,
                enc_s, table_bounds: torch.Tensor | None) -> None:
        """One direction's chunk statistics: raw bytes are the chunks' whole slices (what an
        exchange without dedup or compression moves), so the ratio counts both savings."""
        if self.recorder is None:
            return
        tables = side.chunk_tables
        full = side.full_rows
        self.recorder.record_batch(direction, self._index(tables, None), self._index(tables, enc.sent.device),
                                   full * self.dim * item, enc.sent, enc.ideal, enc.err_ratio, enc_s, 0.0,
                                   lambda: _labels(plan, table_bounds), plan.estimated, rows=full,
                                   distinct=side.chunk_rows, hits=enc.hits, row_bytes=self.dim * item)


def _labels(plan: DirectionPlan, table_bounds: torch.Tensor | None) -> tuple[list, list[str]]:
    """Per-table bound of the step recorded (None: a mode without one) and codec name (read when
    statistics are)."""
    return (table_bounds.tolist() if table_bounds is not None else [None] * plan.num_tables), plan.codec_names()
