"""One rank of a `model.backend=torchrec` run (torchrec 1.8.0): the tables as one
EmbeddingBagCollection sharded table-wise by DistributedModelParallel, the same data-parallel
dense part as the pure-torch backend (`DenseHead` under DDP), and between them either
TorchRec's own output dist (`off`, `torchrec_qcomm:*`) or our compressed `Exchange`
(`dlrm_comp.train.torchrec_output_dist`).

Same contract as `ModelParallel`: every rank reads the same global batch, feeds TorchRec the
KeyedJaggedTensor of its rows `[r*B/W, (r+1)*B/W)`, and gets back its rows of every table.
The plan is ours by default (`dist.sharding`'s placement as a `ShardingPlan`) or TorchRec's
planner constrained to table-wise (`dist.torchrec_plan=planner`); either way our exchange and
our checkpoints use the owners the plan chose. The embedding optimizer is fbgemm's fused one
(exact SGD or exact Adagrad, applied in the backward), the dense one torch's, as before.
One process (plain `python launch/train.py`) runs the same code on a one-rank gloo group, with
the exchange on the loopback transport (`compress.chunks` virtual destinations). The dense
head's DDP has a process group of its own: TorchRec's output dist runs on the default group, and
PowerSGD (`dist.allreduce_compression`) launches collectives from completion callbacks, in no
fixed order with the backward's all-to-all on one group (`train/powersgd.py`).

Runs on gloo on CPU (fbgemm-gpu-cpu); the NCCL/CUDA path is written (devices follow
`train.device`) but unverified here: fbgemm-gpu-cpu has no CUDA kernels.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dlrm_comp.config import ConfigError, RunConfig
from dlrm_comp.data.batch import Batch
from dlrm_comp.distributed.env import DistEnv
from dlrm_comp.distributed.sharding import place_tables
from dlrm_comp.exchange import LoopbackTransport, ProcessGroupTransport, destination_rows
from dlrm_comp.model import DLRM
from dlrm_comp.model.torchrec_backend import (
    batch_to_kjt,
    embedding_bag_collection,
    feature_name,
    initialise_tables,
    table_name,
)
from dlrm_comp.train.builders import build_model
from dlrm_comp.train.powersgd import bucket_kwargs
from dlrm_comp.train.parallel import DenseHead, ModelParallel, check_divisible

EBC = "ebc"  # the collection's name inside the module DistributedModelParallel wraps


class Embeddings(nn.Module):
    """The module DMP shards: only the collection (the dense part stays ours, under our DDP)."""

    def __init__(self, cardinalities: list[int], dim: int):
        super().__init__()
        self.ebc = embedding_bag_collection(cardinalities, dim)

    def forward(self, kjt):
        return self.ebc(kjt)


def fused_params(cfg: RunConfig) -> dict[str, Any]:
    """fbgemm's fused optimizer with torch's arithmetic: exact (not row-wise) SGD or Adagrad."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    if cfg.train.optimizer == "sgd":
        return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": cfg.train.lr}
    return {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": cfg.train.lr, "eps": 1e-10}


def sharding_plan(cfg: RunConfig, module: Embeddings, sharder, cardinalities: list[int], world: int,
                  device: torch.device, group):
    """Table-wise ShardingPlan: `dist.sharding`'s owners, or TorchRec's planner (table-wise only)."""
    from torchrec.distributed.types import ShardingPlan
    if cfg.dist.torchrec_plan == "ours":
        from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
        owners = place_tables(cardinalities, cfg.model.emb_dim, world, cfg.dist.sharding)
        per_table = {table_name(t): table_wise(rank=o, compute_kernel="fused") for t, o in enumerate(owners)}
        module_plan = construct_module_sharding_plan(module.ebc, per_table, sharder=sharder, local_size=world,
                                                     world_size=world, device_type=device.type)
        return ShardingPlan({EBC: module_plan})
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    constraints = {table_name(t): ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])
                   for t in range(len(cardinalities))}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=device.type),
                                       constraints=constraints)
    return planner.collective_plan(module, [sharder], group)


def plan_owners(plan, num_tables: int) -> list[int]:
    module_plan = plan.plan[EBC]
    return [module_plan[table_name(t)].ranks[0] for t in range(num_tables)]


