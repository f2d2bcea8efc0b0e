"""The embedding all-to-all, compressed for real.

Forward: each rank holds some tables and has looked them up for the global batch. For each
destination rank q and each owned table it compresses rows `[q*B/W, (q+1)*B/W)` (the last rank
takes the remainder) with that chunk's own range and the table's current bound. Payload sizes go
first (one int64 per table and destination), then the bytes, through a variable-size
`all_to_all_single` on uint8. Receivers decode into one `[B_q, d]` tensor per table.

Backward: the gradient of every received chunk goes back to the table's owner, exact (fp32) by
default or compressed with its own backend and bound. Gradients are scaled by 1/W so that, with
each rank's loss a mean over its slice, the owner sees the single-process gradient of the mean.

`off` and `simulate` exchange fp32 (simulate quantizes on the sender first and estimates bytes).
A separate process group keeps these collectives apart from DDP's all-reduces.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from dlrm_comp.compress.payload import decode_payload
from dlrm_comp.distributed.sharding import tables_of
from dlrm_comp.hooks import destination_rows
from dlrm_comp.recorder import CompressionRecorder

Bound = Callable[[int], float]


class EmbeddingExchange:
    def __init__(self, owners: Sequence[int], rank: int, world_size: int, dim: int,
                 forward_backend=None, forward_bound: Bound | None = None,
                 backward_backend=None, backward_bound: Bound | None = None,
                 recorder: CompressionRecorder | None = None, codec_names: tuple[str, str] = ("", ""),
                 group=None, accounting=None):
        self.owners = list(owners)
        self.rank, self.world_size, self.dim = rank, world_size, dim
        self.mine = tables_of(self.owners, rank)
        self.by_rank = [tables_of(self.owners, r) for r in range(world_size)]
        self.backends = {"fwd": forward_backend, "bwd": backward_backend}
        self.bounds = {"fwd": forward_bound, "bwd": backward_bound}
        self.codec_names = {"fwd": codec_names[0], "bwd": codec_names[1]}
        self.recorder = recorder
        self.group = group
        self.accounting = accounting  # counts the size-exchange bytes in `bytes_meta_interval`
        self.table_backends: dict[int, object] = {}  # per-table forward backends (lossless tuning)
        self.table_codec_names: dict[int, str] = {}
        self.last_chunk: dict[int, torch.Tensor] = {}  # latest forward chunk per owned table

    # ------------------------------------------------------------------ autograd entry point
    def __call__(self, pooled: Sequence[torch.Tensor], compress: bool) -> list[torch.Tensor]:
        """Owned tables' `[B, d]` -> every table's `[B_rank, d]` for this rank's batch slice."""
        return list(_Exchange.apply(self, compress, *pooled))

    def slice_rows(self, batch: int) -> list[tuple[int, int]]:
        rows = destination_rows(batch, self.world_size)
        if len(rows) != self.world_size:
            raise ValueError(f"batch of {batch} rows cannot be split over {self.world_size} ranks")
        return rows

    # ------------------------------------------------------------------ forward / backward
    def forward(self, pooled: Sequence[torch.Tensor], compress: bool) -> list[torch.Tensor]:
        rows = self.slice_rows(pooled[0].shape[0])
        # what this rank sends to q: its tables' rows of q's slice; receives from p: p's tables, its slice
        send = [[(t, p[a:b]) for t, p in zip(self.mine, pooled)] for a, b in rows]
        a, b = rows[self.rank]
        recv_shape = {p: [(t, (b - a, self.dim)) for t in self.by_rank[p]] for p in range(self.world_size)}
        received = self._exchange(send, recv_shape, "fwd" if compress else None)
        return [received[t] for t in range(len(self.owners))]

    def backward(self, grads: Sequence[torch.Tensor], compress: bool,
                 batch_rows: list[tuple[int, int]]) -> list[torch.Tensor]:
        scale = 1.0 / self.world_size
        send = [[(t, grads[t] * scale) for t in self.by_rank[q]] for q in range(self.world_size)]
        recv_shape = {p: [(t, (b - a, self.dim)) for t in self.mine] for p, (a, b) in enumerate(batch_rows)}
        received = self._exchange_chunks(send, recv_shape, "bwd" if compress and self.backends["bwd"] else None)
        return [torch.cat([received[(p, t)] for p in range(self.world_size)]) for t in self.mine]

    # ------------------------------------------------------------------ transport
    def _exchange(self, send, recv_shape, direction):
        chunks = self._exchange_chunks(send, recv_shape, direction)
        return {t: chunks[(p, t)] for p, tables in recv_shape.items() for t, _ in tables}

    def _exchange_chunks(self, send, recv_shape, direction) -> dict[tuple[int, int], torch.Tensor]:
        """Send `send[q] = [(table, tensor)]` to each q; returns {(source rank, table): tensor}."""
        backend = self.backends[direction] if direction else None
        if backend is None or backend.name == "simulate":
            if backend is not None:
                send = [[(t, self._simulate(t, x, direction)) for t, x in items] for items in send]
            return self._exchange_fp32(send, recv_shape)
        return self._exchange_bytes(send, recv_shape, direction, backend)

    def _simulate(self, table: int, x: torch.Tensor, direction: str) -> torch.Tensor:
        x_hat, stats = self.backends[direction].roundtrip(x.detach(), self.bounds[direction](table))
        if self.recorder is not None:
            self.recorder.record(table, direction, stats, stats.eb_rel, self.codec_names[direction])
        return x_hat

    def _exchange_fp32(self, send, recv_shape):
        device = send[0][0][1].device if send and send[0] else torch.device("cpu")
        flat = [torch.cat([x.reshape(-1) for _, x in items]) if items else torch.empty(0, device=device)
                for items in send]
        in_splits = [int(f.numel()) for f in flat]
        out_splits = [sum(shape[0] * shape[1] for _, shape in recv_shape[p]) for p in range(self.world_size)]
        out = torch.empty(sum(out_splits), dtype=torch.float32, device=device)
        dist.all_to_all_single(out, torch.cat(flat).float().contiguous(), out_splits, in_splits, group=self.group)
        return self._unflatten(out.split(out_splits), recv_shape)

    def _exchange_bytes(self, send, recv_shape, direction, backend):
        device = send[0][0][1].device if send and send[0] else torch.device("cpu")
        payloads: list[list[bytes]] = []
        for items in send:
            row = []
            for t, x in items:
                chunk_backend = self.table_backends.get(t, backend) if direction == "fwd" else backend
                eb = self.bounds[direction](t) if chunk_backend.error_bounded else None
                if direction == "fwd":
                    self.last_chunk[t] = x.detach()
                enc, stats = chunk_backend.encode_measured(x.detach(), eb)
                if self.recorder is not None:
                    name = self.table_codec_names.get(t, self.codec_names[direction]) if direction == "fwd" \
                        else self.codec_names[direction]
                    self.recorder.record(t, direction, stats, eb, name)
                row.append(enc.payload)
            payloads.append(row)
        # 1) sizes: one int64 per (table, destination)
        sizes_in = torch.tensor([len(p) for row in payloads for p in row], dtype=torch.int64)
        size_in_splits = [len(row) for row in payloads]
        size_out_splits = [len(recv_shape[p]) for p in range(self.world_size)]
        sizes_out = torch.empty(sum(size_out_splits), dtype=torch.int64)
        dist.all_to_all_single(sizes_out, sizes_in, size_out_splits, size_in_splits, group=self.group)
        if self.accounting is not None:
            self.accounting.bytes_meta_interval += int(sizes_in.numel()) * 8
        # 2) bytes, variable size per destination
        blob = b"".join(p for row in payloads for p in row)
        data_in = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
        in_splits = [sum(len(p) for p in row) for row in payloads]
        sizes = sizes_out.tolist()
        out_splits, k = [], 0
        for p in range(self.world_size):
            n = size_out_splits[p]
            out_splits.append(sum(sizes[k:k + n]))
            k += n
        data_out = torch.empty(sum(out_splits), dtype=torch.uint8)
        dist.all_to_all_single(data_out, data_in, out_splits, in_splits, group=self.group)
        # 3) decode, table by table, with the payload sizes received
        raw = data_out.numpy().tobytes()
        result: dict[tuple[int, int], torch.Tensor] = {}
        pos, k = 0, 0
        for p in range(self.world_size):
            for t, shape in recv_shape[p]:
                n = sizes[k]
                t0 = time.perf_counter()
                x = decode_payload(raw[pos:pos + n], device)
                if self.recorder is not None:
                    self.recorder.record_decode(t, direction, time.perf_counter() - t0)
                if tuple(x.shape) != shape:
                    raise ValueError(f"table {t} from rank {p}: decoded shape {tuple(x.shape)}, expected {shape}")
                result[(p, t)] = x.float()
                pos += n
                k += 1
        return result

    def _unflatten(self, parts, recv_shape):
        result = {}
        for p, part in enumerate(parts):
            pos = 0
            for t, (r, d) in recv_shape[p]:
                result[(p, t)] = part[pos:pos + r * d].view(r, d)
                pos += r * d
        return result


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exchange: EmbeddingExchange, compress: bool, *pooled: torch.Tensor):
        ctx.exchange, ctx.compress = exchange, compress
        ctx.rows = exchange.slice_rows(pooled[0].shape[0])
        return tuple(exchange.forward([p.detach() for p in pooled], compress))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        a, b = ctx.rows[ex.rank]
        grads = [g.contiguous() if g is not None else torch.zeros(b - a, ex.dim) for g in grads]
        return (None, None, *ex.backward(grads, ctx.compress, ctx.rows))
