"""The input pipeline: a batch crosses to the device in one pinned, non-blocking copy, and the
next batch's copy is issued ahead on a side stream while this step computes.

Why: copying a `Batch` tensor by tensor from pageable memory is 2 + 2 x tables synchronous copies
per step (56 on the Criteo shape), each one stalling the host until the GPU has caught up; the
step was input-bound. This is the pattern of TorchRec's `TrainPipelineSparseDist`: pack the
batch's tensors into one host buffer (pinned on CUDA), copy it once, and read the device batch as
views into the copy. The host batch stays with the trainer for bag deduplication, which needs the
ids on the host. On the CPU the device is the host: nothing is packed or copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dlrm_comp.data.batch import Batch

ALIGN = 8  # every field starts on an 8-byte boundary, so a uint8 view can be re-viewed as int64


@dataclass(frozen=True)
class Field:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes into the packed buffer

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class PackedLayout:
    """Where each tensor of one batch sits in its packed buffer (from host shapes only)."""
    dense: Field
    labels: Field
    indices: tuple[Field, ...]
    offsets: tuple[Field, ...]
    nbytes: int

    @classmethod
    def of(cls, batch: Batch) -> PackedLayout:
        cursor = 0

        def place(t: torch.Tensor) -> Field:
            nonlocal cursor
            field = Field(t.dtype, tuple(t.shape), cursor)
            cursor += -(-field.nbytes // ALIGN) * ALIGN
            return field
        dense, labels = place(batch.dense), place(batch.labels)
        indices = tuple(place(t) for t in batch.indices)
        offsets = tuple(place(t) for t in batch.offsets)
        return cls(dense, labels, indices, offsets, max(cursor, ALIGN))


def _fields(batch: Batch, layout: PackedLayout):
    yield batch.dense, layout.dense
    yield batch.labels, layout.labels
    yield from zip(batch.indices, layout.indices)
    yield from zip(batch.offsets, layout.offsets)


def pack(batch: Batch, out: torch.Tensor) -> PackedLayout:
    """Write every tensor of the host `batch` into the uint8 buffer `out` (at least
    `PackedLayout.of(batch).nbytes` long); return where each one went."""
    layout = PackedLayout.of(batch)
    if out.numel() < layout.nbytes:
        raise ValueError(f"pack: a buffer of {out.numel()} bytes holds less than the batch's {layout.nbytes}")
    for tensor, field in _fields(batch, layout):
        if field.nbytes:
            out[field.offset:field.offset + field.nbytes].view(field.dtype).copy_(tensor.reshape(-1))
    return layout


def unpack(buffer: torch.Tensor, layout: PackedLayout) -> Batch:
    """The batch as views into `buffer` (a packed buffer on any device): no copy, no host read."""
    def view(field: Field) -> torch.Tensor:
        return buffer[field.offset:field.offset + field.nbytes].view(field.dtype).view(field.shape)
    return Batch(view(layout.dense), [view(f) for f in layout.indices], [view(f) for f in layout.offsets],
                 view(layout.labels))


class _Staged:
    """One batch on its way: the host batch, its layout, the device buffer and the copy's event."""
    __slots__ = ("host", "layout", "device_buffer", "done")

    def __init__(self, host, layout, device_buffer, done):
        self.host, self.layout, self.device_buffer, self.done = host, layout, device_buffer, done


class DeviceInput:
    """Batches by iteration, each as (host batch, device batch), one copy per batch.

    ``get(t)`` returns iteration t's batch (staged ahead, or staged now); ``prefetch(t + 1)``,
    called once step t's work is queued, fetches the next batch on the host and issues its copy on
    a side stream while the device is still busy with step t. ``pack=None`` packs whenever the
    device is not the CPU; tests force ``pack=True`` on the CPU to exercise the same packing and
    copy (``copies`` counts the copies made).
    """

    def __init__(self, fetch: Callable[[int], Batch], device: torch.device, pack: bool | None = None):
        self.fetch = fetch
        self.device = torch.device(device)
        self.packs = self.device.type != "cpu" if pack is None else pack
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self.slots: list[torch.Tensor | None] = [None, None]  # host staging buffers, used in turn
        self.slot_events: list = [None, None]  # the copy that last read each staging buffer
        self.next_slot = 0
        self.staged: dict[int, _Staged] = {}
        self.copies = 0

    def get(self, iteration: int) -> tuple[Batch, Batch]:
        if not self.packs:
            host = self.fetch(iteration)
            return host, host
        staged = self.staged.pop(iteration, None) or self._stage(iteration)
        self.staged.clear()  # a batch staged for another iteration (a jump: resume, benchmark) is dropped
        if self.cuda:  # this step's kernels run after the copy; the buffer stays alive until they finish
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.done)
            staged.device_buffer.record_stream(current)
        return staged.host, unpack(staged.device_buffer, staged.layout)

    def prefetch(self, iteration: int) -> None:
        """Stage ``iteration``'s batch now (its copy overlaps the device's work already queued)."""
        if self.packs and iteration not in self.staged:
            self.staged[iteration] = self._stage(iteration)

    def _stage(self, iteration: int) -> _Staged:
        host = self.fetch(iteration)
        nbytes = PackedLayout.of(host).nbytes
        slot = self.next_slot
        self.next_slot = 1 - slot
        if self.slot_events[slot] is not None:  # the copy that read this buffer two batches ago (long done)
            self.slot_events[slot].synchronize()
        buffer = self.slots[slot]
        if buffer is None or buffer.numel() < nbytes:
            buffer = self.slots[slot] = torch.empty(nbytes * 5 // 4, dtype=torch.uint8, pin_memory=self.cuda)
        layout = pack(host, buffer)
        if not self.cuda:
            device_buffer = buffer[:nbytes].to(self.device, copy=True)
            self.copies += 1
            return _Staged(host, layout, device_buffer, None)
        with torch.cuda.stream(self.stream):
            device_buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            device_buffer.copy_(buffer[:nbytes], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.slot_events[slot] = done
        self.copies += 1
        return _Staged(host, layout, device_buffer, done)
