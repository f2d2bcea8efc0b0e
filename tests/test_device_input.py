"""The GPU step's discipline, held on the CPU: one copy of the batch per step (packed, the next
one staged ahead), and no host read of a tensor inside a training step outside print intervals."""
from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from dlrm_comp.compress import cpu_kernels
from dlrm_comp.data.batch import Batch
from dlrm_comp.data.device_input import DeviceInput, PackedLayout, pack, unpack
from dlrm_comp.train.loop import Trainer

QUIET = ("train.tensorboard=false", "train.eval_every=0", "train.checkpoint_every=0", "compress.print_tables=false")


def _batch(rows: int, bag_sizes: list[list[int]], dense: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    indices, offsets = [], []
    for sizes in bag_sizes:
        sizes_t = torch.tensor(sizes[:rows] + [1] * max(0, rows - len(sizes)), dtype=torch.int64)
        offsets.append(torch.cumsum(sizes_t, 0) - sizes_t)
        indices.append(torch.randint(0, 1 << 40, (int(sizes_t.sum()),), generator=g))
    return Batch(torch.randn(rows, dense, generator=g), indices, offsets,
                 torch.randint(0, 2, (rows,), generator=g).float())


def _same(a: Batch, b: Batch) -> bool:
    pairs = [(a.dense, b.dense), (a.labels, b.labels), *zip(a.indices, b.indices), *zip(a.offsets, b.offsets)]
    return len(a.indices) == len(b.indices) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 9), bags=st.lists(st.lists(st.integers(0, 4), max_size=9), min_size=1, max_size=5),
       dense=st.integers(0, 4))
def test_pack_then_unpack_gives_the_batch_back_exactly(rows, bags, dense):
    batch = _batch(rows, bags, dense)
    layout = PackedLayout.of(batch)
    buffer = torch.full((layout.nbytes + 5,), 0xAB, dtype=torch.uint8)  # longer than needed, dirty
    assert pack(batch, buffer) == layout
    assert all(f.offset % 8 == 0 for f in (layout.dense, layout.labels, *layout.indices, *layout.offsets))
    assert _same(unpack(buffer, layout), batch)


def test_pack_refuses_a_buffer_too_small():
    batch = _batch(4, [[1, 2, 1, 1]])
    with pytest.raises(ValueError, match="holds less than the batch's"):
        pack(batch, torch.empty(PackedLayout.of(batch).nbytes - 1, dtype=torch.uint8))


def test_one_copy_per_batch_and_the_next_one_staged_ahead():
    fetched = []

    def fetch(t):
        fetched.append(t)
        return _batch(6, [[t % 3 + 1] * 6, [1] * 6], seed=t)
    inputs = DeviceInput(fetch, torch.device("cpu"), pack=True)
    for t in range(5):
        host, device = inputs.get(t)
        if t < 4:
            inputs.prefetch(t + 1)
        assert _same(host, _batch(6, [[t % 3 + 1] * 6, [1] * 6], seed=t)) and _same(device, host)
        assert device.dense.untyped_storage().data_ptr() != host.dense.untyped_storage().data_ptr()
        assert fetched == list(range(min(t + 2, 5)))  # each batch fetched once, the next one ahead
    assert inputs.copies == 5
    inputs.prefetch(5)
    host, _ = inputs.get(9)  # a jump (a resume, a benchmark) drops what was staged
    assert _same(host, _batch(6, [[1] * 6, [1] * 6], seed=9)) and inputs.copies == 7 and not inputs.staged


def test_on_the_cpu_nothing_is_packed_or_copied():
    batch = _batch(3, [[1, 1, 1]])
    inputs = DeviceInput(lambda t: batch, torch.device("cpu"))
    inputs.prefetch(1)
    host, device = inputs.get(0)
    assert host is batch and device is batch and inputs.copies == 0


def test_a_run_through_the_packed_copy_equals_the_plain_one(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUIET, "compress.mode=codec", "compress.dedup=on", "train.iterations=12")
    plain = Trainer(cfg, tmp_path / "plain", handle_signals=False)
    plain.run()
    packed = Trainer(cfg, tmp_path / "packed", handle_signals=False)
    packed.inputs = DeviceInput(packed._train_batch, packed.device, pack=True)
    packed.run()
    assert packed.inputs.copies == 12  # one copy per step, none staged past the last one
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), packed.model.state_dict().items()):
        assert torch.equal(a, b), name


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host (`.item()`, `int()`, `float()`,
    `bool()`): on a GPU each one waits for the device."""

    def __init__(self):
        super().__init__()
        self.reads = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _count_host_copies(monkeypatch) -> collections.Counter:
    """Every `.numpy()`, `.tolist()` and `.cpu()` call, whatever the tensor: in a step without
    bag deduplication (whose ids are host arrays by design) none should happen at all."""
    calls = collections.Counter()
    for name in ("numpy", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("mode", ["off", "simulate", "fp16", "bf16", "fp8", "int8", "mx4"])
def test_a_training_step_reads_no_tensor_on_the_host(tiny_cfg, tmp_path, monkeypatch, mode):
    """Outside print intervals, a step of the modes whose sizes are known ahead makes no host read
    and no host copy of a tensor (the NaN/Inf policy on a device counts on the device;
    `passthrough` here, since on the CPU `error` checks at once, where a read is free). The
    quantizer takes its device path (torch ops), not the CPU's numba loops over numpy views."""
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    cfg = tiny_cfg(*QUIET, f"compress.mode={mode}", "compress.nonfinite=passthrough", "train.iterations=20",
                   "train.print_every=20")
    trainer = Trainer(cfg, tmp_path, handle_signals=False)
    trainer.inputs = DeviceInput(trainer._train_batch, trainer.device, pack=True)
    steps = trainer.steps()
    next(steps)  # the first step builds what is cached
    copies = _count_host_copies(monkeypatch)
    with HostReads() as counter:
        for _ in range(5):
            next(steps)
    steps.close()
    assert sum(counter.reads.values()) == 0, counter.reads
    assert sum(copies.values()) == 0, copies
