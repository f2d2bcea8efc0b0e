"""One rank of a model-parallel run: its embedding shard, the data-parallel dense layers (DDP),
and the compressed embedding all-to-all between them.

Every rank reads the same global batch (batches are a pure function of their index), looks up
its own tables for all B rows, exchanges, and runs the dense part on its slice
`[r*B/W, (r+1)*B/W)`. The batch size must divide by the world size: that is checked at start-up,
and a final partial batch of a bounded split is dropped, as upstream DLRM does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dlrm_comp.config import ConfigError, RunConfig
from dlrm_comp.data.batch import Batch
from dlrm_comp.distributed.env import DistEnv
from dlrm_comp.exchange import Exchange, ProcessGroupTransport
from dlrm_comp.distributed.sharding import place_tables, tables_of
from dlrm_comp.model import DLRM
from dlrm_comp.train.builders import build_model
from dlrm_comp.train.powersgd import bucket_kwargs


class DenseHead(nn.Module):
    """The dense layers, as one module so DDP can wrap them (not the embeddings). `pooled` may be
    a callable that yields the exchanged embeddings: it is called after the bottom MLP, so an
    exchange already in flight (`Exchange.start`) overlaps with it."""

    def __init__(self, model: DLRM):
        super().__init__()
        self.bottom, self.interaction, self.top = model.bottom, model.interaction, model.top

    def forward(self, dense: torch.Tensor, pooled) -> torch.Tensor:
        x = self.bottom(dense)
        embeddings = pooled() if callable(pooled) else pooled
        return self.top(self.interaction(x, embeddings)).squeeze(1)


def check_divisible(cfg: RunConfig, world_size: int) -> None:
    for key, value in (("data.batch_size", cfg.data.batch_size),):  # evaluation slices may be unequal
        if value % world_size:
            raise ConfigError(f"{key}: {value} is not divisible by the world size {world_size}; "
                              f"use a multiple of {world_size}")


class ModelParallel:
    def __init__(self, cfg: RunConfig, env: DistEnv, cardinalities: list[int], device: torch.device,
                 compression=None):
        check_divisible(cfg, env.world_size)
        self.env = env
        self.device = device
        self.overlap = cfg.dist.overlap
        self.owners = place_tables(cardinalities, cfg.model.emb_dim, env.world_size, cfg.dist.sharding)
        self.model = build_model(cfg, cardinalities, owned_tables=tables_of(self.owners, env.rank)).to(device)
        ids = [device.index] if device.type == "cuda" else None
        head = DenseHead(self.model)
        self.head = DistributedDataParallel(head, device_ids=ids, broadcast_buffers=False,
                                            **bucket_kwargs(cfg.dist.allreduce_compression, head))
        group = dist.new_group(backend=env.backend)  # the exchange's collectives apart from DDP's
        transport = ProcessGroupTransport(group, device)
        if compression is not None:
            self.exchange = compression.build_exchange(transport, self.owners, cfg.model.emb_dim,
                                                       cfg.dist.size_exchange)
        else:
            self.exchange = Exchange(transport, self.owners, cfg.model.emb_dim, size_exchange=cfg.dist.size_exchange)

    def forward(self, batch: Batch, training: bool, bags: Batch | None = None,
                bounds=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of this rank's slice of the global batch (``bags``: its ids on the
        host, for bag deduplication; ``bounds``: the step's ``StepBounds``)."""
        start, stop = self.exchange.slice_rows(batch.batch_size)[self.env.rank]
        local = batch.slice(start, stop, host=bags)
        pooled = self.model.tap(self.model.lookup(batch.indices, batch.offsets))
        if not self.overlap:
            return self.head(local.dense, self.exchange(pooled, compress=training, bags=bags,
                                                             bounds=bounds)), local.labels
        pending = self.exchange.start(pooled, compress=training, bags=bags, bounds=bounds)  # async: in flight during the bottom MLP
        return self.head(local.dense, pending.wait), local.labels

    def wrap_exchange(self, wrap) -> None:
        """Route the step's exchange calls through ``wrap(exchange)`` (the step-time breakdown)."""
        self.exchange = wrap(self.exchange)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-sized per-rank tensors in rank order (for evaluation metrics)."""
        parts = [torch.empty_like(tensor) for _ in range(self.env.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def mean(self, value: float) -> float:
        return self.means([value])[0]

    def means(self, values: list[float]) -> list[float]:
        """Element-wise mean over the ranks (one small all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.env.world_size).tolist()
