"""The TorchRec side of `model.backend=torchrec` (written against torchrec 1.8.0 with
fbgemm-gpu-cpu 1.8.0 and torch 2.13.0): the tables as one `EmbeddingBagCollection` (fbgemm's
batched kernels), the `KeyedJaggedTensor` of a `Batch`, and the tables' initial weights.

Only the embeddings change backends: the dense part is the same `DLRM` (bottom MLP,
interaction, top MLP), and a table starts from `initial_table`, as in the pure-torch model, so
the two backends train the same numbers. This module imports torchrec lazily: the core runs
without it, and `missing_torchrec` tells the config what to install.
"""
from __future__ import annotations

import importlib.util
from typing import Sequence

import torch

from dlrm_comp.data.batch import Batch
from dlrm_comp.model.dlrm import initial_table

TORCHREC_VERSION = "1.8.0"  # the release this backend targets (its ShardedEmbeddingBagCollection internals)
INSTALL_HINT = ("install it with `make torchrec` (fbgemm-gpu-cpu and torchrec's needs under a torch==2.13.0 "
                "constraint, then torchrec==1.8.0 without dependencies; the [torchrec] extra alone cannot: "
                "torchrec's metadata pulls the CUDA build of fbgemm-gpu)")


def missing_torchrec() -> str | None:
    """Why the torchrec backend cannot run here, or None (no import: the check is cheap)."""
    absent = [name for name in ("torchrec", "fbgemm_gpu") if importlib.util.find_spec(name) is None]
    if absent:
        return f"needs torchrec {TORCHREC_VERSION} and fbgemm-gpu-cpu {TORCHREC_VERSION}, which are not " \
               f"installed ({', '.join(absent)} missing); {INSTALL_HINT}"
    return None


def table_name(table: int) -> str:
    return f"t{table}"


def feature_name(table: int) -> str:
    return f"f{table}"


def table_of_feature(name: str) -> int:
    return int(name[1:])


def embedding_bag_collection(cardinalities: Sequence[int], dim: int, device: torch.device | str = "meta"):
    """One sum-pooled table per feature; on the meta device by default, so DistributedModelParallel
    allocates each table only on its owner."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
    tables = [EmbeddingBagConfig(name=table_name(t), embedding_dim=dim, num_embeddings=n,
                                 feature_names=[feature_name(t)], pooling=PoolingType.SUM)
              for t, n in enumerate(cardinalities)]
    return EmbeddingBagCollection(tables=tables, device=torch.device(device))


def batch_to_kjt(batch: Batch):
    """The batch's ids as a KeyedJaggedTensor (keys `f0..f{T-1}`, lengths key-major), once per batch."""
    from torchrec import KeyedJaggedTensor
    lengths = torch.cat([batch.bag_sizes(t) for t in range(batch.num_tables)])
    return KeyedJaggedTensor(keys=[feature_name(t) for t in range(batch.num_tables)],
                             values=torch.cat(list(batch.indices)), lengths=lengths)


@torch.no_grad()
def initialise_tables(state: dict, cardinalities: Sequence[int], dim: int, seed: int, prefix: str) -> int:
    """Write `initial_table` into every local shard of a sharded EBC's state dict (its tensors are
    views of the kernels' weights); returns the number of shards written."""
    written = 0
    for t, n in enumerate(cardinalities):
        weight = state[f"{prefix}embedding_bags.{table_name(t)}.weight"]
        shards = weight.local_shards() if hasattr(weight, "local_shards") else []
        if not shards:
            continue
        full = initial_table(n, dim, t, seed)
        for shard in shards:
            (r0, c0), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(full[r0:r0 + h, c0:c0 + w])
            written += 1
    return written
