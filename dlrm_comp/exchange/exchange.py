"""The embedding all-to-all, forward and backward, compressed or not: one code path for one
process (loopback, W virtual destinations) and for many (gloo / NCCL process group).

Forward: this process owns some tables and looked them up for the whole batch ``[B, d]``. Rows
``[q*B/W, (q+1)*B/W)`` of every owned table go to destination q (the last takes the remainder),
as one message per destination. A receiver decodes what it got and hands every table's rows to
the dense part. Backward sends each received chunk's gradient back to the table's owner, exact
or compressed, scaled by ``1/world_size`` so the owner sees the gradient of the global-batch
mean (world_size is 1 in loopback: one process computes the loss over the whole batch).

Per step and direction the codec path runs once over all (table x destination) chunks:
``quantize_batch`` (tensor ops, on the device) -> the code planes and chunk table on the host
-> one lossless call per (destination, coder) -> W message sizes in one small all-to-all (or
per-pair slots, ``size_exchange="slots"``) -> one host read of the split sizes -> the byte
all-to-all -> one parse per received message. Fixed-rate modes and
``off``/``simulate`` know their sizes in advance: no size exchange, no host read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import BatchQuant, dequantize_planes, error_ratios, quantize_batch
from dlrm_comp.compress.errors import CorruptPayloadError, NonFiniteError
from dlrm_comp.compress.fixed_batch import decode_fixed_batch, encode_fixed_batch, fixed_nbytes
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.wire import (
    CHUNK_HEADER,
    HEADER_DTYPE,
    KIND_QUANT,
    KIND_RAW,
    KIND_SZ,
    PREAMBLE,
    SECTION_HEADER,
    message_length,
    HostChunks,
    Parsed,
    assemble,
    bitpack,
    bitunpack,
    body_sizes,
    parse,
    section_ids,
)
from dlrm_comp.exchange.plan import CompressionPlan, DirectionPlan

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
class Group:
    """Messages whose chunks all hold n values: ``X [C, n]``, message m owns ``counts[m]`` chunks."""

    x: torch.Tensor
    tables: list[int]
    counts: list[int]
    rows: int


class Exchange:
    """Holds the plan by reference; returns its statistics through the recorder's device
    accumulators (never mutating the training extension)."""

    def __init__(self, transport, owners: Sequence[int], dim: int, plan: CompressionPlan | None = None,
                 recorder=None, size_exchange: str = "exact"):
        self.transport = transport
        self.owners = list(owners)
        self.dim = dim
        self.plan = plan or CompressionPlan.off(len(self.owners))
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
        self._codecs: dict = {}  # receiver-side coder cache, per exchange (not process-wide)
        self._inflight = None  # (finish, compress, rows) of a started forward (Req/Wait)
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

    def _order(self, tables: list[int], plan: DirectionPlan) -> list[int]:
        """Tables of one message, grouped by coder (a section each), stable within a coder
        (memoised on the plan's version: the plan bumps it whenever a coder changes)."""
        if plan.mode != "codec":
            return list(tables)
        memo_key = (id(plan), plan.version, tuple(tables))
        order = self._orders.get(memo_key)
        if order is None:
            keys = [self._coder_key(plan, t) for t in tables]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            order = [t for _, t in sorted(zip(keys, tables), key=lambda kt: first[kt[0]])]
            self._memo(memo_key, order)
        return order

    def _memo(self, key, value) -> None:
        if len(self._orders) > 256:
            self._orders.clear()
        self._orders[key] = value

    @staticmethod
    def _coder_key(plan: DirectionPlan, t: int):
        """What a section shares: the coder and the code layout."""
        c = plan.coders[t]
        return c.codec_id, c.header_params(), bool(plan.bitpack[t])

    def _sections(self, plan: DirectionPlan, g: Group) -> tuple[list[int], list[list]]:
        """Section index of every chunk and the coder of every section, per message of a group."""
        memo_key = ("sections", id(plan), plan.version, tuple(g.tables), tuple(g.counts))
        hit = self._orders.get(memo_key)
        if hit is None:
            ids, coders, c0 = [], [], 0
            for count in g.counts:
                tables = g.tables[c0:c0 + count]
                keys = [self._coder_key(plan, t) for t in tables]
                ids += section_ids(keys)
                first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
                coders.append([plan.coders[tables[i]] if plan.mode == "codec" else _IDENTITY for i in first])
                c0 += count
            hit = (ids, coders)
            self._memo(memo_key, hit)
        return hit

    def _split_groups(self, tensors: Sequence[torch.Tensor], rows: list[tuple[int, int]], tables: list[int],
                      plan: DirectionPlan) -> list[Group]:
        """Chunks of the ``[B, d]`` tensors of ``tables`` to every destination, as ``[C, n]``
        groups in (destination, table) order: one stacking copy per group, no other."""
        order = self._order(tables, plan)
        by_table = dict(zip(tables, tensors))
        src = [by_table[t].detach() for t in order]
        groups, q = [], 0
        while q < len(rows):
            r = rows[q][1] - rows[q][0]
            g = q
            while g < len(rows) and rows[g][1] - rows[g][0] == r:
                g += 1
            a, b = rows[q][0], rows[g - 1][1]
            x = torch.stack([p[a:b].reshape(g - q, r * self.dim) for p in src], dim=1).reshape(-1, r * self.dim)
            groups.append(Group(x, order * (g - q), [len(order)] * (g - q), r))
            q = g
        return groups

    # -------------------------------------------------------------------------- entry points
    def __call__(self, pooled: Sequence[torch.Tensor], compress: bool) -> list[torch.Tensor]:
        """Owned tables' ``[B, d]`` -> every table's rows for this process (``[B_rank, d]``; all
        ``[B, d]`` in loopback). Differentiable: the backward is the gradient exchange."""
        return list(_ExchangeFn.apply(self, compress, *pooled))

    def forward(self, pooled: Sequence[torch.Tensor], compress: bool) -> list[torch.Tensor]:
        return self.begin_forward(pooled, compress)()

    def begin_forward(self, pooled: Sequence[torch.Tensor], compress: bool, async_op: bool = False):
        """Encode and launch the forward exchange; returns ``finish()`` -> the received tables.
        With ``async_op`` the data collective is in flight until ``finish`` waits on it."""
        batch = pooled[0].shape[0] if pooled else 0
        rows = self.slice_rows(batch)
        plan = self.plan.fwd if compress and self.plan.fwd.enabled else None
        if plan is None and self.loopback:  # one process, nothing compressed: the loopback is the identity
            return lambda: [p.detach() for p in pooled]
        groups = self._split_groups(pooled, rows, self.mine, plan or self.plan.fwd)
        if compress and self.mine:
            first = rows[0][1] - rows[0][0]
            for i, t in enumerate(self.mine):
                self.last_sample[t] = pooled[i].detach()[:first]
        recv_rows = rows if self.loopback else [rows[self.rank]] * len(rows)
        recv_tables = [self._order(ts, plan or self.plan.fwd) for ts in self.by_source]
        finish = self._run(groups, recv_tables, recv_rows, plan, "fwd", async_op)

        def received() -> list[torch.Tensor]:
            out: dict[int, list[torch.Tensor]] = {}
            for tables, chunk in zip(recv_tables, finish()):
                for t, y in zip(tables, chunk.view(len(tables), -1, self.dim).unbind(0)):
                    out.setdefault(t, []).append(y)
            return [parts[0] if len(parts) == 1 else torch.cat(parts) for _, parts in sorted(out.items())]
        return received

    def encode(self, pooled: Sequence[torch.Tensor]) -> list[bytes]:
        """The forward messages of one step (codec and sz modes), without a transport: what the
        benchmarks time as the encoder. Statistics are recorded as in a real exchange."""
        plan = self.plan.fwd
        if plan.mode not in ("codec", "sz"):
            raise ValueError(f"encode: only byte modes build messages, not {plan.mode!r}")
        groups = self._split_groups(pooled, self.slice_rows(pooled[0].shape[0]), self.mine, plan)
        return [m for g in groups for m in self._encode_group(g, plan, "fwd")]

    def decode(self, messages: Sequence[bytes], rows: Sequence[int]) -> list[torch.Tensor]:
        """Each message's values ``[C, rows*dim]`` (the receiver's side of ``encode``)."""
        dev = self.transport.device
        return [self._reconstruct(parse(m, r * self.dim, self._codecs), r * self.dim, dev)
                for m, r in zip(messages, rows)]

    def start(self, pooled: Sequence[torch.Tensor], compress: bool) -> "PendingExchange":
        """Launch the forward exchange (async collective) and return at once: the upstream DLRM
        Req/Wait split. ``wait()`` on the result gives the received tables, differentiable."""
        token = _Request.apply(self, compress, *pooled)
        return PendingExchange(self, token)

    def backward(self, grads: Sequence[torch.Tensor], compress: bool, rows: list[tuple[int, int]]) -> list[torch.Tensor]:
        plan = self.plan.bwd if compress and self.plan.bwd.enabled else None
        if plan is None and self.loopback:  # one process, exact gradients: the loopback is the identity
            return list(grads)
        scale = 1.0 / self.transport.world_size
        if self.loopback:
            scaled = [g * scale for g in grads] if scale != 1.0 else list(grads)
            groups = self._split_groups(scaled, rows, list(range(len(self.owners))), plan or self.plan.bwd)
        else:
            order = [self._order(ts, plan or self.plan.bwd) for ts in self.by_source]
            flat = [t for ts in order for t in ts]
            x = torch.stack([grads[t] for t in flat]).reshape(len(flat), -1) * scale
            groups = [Group(x, flat, [len(ts) for ts in order], grads[0].shape[0])]
        mine = self._order(self.mine, plan or self.plan.bwd)
        decoded = self._run(groups, [mine] * len(rows), rows, plan, "bwd")()
        parts = [chunk.view(len(mine), -1, self.dim) for chunk in decoded]
        full = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        by_table = dict(zip(mine, full.unbind(0)))
        return [by_table[t] for t in self.mine]

    # -------------------------------------------------------------------------- one direction
    def _run(self, groups: list[Group], recv_tables: list[list[int]], recv_rows: list[tuple[int, int]],
             plan: DirectionPlan | None, direction: str, async_op: bool = False):
        """Send every group's messages; returns ``finish()`` -> each received message's values
        ``[C_m, n_m]`` (waiting on the collective first)."""
        mode = plan.mode if plan is not None else "off"
        recv_n = [(b - a) * self.dim for a, b in recv_rows]
        if mode in ("off", "simulate"):
            if mode == "simulate":
                groups = [self._simulate(g, plan, direction) for g in groups]
            flat = torch.cat([g.x.reshape(-1) for g in groups])  # the exchanged dtype, as given
            in_splits = [c * g.x.shape[1] for g in groups for c in g.counts]
            out_splits = [len(ts) * n for ts, n in zip(recv_tables, recv_n)]
            handle = self.transport.exchange(flat, in_splits, out_splits, async_op)
            return lambda: [o.view(len(ts), n) for o, ts, n in
                            zip(handle.wait().split(out_splits), recv_tables, recv_n)]
        if plan.fixed_rate:
            return self._run_fixed(groups, recv_tables, recv_n, plan, direction, async_op)
        return self._run_bytes(groups, recv_tables, recv_n, plan, direction, async_op)

    def _eb(self, plan: DirectionPlan, tables: list[int], device) -> torch.Tensor:
        return _to_device(torch.tensor([plan.eb_rel[t] for t in tables], dtype=torch.float64), device)

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

    def _record(self, direction: str, plan: DirectionPlan, tables: list[int], raw: int, sent: torch.Tensor,
                ideal, err_ratio, enc_s: float, dec_s: float) -> None:
        if self.recorder is None:
            return
        self.recorder.record_batch(direction, self._host_index(tables), self._index(tables, sent.device), raw,
                                   sent, ideal, err_ratio, enc_s, dec_s, lambda: _labels(plan), plan.estimated)

    def _host_index(self, tables: list[int]) -> np.ndarray:
        key = tuple(tables)
        index = self._host_indices.get(key)
        if index is None:
            index = self._host_indices[key] = np.asarray(tables, dtype=np.int64)
        return index

    def _simulate(self, g: Group, plan: DirectionPlan, direction: str) -> Group:
        t0 = time.perf_counter()
        q = quantize_batch(g.x, self._eb(plan, g.tables, g.x.device))
        self._check_finite(q.nonfinite, plan, g.x)
        n = g.x.shape[1]
        quant = q.kind == 2
        ideal = q.entropy_bytes() + CHUNK_HEADER
        raw_body = torch.full_like(ideal, float(n * g.x.element_size()))
        est = torch.where(quant, ideal, torch.where(q.kind == 0, raw_body, 0.0) + CHUNK_HEADER)
        est = est + (PREAMBLE + SECTION_HEADER) / max(len(g.tables), 1) * len(g.counts)
        self._record(direction, plan, g.tables, n * g.x.element_size(), est, est, q.error_ratio(),
                     time.perf_counter() - t0, 0.0)
        return Group(q.received(), g.tables, g.counts, g.rows)

    def _run_fixed(self, groups, recv_tables, recv_n, plan, direction, async_op=False):
        t0 = time.perf_counter()
        dtype = groups[0].x.dtype if groups else torch.float32  # every rank exchanges its model's dtype
        sends, in_splits = [], []
        for g in groups:
            if plan.nonfinite != "passthrough":  # max|x| is finite iff every value is (NaN propagates)
                bad = (~torch.isfinite(g.x.abs().amax())).to(torch.int64) if g.x.numel() else torch.zeros((),
                                                                                                          dtype=torch.int64)
                self._check_finite(bad, plan, g.x)
            b = encode_fixed_batch(plan.mode, g.x, self.dim)
            sends.append(b.reshape(-1))
            in_splits += [c * b.shape[1] for c in g.counts]
            per = fixed_nbytes(plan.mode, g.x.shape[1], self.dim)
            self._record(direction, plan, g.tables, g.x.shape[1] * g.x.element_size(),
                         torch.full((len(g.tables),), float(per), dtype=torch.float64, device=g.x.device),
                         None, None, time.perf_counter() - t0, 0.0)
        sizes = [fixed_nbytes(plan.mode, n, self.dim) for n in recv_n]
        out_splits = [len(ts) * s for ts, s in zip(recv_tables, sizes)]
        handle = self.transport.exchange(torch.cat(sends), in_splits, out_splits, async_op)

        def finish():
            out = handle.wait()
            t1 = time.perf_counter()
            result = [decode_fixed_batch(plan.mode, o.view(len(ts), s), n, self.dim, dtype)
                      for o, ts, s, n in zip(out.split(out_splits), recv_tables, sizes, recv_n)]
            self._add_decode(direction, plan, recv_tables, time.perf_counter() - t1)
            return result
        return finish

    def _add_decode(self, direction, plan, recv_tables, seconds: float) -> None:
        if self.recorder is not None:
            self.recorder.add_decode_time(direction, self._host_index([t for ts in recv_tables for t in ts]), seconds)

    # -------------------------------------------------------------------------- byte messages
    def _host_chunks(self, g: Group, plan: DirectionPlan) -> tuple[HostChunks, BatchQuant]:
        """Quantize on the device, then bring the chunk table and body planes to the host (the
        CPU stream coders need host bytes: one copy per direction, not per chunk)."""
        x = g.x
        n = x.shape[1]
        q = quantize_batch(x, self._eb(plan, g.tables, x.device))
        self._check_finite(q.nonfinite, plan, x)
        h = np.zeros(len(g.tables), dtype=HEADER_DTYPE)
        kind = q.kind.cpu().numpy()
        bits = q.bits.cpu().numpy()
        h["table"], h["kind"], h["bits"] = g.tables, kind, bits
        h["minimum"], h["step"], h["eb_abs"] = q.minimum.cpu().numpy(), q.step.cpu().numpy(), q.eb_abs.cpu().numpy()
        h["section"] = self._sections(plan, g)[0]
        bp = np.array([plan.bitpack[t] for t in g.tables], dtype=bool)
        h["layout"] = bp
        low = q.low
        if bp.any():
            packed = bitpack(q.codes, q.bits)
            low = torch.where(torch.from_numpy(bp).to(x.device)[:, None], packed,
                              torch.nn.functional.pad(low, (0, n)))
        high = q.high.cpu().numpy() if (bits > 8).any() else None
        raw = x.contiguous().view(torch.uint8).reshape(len(h), -1).cpu().numpy() if (kind == KIND_RAW).any() else None
        h["nbytes"] = body_sizes(h, n, x.element_size())
        return HostChunks(h, g.rows, self.dim, low.cpu().numpy(), high, raw), q

    def _encode_group(self, g: Group, plan: DirectionPlan, direction: str) -> list[bytes]:
        """Messages (host bytes) of one group, with their statistics recorded."""
        t0 = time.perf_counter()
        if plan.mode == "sz":
            hc, ratio = self._sz_chunks(g, plan)
            ideal_body = None
        else:
            hc, q = self._host_chunks(g, plan)
            ratio = q.error_ratio()
            ideal_body = torch.where(q.kind == KIND_QUANT, q.entropy_bytes(),
                                     torch.from_numpy(hc.header["nbytes"].astype(np.float64)).to(q.kind.device))
        weights = None if ideal_body is None else ideal_body.cpu().numpy()
        messages, sent, framing = assemble(hc, g.x.dtype, g.x.shape[1], g.counts, self._sections(plan, g)[1], weights)
        sent_t = torch.from_numpy(sent)
        ideal = None if ideal_body is None else ideal_body.cpu() + torch.from_numpy(framing)
        self._record(direction, plan, g.tables, g.x.shape[1] * g.x.element_size(), sent_t,
                     ideal, ratio.cpu(), time.perf_counter() - t0, 0.0)
        return messages

    def _sz_chunks(self, g: Group, plan: DirectionPlan) -> tuple[HostChunks, torch.Tensor]:
        """SZ3 stays a CPU byte path, one pysz call per chunk (its stated cost), verified like
        the quantizer: SZ3 runs in float64 for float64 data, else float32, and the receiver's
        value (SZ3's output cast to the data's dtype) is checked against the bound; a chunk that
        fails, or has no usable bound, travels RAW in its own dtype."""
        from dlrm_comp.compress.batch_quant import round_down_f32
        from dlrm_comp.compress.sz import sz_compress, sz_decompress
        x = g.x.detach().cpu()
        n, item = x.shape[1], x.element_size()
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        self._check_finite((~torch.isfinite(x)).sum(), plan, x)
        x64 = x.to(torch.float64)
        if n:
            mn, mx = x64.amin(1), x64.amax(1)
        else:
            mn = mx = torch.zeros(len(x), dtype=torch.float64)
        eb_abs = round_down_f32(self._eb(plan, g.tables, "cpu") * (mx - mn)).clamp_max(3.0e38)
        h = np.zeros(len(g.tables), dtype=HEADER_DTYPE)
        h["table"], h["layout"], h["eb_abs"] = g.tables, 1, eb_abs.numpy()
        arr = x.to(work).numpy()
        ref = x64.numpy()
        bodies, errs = [b""] * len(g.tables), np.zeros(len(g.tables))
        for c, eb in enumerate(eb_abs.tolist()):
            if eb > 0 and np.isfinite(ref[c]).all():
                blob = sz_compress(arr[c].reshape(g.rows, self.dim), eb)
                y = sz_decompress(blob, arr.dtype, (g.rows, self.dim)).reshape(-1)
                got = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).to(torch.float64).numpy()
                err = float(np.abs(got - ref[c]).max()) if y.size else 0.0
                if err <= eb and len(blob) < n * item:
                    bodies[c], h["kind"][c], errs[c] = blob, KIND_SZ, err
        h["nbytes"] = body_sizes(h, n, item, bodies)
        ratio = error_ratios(torch.from_numpy(errs), eb_abs)
        raw = x.contiguous().view(torch.uint8).reshape(len(h), -1).numpy()
        return HostChunks(h, g.rows, self.dim, np.zeros((len(h), 2 * n), np.uint8), None, raw, bodies), ratio

    def _run_bytes(self, groups, recv_tables, recv_n, plan, direction, async_op=False):
        messages = [m for g in groups for m in self._encode_group(g, plan, direction)]
        if self.size_exchange == "slots" and not self.loopback:
            return self._run_slots(messages, recv_tables, recv_n, plan, direction, async_op)
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
            return self._decode_received(received, recv_tables, recv_n, plan, direction)
        return finish

    def _run_slots(self, messages, recv_tables, recv_n, plan, direction, async_op=False):
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
            return self._decode_received(received, recv_tables, recv_n, plan, direction)
        return finish

    def _decode_received(self, received, recv_tables, recv_n, plan, direction) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        dev = self.transport.device
        result = []
        for msg, ts, n in zip(received, recv_tables, recv_n):
            rec = parse(msg, n, self._codecs, expect_chunks=len(ts))
            got = rec.header["table"].astype(np.int64).tolist()
            if got != list(ts):
                raise CorruptPayloadError(f"message carries tables {got}, expected {list(ts)}")
            result.append(self._reconstruct(rec, n, dev))  # in the sender's dtype, as it verified
        self._add_decode(direction, plan, recv_tables, time.perf_counter() - t0)
        return result

    @staticmethod
    def _reconstruct(rec: Parsed, n: int, dev: torch.device) -> torch.Tensor:
        h = rec.header
        t = torch.from_numpy
        kind = np.where(h["kind"] == KIND_SZ, KIND_RAW, h["kind"]).astype(np.int64)
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


