"""The exchange, one code path at W=1 and W>1: bounds, gradient semantics, backward compression in
one process, Req/Wait, host reads that do not grow with tables or destinations, and collectives
that only ever see tensors of their transport's device."""
from __future__ import annotations

import pytest
import torch

from dlrm_comp.compress.errors import NonFiniteError
from dlrm_comp.compress.modes import BYTE_MESSAGES, ERROR_BOUNDED, EXCHANGE_MODES
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport, destination_rows
from dlrm_comp.exchange import transport as transport_mod
from dlrm_comp.recorder import CompressionRecorder

MODES = ["off", "simulate", "codec", "sz", "fp16", "bf16", "fp8", "int8"]


def _pooled(t=5, b=24, d=4, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, d, generator=g) * 0.05).requires_grad_(requires_grad) for _ in range(t)]


def _exchange(mode="codec", t=5, w=2, bwd="off", eb=0.02, bwd_eb=0.01, recorder=None, **kw):
    plan = CompressionPlan(DirectionPlan(mode, t, eb_rel=[eb] * t, **kw), DirectionPlan(bwd, t, eb_rel=[bwd_eb] * t))
    return Exchange(LoopbackTransport(w), [0] * t, 4, plan, recorder)


def test_destination_rows_last_takes_remainder():
    assert destination_rows(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert destination_rows(8, 1) == [(0, 8)]
    with pytest.raises(ValueError):
        destination_rows(8, 0)


@pytest.mark.parametrize("w", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_every_destination_count(mode, w):
    pooled = _pooled(b=25)  # 25 rows: the last destination takes the remainder
    recorder = CompressionRecorder(5)
    ex = _exchange(mode, w=w, recorder=recorder)
    out = ex.forward(pooled, compress=True)
    assert [o.shape for o in out] == [p.shape for p in pooled]
    for p, o in zip(pooled, out):
        if mode == "off":
            assert torch.equal(o, p)
            continue
        for a, b in destination_rows(25, w):
            chunk = p[a:b].double()
            err = float((o[a:b].double() - chunk).abs().max())
            if mode in ("simulate", "codec", "sz"):
                assert err <= 0.02 * float(chunk.max() - chunk.min())
            else:
                assert err <= 0.05 * float(chunk.abs().max())  # fixed-rate: close, no bound
    recorder.flush(1, lambda *a, **k: None)
    summary = recorder.direction_summary("fwd", [10] * 5, None)
    if mode == "off":
        assert summary is None
    else:
        assert summary["bytes_raw"] == 5 * 25 * 4 * 4 and summary["bytes_sent"] > 0
        assert summary["cr"] > 1 or mode == "sz"  # SZ3 expands 8x4 chunks: they go raw, headers on top
        assert summary["estimated"] == (mode == "simulate")
        if mode in ("simulate", "codec", "sz"):
            assert summary["max_err_ratio"] <= 1.0


def test_off_gradient_is_the_identity_and_codec_straight_through():
    for mode in ("off", "codec"):
        pooled = _pooled(requires_grad=True)
        out = _exchange(mode, w=3)(pooled, compress=True)
        weights = [torch.randn_like(o) for o in out]
        sum((o * w).sum() for o, w in zip(out, weights)).backward()
        for p, w in zip(pooled, weights):
            assert torch.equal(p.grad, w)  # d x_hat / d x = I; exact backward by default


def test_backward_compression_in_one_process_does_what_it_says():
    """compress.mode=off with backward codec: the forward is exact, the gradients are compressed
    within their bound, and the recorder has the backward direction."""
    recorder = CompressionRecorder(5)
    pooled = _pooled(requires_grad=True)
    ex = _exchange("off", w=2, bwd="codec", recorder=recorder)
    out = ex(pooled, compress=True)
    assert all(torch.equal(o, p) for o, p in zip(out, pooled))
    grads = [torch.randn_like(o) for o in out]
    sum((o * g).sum() for o, g in zip(out, grads)).backward()
    for p, g in zip(pooled, grads):
        assert not torch.equal(p.grad, g)
        for a, b in destination_rows(24, 2):
            eb = 0.01 * float(g[a:b].max() - g[a:b].min())
            assert float((p.grad[a:b] - g[a:b]).abs().max()) <= eb
    recorder.flush(1, lambda *a, **k: None)
    assert recorder.direction_summary("bwd", [10] * 5, None)["cr"] > 1
    assert recorder.direction_summary("fwd", [10] * 5, None) is None


def test_request_wait_equals_one_call():
    ex = _exchange("codec", w=2, bwd="codec")
    a, b = _pooled(requires_grad=True, seed=4), _pooled(requires_grad=True, seed=4)
    one = ex(a, compress=True)
    pending = ex.start(b, compress=True)
    two = pending.wait()
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    w = [torch.randn_like(o) for o in one]
    sum((o * g).sum() for o, g in zip(one, w)).backward()
    sum((o * g).sum() for o, g in zip(two, w)).backward()
    assert all(torch.equal(x.grad, y.grad) for x, y in zip(a, b))


def test_backward_exchange_brackets_the_bottom_mlp_backward(monkeypatch):
    """With the Req/Wait split, autograd launches the gradient exchange before the bottom MLP's
    backward and finishes it after (the collectives are in flight meanwhile), as the model
    calls them: the request, the bottom MLP, the wait, one op over both."""
    ex = _exchange("codec", w=2, bwd="codec")
    events = []
    begin = ex.begin_backward

    def launched(*args, **kwargs):
        assert kwargs.get("async_op") is True
        events.append("launch")
        finish = begin(*args, **kwargs)
        return lambda: (events.append("finish"), finish())[1]
    monkeypatch.setattr(ex, "begin_backward", launched)
    bottom = torch.nn.Linear(3, 4)
    bottom.weight.register_hook(lambda g: events.append("bottom"))
    pooled = _pooled(requires_grad=True, seed=5)
    pending = ex.start(pooled, compress=True)
    x = bottom(torch.randn(24, 3))
    emb = pending.wait()
    (torch.cat([x, *emb], 1) ** 2).sum().backward()
    assert events == ["launch", "bottom", "finish"]
    ref = [p.detach().clone().requires_grad_() for p in pooled]
    one = _exchange("codec", w=2, bwd="codec")(ref, compress=True)
    (torch.cat([x.detach(), *one], 1) ** 2).sum().backward()
    assert all(torch.equal(p.grad, r.grad) for p, r in zip(pooled, ref))


@pytest.mark.parametrize("mode", [m for m in EXCHANGE_MODES if m != "off"])
def test_nonfinite_policy(mode):
    """Every codec counts NaN/Inf chunks and the exchange applies the one policy: 'error' stops,
    'passthrough' sends them (the error-bounded modes raw, so every other value arrives exactly)."""
    pooled = _pooled()
    pooled[1][3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        _exchange(mode).forward(pooled, compress=True)
    out = _exchange(mode, nonfinite="passthrough").forward(pooled, compress=True)
    assert torch.isnan(out[1][3, 2])
    if mode in ERROR_BOUNDED:
        chunk, sent = pooled[1][:12], out[1][:12]  # the chunk holding the NaN travels raw, exactly
        assert torch.equal(sent[~torch.isnan(sent)], chunk[~torch.isnan(chunk)])


class _Reads:
    """Counts host reads of tensors (item, tolist, __bool__, __int__, __float__)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def counted(self_, *a, _orig=orig, **k):
                self.count += 1
                return _orig(self_, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("mode", [m for m in EXCHANGE_MODES if m not in BYTE_MESSAGES])
def test_device_paths_have_no_host_read(monkeypatch, mode):
    """off/simulate/fixed-rate: sizes are known, statistics stay in device accumulators: no host
    read at all, whatever the number of tables and destinations."""
    exchanges = {(t, w): _exchange(mode, t=t, w=w, recorder=CompressionRecorder(t), nonfinite="passthrough")
                 for t in (2, 12) for w in (1, 4)}
    reads = _Reads(monkeypatch)
    for (t, w), ex in exchanges.items():
        pooled = _pooled(t=t, b=32, requires_grad=True)
        out = ex(pooled, compress=True)
        sum(o.sum() for o in out).backward()
    assert reads.count == 0


def test_codec_host_reads_do_not_grow(monkeypatch):
    """codec: one host read per direction (the receive splits), whatever the tables and
    destinations; the CPU stream coders (once per destination by design) are outside this count."""
    counts = {}
    for t in (2, 12):
        for w in (1, 4):
            ex = _exchange("codec", t=t, w=w, bwd="codec", recorder=CompressionRecorder(t))
            pooled = _pooled(t=t, b=32, requires_grad=True)
            out = ex(pooled, compress=True)
            sum(o.sum() for o in out).backward()
            counts[(t, w)] = ex.host_syncs
    assert set(counts.values()) == {2}


def test_collectives_only_see_their_transport_device(monkeypatch):
    """Every tensor handed to a collective is on the transport's device (a CUDA tensor for NCCL;
    checked here with a one-rank stand-in for the process group)."""
    seen = []

    def all_to_all_single(out, inp, out_splits=None, in_splits=None, group=None, async_op=False):
        seen.append((out.device, inp.device))
        out.copy_(inp)
        return None

    monkeypatch.setattr(transport_mod.dist, "all_to_all_single", all_to_all_single)
    monkeypatch.setattr(transport_mod.dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(transport_mod.dist, "get_world_size", lambda group=None: 1)
    for mode in MODES:
        t = 3
        plan = CompressionPlan(DirectionPlan(mode, t), DirectionPlan("codec" if mode != "off" else "off", t))
        tr = transport_mod.ProcessGroupTransport(group=None, device="cpu")
        ex = Exchange(tr, [0] * t, 4, plan)
        pooled = _pooled(t=t, b=8, requires_grad=True)
        out = ex(pooled, compress=True)
        sum(o.sum() for o in out).backward()
    assert seen and all(o == tr.device and i == tr.device for o, i in seen)


def test_training_one_process_and_chunks(tiny_cfg, tmp_path):
    """One process at chunks=1 and chunks=3 goes through the same exchange as torchrun does."""
    from dlrm_comp.train.loop import Trainer
    for chunks in (1, 3):
        cfg = tiny_cfg("compress.mode=codec", f"compress.chunks={chunks}", "compress.backward.mode=codec",
                       "train.iterations=20", "compress.print_tables=false", "data.batch_size=30")
        trainer = Trainer(cfg, tmp_path / str(chunks))
        summary = trainer.run()
        assert trainer.exchange.transport.destinations == chunks
        assert summary["compression"]["backward"]["cr"] > 1
        assert summary["compression"]["max_err_ratio"] <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_exchange_matches_cpu():
    pooled = _pooled()
    cpu = _exchange("codec", w=2).forward(pooled, compress=True)
    plan = CompressionPlan(DirectionPlan("codec", 5, eb_rel=[0.02] * 5), DirectionPlan("off", 5))
    gpu = Exchange(LoopbackTransport(2, "cuda"), [0] * 5, 4, plan).forward([p.cuda() for p in pooled], compress=True)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


def test_keep_large_allocations_applies_on_glibc():
    import sys

    from dlrm_comp.runtime import keep_large_allocations
    applied = keep_large_allocations()
    assert applied == sys.platform.startswith("linux")  # glibc's mallopt: the CI and dev machines


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["codec", "simulate", "sz"])
def test_other_dtypes_keep_their_dtype_and_bound(mode, dtype):
    """The receiver gets the sender's dtype, exactly what the sender verified (a float64 chunk
    of range 1e-9 would break its bound 50x if it were narrowed to float32 on the way)."""
    g = torch.Generator().manual_seed(7)
    base = 1.0 if dtype == torch.float64 else 0.0
    scale = 1e-9 if dtype == torch.float64 else 0.05
    pooled = [(base + torch.randn(16, 4, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(3)]
    pooled[1] = torch.full((16, 4), 1.5, dtype=dtype)  # a constant chunk
    out = _exchange(mode, t=3, w=2, eb=0.01).forward(pooled, compress=True)
    for p, o in zip(pooled, out):
        assert o.dtype == dtype
        for a, b in destination_rows(16, 2):
            chunk = p[a:b].double()
            assert float((o[a:b].double() - chunk).abs().max()) <= 0.01 * float(chunk.max() - chunk.min())


def test_tables_with_different_layouts_under_one_coder():
    pooled = _pooled(t=4)
    out = _exchange("codec", t=4, w=2, bitpack=[True, False, True, False]).forward(pooled, compress=True)
    for p, o in zip(pooled, out):
        for a, b in destination_rows(24, 2):
            chunk = p[a:b].double()
            assert float((o[a:b].double() - chunk).abs().max()) <= 0.02 * float(chunk.max() - chunk.min())


def test_decode_time_of_tables_owned_elsewhere_is_kept():
    import numpy as np
    rec = CompressionRecorder(2)
    rec.record_batch("fwd", np.array([0]), torch.tensor([0]), 64, torch.tensor([10.0]), None, None, 0.001, 0.0,
                     lambda: ([0.01, 0.01], ["a", "b"]), False)
    rec.add_decode_time("fwd", np.array([0, 1]), 0.002)
    interval = rec.take_interval()
    assert sum(t.dec_s for t in interval.values()) == pytest.approx(0.002)


def test_int8_rows_wider_than_the_float32_range_stay_finite():
    from dlrm_comp.compress.codecs.fixed import Int8Codec
    x = torch.tensor([[-3e38, 3e38, 1.0, 2.0]])
    y = Int8Codec().decode_rows(*Int8Codec().encode_rows(x, None, 1), None)
    assert torch.isfinite(y).all() and float(y[0, 1]) > 2.9e38


class _Work:
    """A collective in flight, completed by hand."""

    def __init__(self):
        self.future = torch.futures.Future()
        self.waited = False

    def get_future(self):
        return self.future

    def wait(self):
        self.waited = True
        self.future.set_result(None)


def test_a_transfer_that_depends_on_another_starts_when_that_one_completes():
    """``then``: the next transfer starts from the completion callback, before anyone waits (gloo
    on host tensors); a finished transfer starts it at once; the handle's wait gives its result."""
    calls = []

    def launch(received):
        calls.append(received.tolist())
        return transport_mod._Done(received * 2)
    work = _Work()
    handle = transport_mod._Pending(torch.tensor([3]), work).then(launch)
    assert calls == []
    work.future.set_result(None)  # gloo completes the collective: the callback launches
    assert calls == [[3]] and not work.waited
    assert handle.wait().tolist() == [6] and calls == [[3]]
    assert transport_mod._Done(torch.tensor([1])).then(launch).wait().tolist() == [2]


def test_only_a_chaining_transport_keeps_the_sizes_in_flight(monkeypatch):
    """Where the transport cannot chain (NCCL) the sizes are read at launch, so the bytes are
    in flight before the caller computes, as they were; gloo on host tensors keeps both in flight."""
    asked = []

    def all_to_all_single(out, inp, out_splits=None, in_splits=None, group=None, async_op=False):
        asked.append(async_op)
        out.copy_(inp)
        return _Work() if async_op else None
    monkeypatch.setattr(transport_mod.dist, "all_to_all_single", all_to_all_single)
    monkeypatch.setattr(transport_mod.dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(transport_mod.dist, "get_world_size", lambda group=None: 1)
    for backend, kept in (("nccl", False), ("gloo", True)):
        monkeypatch.setattr(transport_mod.dist, "get_backend", lambda group=None, b=backend: b)
        tr = transport_mod.ProcessGroupTransport(group=None, device="cpu")
        got = tr.exchange_sizes(torch.tensor([5]), async_op=True)
        assert isinstance(got, transport_mod._Pending if kept else transport_mod._Done) and asked[-1] is kept
