"""The link throughput to each class of peer (``compress.peers=auto``): a small timed all-to-all.

Why a probe, not the exchange's own transfers: one exchange carries both classes in one
collective, and its time includes the wait for the slowest peer's encode and compute, so it cannot
be split per class, and a compressed class's transfer says nothing about the raw bytes' time. The
probe sends to one class at a time (zero bytes to every other peer), after a barrier so every
rank starts together, and times the bytes alone. It is sized like the step's messages, clamped to
256 KiB - 4 MiB per peer (big enough that per-message latency does not dominate, small enough to
cost tens of milliseconds on the slowest link), and repeated: each repetition's time is the
slowest rank's (an all-to-all ends when its last rank does), and the fastest repetition is kept
(the one least disturbed by other work on the host).
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

CLASSES = ("local", "remote")  # this rank's node (itself included), other nodes
PROBE_MIN, PROBE_MAX = 256 << 10, 4 << 20  # bytes per peer
REPEATS = 3


def probe_size(message_bytes: float) -> int:
    """Bytes per peer for a probe of messages of ``message_bytes`` (the step's mean message)."""
    return int(min(max(message_bytes, PROBE_MIN), PROBE_MAX))


def class_peers(nodes: list[str], rank: int, cls: str) -> list[bool]:
    """Per rank: whether it is ``rank``'s peer of class ``cls`` (never ``rank`` itself)."""
    mine = nodes[rank]
    return [q != rank and (n == mine) == (cls == "local") for q, n in enumerate(nodes)]


def probe_link(transport, nodes: list[str] | None, size: int, repeats: int = REPEATS,
               sent: dict[str, int] | None = None) -> dict[str, float | None]:
    """Per class: bytes per second one rank sends to its peers of the class while every rank
    does at once. ``inf`` where no rank has a peer of the class but itself (nothing crosses a
    link: one rank per node, or one process, ``nodes`` None); None where the class is empty for
    every rank (one node: no remote class). Every rank returns the same values. ``sent``: the
    bytes this rank sent per class are added to it (the link benchmark accounts for them)."""
    if nodes is None or not hasattr(transport, "group"):
        return {"local": math.inf, "remote": None}
    rank, group = transport.rank, transport.group
    out: dict[str, float | None] = {}
    for cls in CLASSES:
        counts = [sum(class_peers(nodes, r, cls)) for r in range(len(nodes))]
        if not any(counts):
            out[cls] = math.inf if cls == "local" else None
            continue
        splits = [size if peer else 0 for peer in class_peers(nodes, rank, cls)]
        send = torch.zeros(sum(splits), dtype=torch.uint8, device=transport.device)
        times = torch.zeros(repeats, dtype=torch.float64, device=transport.device)
        for i in range(repeats):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            transport.exchange(send, splits, splits).wait()  # symmetric: what a peer sends, this rank receives
            if transport.device.type == "cuda":
                torch.cuda.synchronize(transport.device)
            times[i] = time.perf_counter() - t0
        if sent is not None:
            sent[cls] = sent.get(cls, 0) + repeats * len(send)
        dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
        out[cls] = max(counts) * size / max(float(times.min()), 1e-9)
    return out
