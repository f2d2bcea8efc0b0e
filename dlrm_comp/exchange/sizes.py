"""Sending byte messages whose sizes only the sender knows: the size protocol over a transport.

``exact``: W int64 sizes in one small all-to-all, one host read of the receive splits, then the
byte all-to-all. ``slots``: fixed per-pair slots instead of the size all-to-all; each pair's slot
is a capacity both sides compute from the sizes they already saw (``SlotSizer``), a message is
zero-padded to its slot, its real length travels in its preamble, and what exceeds the slot
follows point-to-point: one collective instead of two, the padding reported as ``bytes_pad``.

``send_device``: the device message path's (``compress/device_wire.py``) messages, already one
flat device tensor, their coded sizes a device tensor: the ``exact`` protocol, its one host read
taking the sent sizes and the receive splits together.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dlrm_comp.compress.device_wire import DeviceReceived
from dlrm_comp.compress.wire import PREAMBLE, message_length

SIZE_EXCHANGES = ("exact", "slots")


class MessageSender:
    """One exchange's byte-message transfers (both directions), with their costs counted:
    ``bytes_meta`` (size all-to-all bytes this process sent), ``bytes_pad`` (slot padding) and
    ``host_syncs`` (host reads of the protocol)."""

    def __init__(self, transport, size_exchange: str = "exact"):
        if size_exchange not in SIZE_EXCHANGES:
            raise ValueError(f"dist.size_exchange: must be exact or slots, got {size_exchange!r}")
        self.transport = transport
        self.loopback = not hasattr(transport, "group")
        self.size_exchange = size_exchange
        self._sizers: dict[str, SlotSizer] = {}
        self.bytes_meta = 0
        self.bytes_pad = 0
        self.host_syncs = 0

    def send(self, messages: list, direction: str, async_op: bool = False) -> Callable[[], list]:
        """Launch the transfer of one message per destination (bytes, or any flat byte buffer: a
        raw route's rows travel as a view of themselves); ``finish()`` -> the received ones.
        With ``async_op`` nothing here waits for the peers: the size all-to-all is in flight, and
        the byte all-to-all starts when the sizes arrive (``then``), so a peer still encoding
        costs this rank nothing until ``finish``."""
        if self.size_exchange == "slots" and not self.loopback:
            return self._send_slots(messages, direction, async_op)
        in_splits = [len(m) for m in messages]
        sizes = torch.tensor(in_splits, dtype=torch.int64)
        payload = joined(messages, in_splits)
        self.bytes_meta += 0 if self.loopback else 8 * len(messages)

        def launch(recv_sizes: torch.Tensor):
            out_splits = recv_sizes.tolist()  # the one host read of the protocol: the receive splits
            self.host_syncs += 1
            return _Split(self.transport.exchange(payload, in_splits, out_splits, async_op), out_splits)
        return self.transport.exchange_sizes(sizes.to(self.transport.device), async_op).then(launch).wait

    def send_device(self, payload: torch.Tensor, sizes: torch.Tensor, direction: str,
                    async_op: bool = False) -> tuple[list[int], Callable[[], DeviceReceived]]:
        """The device messages of one direction (``payload``: message after message from its
        start, on the transport's device; ``sizes`` their coded lengths, a device tensor): the W
        sizes in one small all-to-all, then one host read of the sizes and the receive splits
        together, then the byte all-to-all. The payload never leaves the device. Returns the sent
        sizes (host ints) and ``finish()``."""
        sizes = sizes.to(device=self.transport.device, dtype=torch.int64)  # gloo with CUDA rows: to the host
        recv_sizes = self.transport.exchange_sizes(sizes).wait()
        self.bytes_meta += 0 if self.loopback else 8 * sizes.numel()
        both = torch.cat([sizes, recv_sizes]).tolist()  # the one host read of the direction
        self.host_syncs += 1
        w = sizes.numel()
        in_splits, out_splits = both[:w], both[w:]
        handle = self.transport.exchange(payload[:sum(in_splits)], in_splits, out_splits, async_op)
        return in_splits, lambda: DeviceReceived(handle.wait(), out_splits)

    def _send_slots(self, messages: list[bytes], direction: str, async_op: bool) -> Callable[[], list]:
        messages = [m if isinstance(m, bytes) else bytes(m) for m in messages]  # slots cut and pad them
        sizer = self._sizers.setdefault(direction, SlotSizer(len(messages)))
        me, dev = self.transport.rank, self.transport.device
        caps_out, caps_in = sizer.send_caps(), sizer.recv_caps()
        caps_out[me] = caps_in[me] = 0  # this rank's own message stays local, whole
        slots = []
        for q, (m, cap) in enumerate(zip(messages, caps_out)):
            if q == me:
                slots.append(b"")
            elif len(m) <= cap:
                slots.append(m + bytes(cap - len(m)))
                self.bytes_pad += cap - len(m)
            else:  # the rest follows point-to-point (a cut preamble first, so the receiver learns the length)
                slots.append(m[:cap])
        handle = self.transport.exchange(as_tensor(b"".join(slots)), caps_out, caps_in, async_op)

        def finish() -> list:
            got = [bytes(v) for v in _Split(handle, caps_in).wait()]  # the one host read: the slots' preambles
            self.host_syncs += 1
            peers = [q for q in range(len(messages)) if q != me]
            # round 1: a slot smaller than a preamble sends the rest of the preamble first
            short_out = [q for q in peers if caps_out[q] < PREAMBLE]
            short_in = [p for p in peers if caps_in[p] < PREAMBLE]
            heads = {p: torch.empty(PREAMBLE - caps_in[p], dtype=torch.uint8, device=dev) for p in short_in}
            self.transport.p2p([(as_tensor(messages[q][caps_out[q]:PREAMBLE]), q) for q in short_out],
                               [(heads[p], p) for p in short_in])
            for p in short_in:
                got[p] += bytes(heads[p].cpu().numpy())
            # round 2: whatever exceeds max(slot, preamble), both sides now know how much
            lengths = [len(messages[me]) if p == me else message_length(got[p][:PREAMBLE]) for p in range(len(got))]
            sent_from = [max(c, PREAMBLE) for c in caps_out]
            recv_from = [max(c, PREAMBLE) for c in caps_in]
            rest_in = {p: torch.empty(lengths[p] - recv_from[p], dtype=torch.uint8, device=dev)
                       for p in peers if lengths[p] > recv_from[p]}
            self.transport.p2p([(as_tensor(messages[q][sent_from[q]:]), q) for q in peers
                                if len(messages[q]) > sent_from[q]], list((t, p) for p, t in rest_in.items()))
            received = []
            for p in range(len(got)):
                if p == me:
                    received.append(messages[me])
                elif p in rest_in:
                    received.append(got[p] + bytes(rest_in[p].cpu().numpy()))
                else:
                    received.append(got[p][:lengths[p]])
            sizer.update([len(m) for m in messages], lengths)
            return received
        return finish


class _Split:
    """The byte all-to-all in flight: ``wait()`` -> one host view per source, in rank order."""

    def __init__(self, handle, splits: list[int]):
        self.handle, self.splits = handle, splits

    def wait(self) -> list:
        host = host_bytes(self.handle.wait())
        starts = np.concatenate([[0], np.cumsum(self.splits)]).astype(np.int64)
        return [host[starts[p]:starts[p + 1]] for p in range(len(self.splits))]


def joined(messages: list, sizes: list[int]) -> torch.Tensor:
    """The messages back to back in one uint8 tensor: one copy of each (``b"".join`` and a
    writable tensor over it would be two)."""
    out = np.empty(sum(sizes), dtype=np.uint8)
    pos = 0
    for m, n in zip(messages, sizes):
        out[pos:pos + n] = np.frombuffer(m, dtype=np.uint8)
        pos += n
    return torch.from_numpy(out)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def host_bytes(out: torch.Tensor) -> memoryview:
    return memoryview(out.cpu().numpy() if out.device.type != "cpu" else out.numpy()).cast("B")


class SlotSizer:
    """Per-peer slot capacities for one direction, computed alike by both sides of every pair
    from the message sizes they have already seen (the sender its own, the receiver from the
    preambles), so no size travels ahead of the data: ``MARGIN`` x the largest of the last
    ``HISTORY`` sizes, rounded up to ``ALIGN`` bytes. It starts at 0: the first step's messages
    all follow point-to-point."""

    HISTORY, MARGIN, ALIGN = 8, 1.125, 64

    def __init__(self, peers: int):
        self.sent = [[] for _ in range(peers)]
        self.received = [[] for _ in range(peers)]

    def _cap(self, history: list[int]) -> int:
        if not history:
            return 0
        need = int(max(history[-self.HISTORY:]) * self.MARGIN)
        return -(-need // self.ALIGN) * self.ALIGN

    def send_caps(self) -> list[int]:
        return [self._cap(h) for h in self.sent]

    def recv_caps(self) -> list[int]:
        return [self._cap(h) for h in self.received]

    def update(self, sent: list[int], received: list[int]) -> None:
        for h, n in zip(self.sent + self.received, list(sent) + list(received)):
            h.append(n)
            del h[:-self.HISTORY]
