"""Where an exchange's messages go: one process with W virtual destinations, or a process group.

Both take the per-destination send buffers as one flat uint8 (or typed) tensor with host split
sizes and return what this process receives. The exchange above them is the same code.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class LoopbackTransport:
    """One process plays sender and all W receivers (what `compress.chunks=W` emulates): the
    message for destination q is what "rank q" receives, so the received list is the sent one."""

    def __init__(self, destinations: int, device: torch.device | str = "cpu"):
        if destinations < 1:
            raise ValueError(f"destinations must be >= 1, got {destinations}")
        self.destinations = destinations
        self.rank, self.world_size = 0, 1  # the real process group (gradient scaling)
        self.device = torch.device(device)

    def exchange_sizes(self, sizes: torch.Tensor) -> torch.Tensor:
        return sizes

    def exchange(self, send: torch.Tensor, in_splits: list[int], out_splits: list[int], async_op: bool = False):
        return _Done(send)


class ProcessGroupTransport:
    """gloo or NCCL: every tensor handed to a collective lives on the backend's device."""

    def __init__(self, group=None, device: torch.device | str = "cpu"):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.destinations = self.world_size
        self.device = torch.device(device)

    def exchange_sizes(self, sizes: torch.Tensor) -> torch.Tensor:
        """One small all-to-all of W int64 (device tensors)."""
        out = torch.empty_like(sizes)
        dist.all_to_all_single(out, sizes.to(self.device), group=self.group)
        return out

    def p2p(self, sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]]) -> None:
        """Point-to-point transfers issued together (``batch_isend_irecv``: safe on NCCL, where
        ungrouped sends and receives between two ranks can wait on each other), then waited on."""
        ops = [dist.P2POp(dist.isend, t.to(self.device), self._global(q), self.group) for t, q in sends]
        ops += [dist.P2POp(dist.irecv, t, self._global(p), self.group) for t, p in recvs]
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()

    def _global(self, peer: int) -> int:
        return peer if self.group is None else dist.get_global_rank(self.group, peer)

    def exchange(self, send: torch.Tensor, in_splits: list[int], out_splits: list[int], async_op: bool = False):
        out = torch.empty(sum(out_splits), dtype=send.dtype, device=self.device)
        work = dist.all_to_all_single(out, send.to(self.device), out_splits, in_splits, group=self.group,
                                      async_op=async_op)
        return _Pending(out, work) if async_op else _Done(out)


class _Done:
    """A finished transfer (torchrec's NoWait): ``wait()`` returns the received tensor."""

    def __init__(self, out: torch.Tensor):
        self.out = out

    def wait(self) -> torch.Tensor:
        return self.out


class _Pending:
    def __init__(self, out: torch.Tensor, work):
        self.out, self.work = out, work

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.out
