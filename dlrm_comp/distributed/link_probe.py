"""The link throughput to each class of peer (``compress.peers=auto``): a timed all-to-all.

Why a probe, not the exchange's own transfers: one exchange carries both classes in one
collective, and its time includes the wait for the slowest peer's encode and compute, so it cannot
be split per class, and a compressed class's transfer says nothing about the raw bytes' time. The
probe sends to one class at a time (zero bytes to every other peer), after a barrier so every
rank starts together, and times the bytes alone.

Why the size grows: a link passes its first bytes faster than its rate (a token bucket's burst,
switch and socket buffers) and every transfer pays a fixed latency, so one short transfer's bytes
over time can say anything (measured on the link benchmark's 360 Mbit/s veth, whose ``tbf``
bursts 10 ms of its rate: 0.5 MB per peer timed as 1.6 Gbit/s). The probe doubles its size from
the step's mean message (at least 256 KiB a peer) until a transfer lasts ``MIN_SECONDS`` and
takes that transfer's rate: a burst of 10 ms of the rate then overstates it by at most a fifth,
and latency below a millisecond understates it by 2%. (The rate between the last two sizes
cancels both in theory, but on that link it scattered by +-40% from one probe to the next,
where the one transfer's rate stayed within 10%.) Each size is timed ``repeats`` times; a
repetition's time is the slowest rank's (an all-to-all ends when its last rank does) and the
fastest repetition is kept (the one least disturbed by other work on the host), so every rank
computes the same sizes and the same rate.
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

CLASSES = ("local", "remote")  # this rank's node (itself included), other nodes
PROBE_MIN, PROBE_MAX = 256 << 10, 4 << 20  # the first size per peer (the step's mean message, clamped)
PROBE_CAP = 64 << 20  # the largest size per peer
MIN_SECONDS = 0.05  # the timed transfer lasts this long at least: a burst is a small part of it
REPEATS = 2


def probe_size(message_bytes: float) -> int:
    """Bytes per peer for a probe of messages of ``message_bytes`` (the step's mean message)."""
    return int(min(max(message_bytes, PROBE_MIN), PROBE_MAX))


def class_peers(nodes: list[str], rank: int, cls: str) -> list[bool]:
    """Per rank: whether it is ``rank``'s peer of class ``cls`` (never ``rank`` itself)."""
    mine = nodes[rank]
    return [q != rank and (n == mine) == (cls == "local") for q, n in enumerate(nodes)]


def probe_link(transport, nodes: list[str] | None, size: int, repeats: int = REPEATS,
               sent: dict[str, int] | None = None, clock=time.perf_counter) -> dict[str, float | None]:
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
        peers = class_peers(nodes, rank, cls)

        def timed(per_peer: int) -> float:
            splits = [per_peer if peer else 0 for peer in peers]
            send = torch.zeros(sum(splits), dtype=torch.uint8, device=transport.device)
            times = torch.zeros(repeats, dtype=torch.float64, device=transport.device)
            for i in range(repeats):
                dist.barrier(group=group)
                t0 = clock()
                transport.exchange(send, splits, splits).wait()  # symmetric: what a peer sends, this rank receives
                if transport.device.type == "cuda":
                    torch.cuda.synchronize(transport.device)
                times[i] = clock() - t0
            if sent is not None:
                sent[cls] = sent.get(cls, 0) + repeats * len(send)
            dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
            return float(times.min())
        per_peer, seconds = size, timed(size)
        while seconds < MIN_SECONDS and 2 * per_peer <= PROBE_CAP:  # the same on every rank: the times are reduced
            per_peer *= 2
            seconds = timed(per_peer)
        out[cls] = max(counts) * per_peer / max(seconds, 1e-9)
    return out
