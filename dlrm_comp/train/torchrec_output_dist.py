"""Our compressed exchange as the output distribution of TorchRec's table-wise sharded
EmbeddingBagCollection (torchrec 1.8.0).

Why a replacement output dist, not a codec: TorchRec's quantized comms (`QCommsConfig`, the
`QuantizedCommCodec` registry) size every all-to-all split as `calc_quantized_size(n)`, a fixed
function of the element count, computed before encoding. An error-bounded payload's size is
known only after encoding and differs per (table, destination), so it needs its own
collective (sizes first, then bytes), which is what `Exchange` does. The sharded EBC keeps
TorchRec's input dist (the KeyedJaggedTensor all-to-all) and its fbgemm lookup; only the module
in `ShardedEmbeddingBagCollection._output_dists` for the table-wise sharding is swapped for
`ExchangeOutputDist`, which hands the owner's pooled tables to our `Exchange` (per-table bounds,
variable-size payloads, backward compression, recorder and controller all as in the pure-torch
backend) and returns what TorchRec's `TwPooledEmbeddingDist` would: this rank's rows of every
feature, `[B_local, sum D]`, in the sharding's rank-major feature order.

`_output_dists` is private in TorchRec: `install_exchange` checks the shapes it relies on
(one table-wise sharding, names per rank matching the collection's) and fails loudly if a
TorchRec release moves them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.distributed.types import Awaitable, NoWait

from dlrm_comp.model.torchrec_backend import TORCHREC_VERSION, table_of_feature


class ExchangeOutputDist(nn.Module):
    """`forward(local_embs [B, D_local], sharding_ctx) -> Awaitable[[B_local, sum D]]`, TorchRec's
    output-dist contract, through our Exchange (differentiable: its backward is the gradient
    exchange, scaled by 1/W as TorchRec's gradient division does)."""

    def __init__(self, exchange, names_per_rank: Sequence[Sequence[str]], dim: int, overlap: bool):
        super().__init__()
        self.exchange = exchange
        self.dim = dim
        self.overlap = overlap
        rank = 0 if exchange.loopback else exchange.rank
        self.local_tables = [table_of_feature(n) for n in names_per_rank[rank]]  # columns of local_embs
        self.out_tables = [table_of_feature(n) for names in names_per_rank for n in names]
        if sorted(self.local_tables) != list(exchange.mine):
            raise ValueError(f"TorchRec placed tables {sorted(self.local_tables)} on rank {rank}, "
                             f"the exchange expects {list(exchange.mine)}")
        self.compress = True  # set per step by the caller: evaluation batches are never compressed
        self.bags = None  # the global batch's ids on the host, set per step: bag deduplication
        self.bounds = None  # the step's StepBounds, set per step

    def forward(self, local_embs: torch.Tensor, sharding_ctx=None):
        if sharding_ctx is not None and getattr(sharding_ctx, "variable_batch_per_feature", False):
            raise NotImplementedError("variable batch per feature is not supported by the compressed exchange")
        by_table = dict(zip(self.local_tables, local_embs.split(self.dim, dim=1)))
        pooled = [by_table[t] for t in self.exchange.mine]
        if self.overlap:
            return _Received(self.exchange.start(pooled, compress=self.compress, bags=self.bags,
                                                  bounds=self.bounds).wait,
                             self.out_tables)
        return NoWait(_assemble(self.exchange(pooled, compress=self.compress, bags=self.bags, bounds=self.bounds), self.out_tables))


def _assemble(received: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    return torch.cat([received[t] for t in order], dim=1)


class _Received(Awaitable):
    """A started exchange (upstream DLRM's Req/Wait split): waited on when the dense part reads
    the embeddings, after the bottom MLP."""

    def __init__(self, wait, order: list[int]):
        super().__init__()
        self._wait, self._order = wait, order

    def _wait_impl(self) -> torch.Tensor:
        return _assemble(self._wait(), self._order)


def install_exchange(sharded_ebc, exchange, dim: int, overlap: bool) -> ExchangeOutputDist:
    """Swap the table-wise sharding's output dist of a `ShardedEmbeddingBagCollection` for ours."""
    types = list(sharded_ebc._sharding_types)
    if types != ["table_wise"]:
        raise ValueError(f"the compressed output dist needs a table-wise plan only, got {types} "
                         f"(torchrec {TORCHREC_VERSION} internals)")
    sharding = sharded_ebc._embedding_shardings[0]
    names_per_rank = sharding.embedding_names_per_rank()
    flat = [n for names in names_per_rank for n in names]
    if flat != list(sharded_ebc._embedding_names):
        raise ValueError(f"torchrec {TORCHREC_VERSION}: the output features {sharded_ebc._embedding_names} "
                         f"are not the rank-major order {flat} this output dist produces")
    dist = ExchangeOutputDist(exchange, names_per_rank, dim, overlap)
    sharded_ebc._output_dists[0] = dist
    return dist