class TorchrecModelParallel(ModelParallel):
    """`forward(batch, training) -> (logits, labels)` of this rank's rows, as `ModelParallel`."""

    def __init__(self, cfg: RunConfig, env: DistEnv, cardinalities: list[int], device: torch.device,
                 extensions=()):
        if cfg.train.threads:  # fbgemm's own OpenMP runtime reads this when torchrec first loads it
            os.environ.setdefault("OMP_NUM_THREADS", str(cfg.train.threads))
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.types import ShardingEnv

        from dlrm_comp.train.torchrec_qcomm import QCommExtension
        self.env = _process_group(env)
        world = self.env.world_size
        check_divisible(cfg, world)
        self.device, self.overlap, self.num_tables = device, cfg.dist.overlap, len(cardinalities)
        self.dense = build_model(cfg, cardinalities, owned_tables=[]).to(device)  # the same dense DLRM
        found = next((e for e in extensions if e.name == "compression"), None)
        self.qcomm = found if isinstance(found, QCommExtension) else None
        sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(cfg),
                                                qcomm_codecs_registry=self._qcomm_registry(cfg, device))
        module = Embeddings(cardinalities, cfg.model.emb_dim)
        group = dist.GroupMember.WORLD
        plan = sharding_plan(cfg, module, sharder, cardinalities, world, device, group)
        self.owners = plan_owners(plan, len(cardinalities))
        if not set(range(world)) <= set(self.owners):
            raise ConfigError(f"dist.torchrec_plan: the plan leaves a rank without tables (owners {self.owners}); "
                              "every rank must own at least one table")
        self.dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(group), device=device,
                                            plan=plan, sharders=[sharder], init_data_parallel=False)
        initialise_tables(self.dmp.state_dict(), cardinalities, cfg.model.emb_dim, cfg.train.seed, f"{EBC}.")
        self.output_dist = self.exchange = None
        if found is not None and self.qcomm is None:  # ours: the exchange becomes the output dist
            self._install_exchange(cfg, found, device)
        ids = [device.index] if device.type == "cuda" else None
        head = DenseHead(self.dense)
        # DDP's collectives on a group of their own, apart from TorchRec's on WORLD: PowerSGD launches
        # its later ones from completion callbacks, in no fixed order with the backward's all-to-all
        self.head = DistributedDataParallel(head, device_ids=ids, broadcast_buffers=False,
                                            process_group=dist.new_group(backend=self.env.backend),
                                            **bucket_kwargs(cfg.dist.allreduce_compression, head))
        self.model = TorchrecDLRM(self.dense, self.dmp, cardinalities)

    def _qcomm_registry(self, cfg: RunConfig, device: torch.device):
        """TorchRec's codecs (counted) for `torchrec_qcomm:*`, else None (its plain fp32 all-to-all)."""
        if self.qcomm is None:
            return None
        from dlrm_comp.train.torchrec_qcomm import counting_registry
        q = self.qcomm
        fp8 = [m for m in (q.fwd_mode, q.bwd_mode) if m.endswith(":fp8")]
        if fp8 and device.type == "cpu":
            raise ConfigError(f"compress.mode: {fp8[0]!r} has no CPU kernel in fbgemm-gpu-cpu "
                              "(\"fp8 is not supported by CPU\"); use fp16, bf16 or int8 here, fp8 on CUDA")
        registry, q.codecs = counting_registry(q.fwd_mode, q.bwd_mode, cfg.model.emb_dim, device)
        q.device = device
        return registry

    def wrap_exchange(self, wrap) -> None:
        """Our exchange, where it is the output dist, called through ``wrap(exchange)``; TorchRec's
        own output dist (``off``, ``torchrec_qcomm:*``) is not ours to wrap."""
        if self.exchange is not None:
            self.exchange = self.output_dist.exchange = wrap(self.exchange)

    def _install_exchange(self, cfg: RunConfig, compression, device: torch.device) -> None:
        """Our Exchange (the compression extension's plan and recorder) as the collection's output
        dist: over the process group, or the loopback transport in one process."""
        from dlrm_comp.train.torchrec_output_dist import install_exchange
        transport = LoopbackTransport(cfg.compress.chunks, device) if self.env.world_size == 1 else \
            ProcessGroupTransport(dist.new_group(backend=self.env.backend), device)
        self.exchange = compression.build_exchange(transport, self.owners, cfg.model.emb_dim, cfg.dist.size_exchange)
        self.output_dist = install_exchange(getattr(self.dmp.module, EBC), self.exchange, cfg.model.emb_dim,
                                            cfg.dist.overlap)

    def forward(self, batch: Batch, training: bool, bags: Batch | None = None,
                bounds=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of this rank's slice (``bags``: the global batch's ids on the host,
        for bag deduplication in our exchange; ``bounds``: the step's ``StepBounds``)."""
        rows = destination_rows(batch.batch_size, self.env.world_size)
        if len(rows) != self.env.world_size:
            raise ValueError(f"batch of {batch.batch_size} rows cannot be split over {self.env.world_size} ranks")
        start, stop = rows[self.env.rank]
        local = batch.slice(start, stop, host=bags)
        if self.output_dist is not None:  # evaluation batches are never compressed
            self.output_dist.compress = training
            self.output_dist.bags = bags if training else None
            self.output_dist.bounds = bounds if training else None
        if self.qcomm is not None:
            self.qcomm.set_training(training)
        keyed = self.dmp(batch_to_kjt(local))  # lazy: waited on when the dense part reads it

        def pooled() -> list[torch.Tensor]:
            tables = keyed.to_dict()
            return [tables[feature_name(t)] for t in range(self.num_tables)]
        return self.head(local.dense, pooled if self.overlap else pooled()), local.labels

    def wrap_optimizer(self, dense_optimizer: torch.optim.Optimizer) -> "TorchrecOptimizer":
        return TorchrecOptimizer(dense_optimizer, self.dmp.fused_optimizer)


def _process_group(env: DistEnv) -> DistEnv:
    """The run's group; one process gets a one-rank gloo group, so DMP runs the same code."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if env.distributed:
        return env
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=env.local_rank,
                   launcher=env.launcher, backend=env.backend or "gloo")


class TorchrecDLRM(nn.Module):
    """What the trainer holds as its model: the dense DLRM's parameters (the ones torch's
    optimizer steps) and, in `state_dict`, this rank's tables as plain tensors under the
    pure-torch model's names (`embeddings.{table}.weight`, global table index), copied out of
    and back into the sharded collection's own state dict (its tensors are the kernel's weights)."""

    def __init__(self, dense: DLRM, dmp, cardinalities: list[int]):
        super().__init__()
        self.dense = dense
        self.__dict__["dmp"] = dmp  # not a submodule: its weights are stepped by the fused optimizer
        self.cardinalities = list(cardinalities)

    def train(self, mode: bool = True) -> "TorchrecDLRM":
        super().train(mode)
        self.dmp.train(mode)
        return self

    def _shards(self) -> dict[str, torch.Tensor]:
        """Live local tables (whole tables: the plan is table-wise)."""
        out = {}
        for key, value in self.dmp.state_dict().items():
            if not key.startswith(f"{EBC}.embedding_bags.") or not hasattr(value, "local_shards"):
                continue
            for shard in value.local_shards():
                table = int(key.split(".")[2][1:])
                if list(shard.metadata.shard_offsets) != [0, 0] or shard.tensor.shape[0] != self.cardinalities[table]:
                    raise ValueError(f"{key}: a partial shard {shard.metadata}; the plan must be table-wise")
                out[f"embeddings.{table}.weight"] = shard.tensor
        return out

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        state = dict(self.dense.state_dict())
        state.update({k: v.detach().clone() for k, v in self._shards().items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        live = self._shards()
        tables = {k: v for k, v in state.items() if k.startswith("embeddings.")}
        if strict and set(tables) != set(live):
            raise KeyError(f"checkpoint tables {sorted(tables)} are not this rank's {sorted(live)}")
        for key, value in tables.items():
            live[key].copy_(value)
        return self.dense.load_state_dict({k: v for k, v in state.items() if k not in tables}, strict=strict)


class TorchrecOptimizer:
    """torch's optimizer for the dense part plus the fused embedding optimizer (it stepped in the
    backward already); one state dict, the fused part as plain local tensors."""

    def __init__(self, dense: torch.optim.Optimizer, fused):
        self.dense, self.fused = dense, fused

    @property
    def param_groups(self):
        return self.dense.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "fused": _local(self.fused.state_dict()["state"])}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        _copy_into(self.fused.state_dict()["state"], state["fused"], "fused optimizer state")


def _local(obj):
    """A state dict with every ShardedTensor replaced by its local shards' tensors (copies)."""
    if hasattr(obj, "local_shards"):
        return [s.tensor.detach().clone() for s in obj.local_shards()]
    if isinstance(obj, dict):
        return {k: _local(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    return obj


def _copy_into(live, saved, where: str) -> None:
    if hasattr(live, "local_shards"):
        shards = live.local_shards()
        if len(shards) != len(saved):
            raise ValueError(f"{where}: {len(saved)} saved shards for {len(shards)} live ones")
        for shard, value in zip(shards, saved):
            shard.tensor.copy_(value)
    elif isinstance(live, dict):
        if set(live) != set(saved):
            raise KeyError(f"{where}: saved keys {sorted(saved)} differ from {sorted(live)}")
        for k in live:
            _copy_into(live[k], saved[k], f"{where}.{k}")
    elif isinstance(live, torch.Tensor):
        live.copy_(saved)
