"""Table-wise placement of embedding tables on ranks: upstream's contiguous blocks, or balanced.

Every rank must own at least one table (upstream DLRM's constraint too).
"""
from __future__ import annotations

from typing import Sequence

from dlrm_comp.config import ConfigError

STRATEGIES = ("contiguous", "balanced")


def place_tables(cardinalities: Sequence[int], dim: int, world_size: int, strategy: str = "contiguous") -> list[int]:
    """Owner rank of each table."""
    n = len(cardinalities)
    if world_size > n:
        raise ConfigError(f"world size {world_size}: more ranks than embedding tables ({n}); "
                          "every rank must own at least one table")
    if strategy == "contiguous":
        # upstream get_my_slice: n // W tables each, the first n % W ranks take one more
        owners = []
        for rank in range(world_size):
            count = n // world_size + (1 if rank < n % world_size else 0)
            owners.extend([rank] * count)
        return owners
    if strategy == "balanced":
        # greedy longest-processing-time: biggest tables first, each onto the least-loaded rank
        load = [0] * world_size
        count = [0] * world_size
        owners = [0] * n
        order = sorted(range(n), key=lambda t: (-cardinalities[t], t))
        for i, t in enumerate(order):
            remaining = n - i
            empty = [r for r in range(world_size) if count[r] == 0]
            candidates = empty if len(empty) >= remaining else range(world_size)
            rank = min(candidates, key=lambda r: (load[r], r))
            owners[t] = rank
            load[rank] += cardinalities[t] * dim
            count[rank] += 1
        return owners
    raise ConfigError(f"dist.sharding: {strategy!r} is not one of: {', '.join(STRATEGIES)}")


def tables_of(owners: Sequence[int], rank: int) -> list[int]:
    return [t for t, r in enumerate(owners) if r == rank]
