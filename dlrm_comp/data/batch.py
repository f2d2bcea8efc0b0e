"""The unit of data every model step consumes: dense features, EmbeddingBag inputs, labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One mini-batch in `nn.EmbeddingBag` layout (flat ids plus start offsets per table).

    Offsets (not per-row lists) so a model does one bag lookup per table, and so data-parallel
    ranks can cut a global batch with `slice` without re-generating it.
    """

    dense: torch.Tensor  # [B, num_dense] float32
    indices: list[torch.Tensor]  # per table: int64 flat ids of all bags in the batch
    offsets: list[torch.Tensor]  # per table: int64 [B], start of each row's bag in `indices`
    labels: torch.Tensor  # [B] float32 in {0., 1.}

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_tables(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy on `device` (tensors already there are reused, not copied)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.dense), [move(t) for t in self.indices], [move(t) for t in self.offsets],
                     move(self.labels))

    def slice(self, start: int, stop: int, host: Batch | None = None) -> Batch:
        """Rows [start, stop) with each table's offsets rebased to 0 (a data-parallel shard).
        ``host``: this batch's copy on the host, where the bags' bounds are read (a device batch
        read directly would cost a host sync per table)."""
        n = self.batch_size
        if not 0 <= start <= stop <= n:
            raise IndexError(f"Batch.slice({start}, {stop}) is outside a batch of {n} rows")
        indices, offsets = [], []
        bounds = host if host is not None else self
        for ids, offs, host_offs in zip(self.indices, self.offsets, bounds.offsets):
            begin = int(host_offs[start]) if start < n else int(ids.shape[0])
            end = int(host_offs[stop]) if stop < n else int(ids.shape[0])
            indices.append(ids[begin:end])
            offsets.append(offs[start:stop] - begin)
        return Batch(self.dense[start:stop], indices, offsets, self.labels[start:stop])

    def bag_sizes(self, table: int) -> torch.Tensor:
        """Items per row of one table ([B] int64), derived from the offsets."""
        offs, total = self.offsets[table], self.indices[table].shape[0]
        ends = torch.cat([offs[1:], offs.new_tensor([total])])
        return ends - offs


def concat_batches(parts: list[Batch]) -> Batch:
    """Rows of `parts` one after another (offsets rebased): pads an evaluation batch with repeats."""
    indices, offsets = [], []
    for t in range(parts[0].num_tables):
        base, ids, offs = 0, [], []
        for part in parts:
            ids.append(part.indices[t])
            offs.append(part.offsets[t] + base)
            base += int(part.indices[t].shape[0])
        indices.append(torch.cat(ids))
        offsets.append(torch.cat(offs))
    return Batch(torch.cat([p.dense for p in parts]), indices, offsets, torch.cat([p.labels for p in parts]))
