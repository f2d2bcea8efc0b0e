"""Pure-torch DLRM (no torchrec): embedding bags, bottom/top MLPs, dot or cat interaction.

Mirrors the upstream DLRM benchmark (facebookresearch/dlrm): MLPs given as dash strings, the top
MLP's input width derived from the interaction, upstream initialisation. The model ends in a
logit (the loss applies the sigmoid, which is numerically safer than upstream's sigmoid + BCE).

The seam for compression: `lookup` returns each table's pooled output `[B, d]` (what crosses the
embedding all-to-all, `dlrm_comp.exchange`), `head` is everything after it; `tap` passes the
pooled outputs through `self.pooled_hooks[i]` (identity unless attached, e.g. the benchmark's
dump taps).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import skip_init

from dlrm_comp.checks import parse_widths


def build_mlp(widths: Sequence[int], final_activation: bool, generator: torch.Generator) -> nn.Sequential:
    """Linear+ReLU layers with upstream's init: W ~ N(0, sqrt(2/(m+n))), b ~ N(0, sqrt(1/m)), drawn
    from `generator` (the global RNG stays untouched)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = skip_init(nn.Linear, n_in, n_out)
        with torch.no_grad():
            # the draws nn.Linear's default init would make, discarded: they keep the generator's
            # stream, and so every initial weight, what it was when the init ran on the global RNG
            linear.weight.uniform_(generator=generator)
            linear.bias.uniform_(generator=generator)
            linear.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=generator)
            linear.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=generator)
        layers.append(linear)
        if i < len(widths) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def interaction_width(kind: str, num_tables: int, emb_dim: int, bottom_out: int, self_interaction: bool) -> int:
    """Width of the interaction output, i.e. the top MLP's input (upstream's `num_int`)."""
    if kind == "cat":
        return bottom_out + num_tables * emb_dim
    n = num_tables + 1
    pairs = n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2
    return emb_dim + pairs


def initial_table(cardinality: int, dim: int, table: int, seed: int) -> torch.Tensor:
    """Upstream's U(-sqrt(1/n), sqrt(1/n)) from the table's own seeded generator: a table starts
    the same wherever it lives (any rank, either backend)."""
    bound = math.sqrt(1.0 / cardinality)
    generator = torch.Generator().manual_seed(seed * 1000003 + table + 1)
    return torch.rand((cardinality, dim), generator=generator) * (2 * bound) - bound


class DotInteraction(nn.Module):
    """Pairwise dot products of the bottom-MLP output and the pooled embeddings (lower triangle)."""

    def __init__(self, num_features: int, self_interaction: bool):
        super().__init__()
        offset = 0 if self_interaction else -1
        rows, cols = torch.tril_indices(num_features, num_features, offset=offset)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        z = torch.stack([dense, *pooled], dim=1)  # [B, T+1, d]
        gram = torch.bmm(z, z.transpose(1, 2))
        return torch.cat([dense, gram[:, self.rows, self.cols]], dim=1)


class CatInteraction(nn.Module):
    def forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([dense, *pooled], dim=1)


class DLRM(nn.Module):
    """`owned_tables` (default: all) are the tables this process holds: a model-parallel rank
    builds only its shard, and every table is initialised from its own seeded generator, so a
    table's initial weights do not depend on where it is placed. The MLPs draw from one generator
    seeded with `seed`: building a model leaves the global RNG as it was."""

    def __init__(self, cardinalities: Sequence[int], emb_dim: int, bottom_mlp: str, top_mlp: str,
                 interaction: str = "dot", self_interaction: bool = False, sparse: bool = False,
                 owned_tables: Sequence[int] | None = None, seed: int = 0):
        super().__init__()
        bottom = parse_widths("model.bottom_mlp", bottom_mlp)
        if interaction == "dot" and bottom[-1] != emb_dim:
            raise ValueError(f"bottom_mlp must end in emb_dim={emb_dim} for the dot interaction, got {bottom_mlp}")
        self.cardinalities = list(cardinalities)
        self.emb_dim = emb_dim
        self.owned_tables = list(range(len(self.cardinalities)) if owned_tables is None else owned_tables)
        self.embeddings = nn.ModuleList(
            nn.EmbeddingBag(self.cardinalities[t], emb_dim, mode="sum", sparse=sparse,
                            _weight=initial_table(self.cardinalities[t], emb_dim, t, seed))
            for t in self.owned_tables)
        generator = torch.Generator().manual_seed(seed)  # the dense layers' own stream
        self.bottom = build_mlp(bottom, final_activation=True, generator=generator)
        top_in = interaction_width(interaction, len(self.cardinalities), emb_dim, bottom[-1], self_interaction)
        top = parse_widths("model.top_mlp", top_mlp, example="512-256-1")
        self.top = build_mlp([top_in, *top], final_activation=False, generator=generator)
        self.interaction = DotInteraction(len(self.cardinalities) + 1, self_interaction) \
            if interaction == "dot" else CatInteraction()
        self.pooled_hooks = nn.ModuleList(nn.Identity() for _ in self.cardinalities)

    @property
    def num_tables(self) -> int:
        return len(self.cardinalities)

    def set_pooled_hooks(self, hooks: Sequence[nn.Module]) -> None:
        """Attach one module per table, applied to its pooled output `[B, d]` before the exchange (taps)."""
        if len(hooks) != self.num_tables:
            raise ValueError(f"need one hook per table ({self.num_tables}), got {len(hooks)}")
        self.pooled_hooks = nn.ModuleList(hooks)

    def lookup(self, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Pooled outputs `[B, d]` of the owned tables (inputs are given for all tables)."""
        return [table(indices[t], offsets[t]) for t, table in zip(self.owned_tables, self.embeddings)]

    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(dense, self.tap(self.lookup(indices, offsets)))

    def tap(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        """The pooled outputs through the attached per-table modules (identity unless attached)."""
        return [hook(p) for hook, p in zip(self.pooled_hooks, pooled)]

    def head(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Everything after the embedding exchange: bottom MLP, interaction, top MLP -> logits [B]."""
        x = self.bottom(dense)
        return self.top(self.interaction(x, pooled)).squeeze(1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [t.weight for t in self.embeddings]

    def dense_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]
