"""Where an exchange's messages go: one process with W virtual destinations, or a process group.

Both take the per-destination send buffers as one flat uint8 (or typed) tensor with host split
sizes and return what this process receives. The exchange above them is the same code.
"""
from __future__ import annotations

import functools

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

    def exchange_sizes(self, sizes: torch.Tensor, async_op: bool = False):
        return _Done(sizes)

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

    @functools.cached_property
    def chains(self) -> bool:
        """gloo on host tensors completes its work on its own threads: a transfer that depends on
        another's result can start from that one's completion callback (``_Pending.then``)."""
        return self.device.type == "cpu" and dist.get_backend(self.group) == "gloo"

    def exchange_sizes(self, sizes: torch.Tensor, async_op: bool = False):
        """One small all-to-all of W int64 (device tensors); ``wait()`` on the result gives the
        received sizes, ``then(launch)`` starts what depends on them as soon as they arrive. In
        flight only where the transport ``chains``: elsewhere (NCCL) the sizes are read here, so
        the bytes that depend on them are in flight before the caller computes."""
        out = torch.empty_like(sizes)
        pending = async_op and self.chains
        work = dist.all_to_all_single(out, sizes.to(self.device), group=self.group, async_op=pending)
        return _Pending(out, work) if pending else _Done(out)

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
    """A finished transfer (torchrec's NoWait): ``wait()`` returns the received tensor;
    ``then(launch)`` calls ``launch(received)`` at once and returns its handle."""

    def __init__(self, out: torch.Tensor):
        self.out = out

    def wait(self) -> torch.Tensor:
        return self.out

    def then(self, launch):
        return launch(self.out)


class _Pending:
    """A transfer in flight. ``then(launch)`` (gloo on host tensors: ``exchange_sizes``):
    ``launch(received)``, which starts the next transfer and returns its handle, runs from the
    completion callback, as torch's PowerSGD hook launches its own collectives: the next one
    starts while the caller computes. Nothing else may start a collective on the group in
    between: every rank must launch its collectives in one order."""

    def __init__(self, out: torch.Tensor, work):
        self.out, self.work = out, work

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.out

    def then(self, launch):
        return _Chained(self.work.get_future().then(lambda _: launch(self.out)))


class _Chained:
    """The handle a completion callback returned, once it has run."""

    def __init__(self, future):
        self.future = future

    def wait(self):
        return self.future.wait().wait()