def _zero_grads(ex: Exchange, rows, grads):
    n_rows = rows[-1][1] if ex.loopback else rows[ex.rank][1] - rows[ex.rank][0]
    dev = ex.transport.device
    return [g.contiguous() if g is not None else torch.zeros(n_rows, ex.dim, device=dev) for g in grads]


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small host tensor onto the device without a blocking copy (pinned, non_blocking)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class _ExchangeFn(torch.autograd.Function):
    """Forward: the exchange of the pooled outputs. Backward: the gradient exchange back to
    each table's owner (straight through the compression: d x_hat / d x = I)."""

    @staticmethod
    def forward(ctx, exchange: Exchange, compress: bool, *pooled: torch.Tensor):
        ctx.exchange, ctx.compress = exchange, compress
        ctx.rows = exchange.slice_rows(pooled[0].shape[0])
        return tuple(exchange.forward([p.detach() for p in pooled], compress))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        return (None, None, *ex.backward(_zero_grads(ex, ctx.rows, grads), ctx.compress, ctx.rows))


class _Request(torch.autograd.Function):
    """Req half of the Req/Wait pair: launches the forward exchange (async); its backward hands
    the pooled outputs the gradients that the Wait half's backward exchanged."""

    @staticmethod
    def forward(ctx, exchange: Exchange, compress: bool, *pooled: torch.Tensor):
        ctx.exchange = exchange
        if exchange._inflight is not None:
            raise RuntimeError("Exchange.start: the previous exchange was never waited on")
        exchange._inflight = (exchange.begin_forward([p.detach() for p in pooled], compress, async_op=True),
                              compress, exchange.slice_rows(pooled[0].shape[0]))
        return pooled[0].new_zeros(0)

    @staticmethod
    def backward(ctx, _token_grad):
        grads, ctx.exchange._pooled_grads = ctx.exchange._pooled_grads, None
        return (None, None, *grads)


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exchange: Exchange, token: torch.Tensor):
        finish, ctx.compress, ctx.rows = exchange._inflight
        exchange._inflight = None
        ctx.exchange = exchange
        return tuple(finish())

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        ex._pooled_grads = ex.backward(_zero_grads(ex, ctx.rows, grads), ctx.compress, ctx.rows)
        return None, torch.zeros(0, device=ex.transport.device)


class PendingExchange:
    """A forward exchange in flight (torchrec's Awaitable): ``wait()`` -> the received tables."""

    def __init__(self, exchange: Exchange, token: torch.Tensor):
        self.exchange, self.token = exchange, token

    def wait(self) -> list[torch.Tensor]:
        return list(_Wait.apply(self.exchange, self.token))
