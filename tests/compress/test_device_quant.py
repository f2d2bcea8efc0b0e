"""The Triton quantizer (``compress/device/quant.py``) against the torch path, bit for bit: codes,
chunk tables, errors, reconstructions; the bound proved chunk by chunk; launches constant in
the number of chunks; the dispatch switch. See ``device_env`` for where the kernels run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from regimes import DTYPES, mixed_batches

from device_env import DEV, MARKS, on_dev  # noqa: I001  (sets TRITON_INTERPRET first)
from dlrm_comp.compress import batch_quant as bq
from dlrm_comp.compress import cpu_kernels
from dlrm_comp.compress.device import device_kernels, launches
from dlrm_comp.compress.device import quant as dq
from dlrm_comp.compress.kinds import ChunkKind

pytestmark = MARKS
TABLE = ("kind", "bits", "minimum", "step", "eb_abs", "ok", "err", "nonfinite")


def torch_path(x: torch.Tensor, eb, counts=None) -> bq.BatchQuant:
    """The eager torch ops of ``quantize_batch`` on the CPU (the reference arithmetic)."""
    saved = cpu_kernels.available
    cpu_kernels.available = lambda: False
    try:
        with device_kernels("torch"):
            return bq.quantize_batch(x.cpu(), eb, counts)
    finally:
        cpu_kernels.available = saved


def assert_identical(q: bq.BatchQuant, ref: bq.BatchQuant) -> None:
    for name in TABLE:
        a, b = getattr(q, name).cpu(), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a, b), (name, a, b)
    ok = ref.ok
    assert torch.equal(q.codes.cpu()[ok], ref.codes[ok])  # codes of other kinds mean nothing
    if q.x_hat is not None:
        assert torch.equal(q.x_hat.cpu()[ok], ref.x_hat[ok])
    same = torch.equal if not ref.x.isnan().any() else (lambda a, b: torch.allclose(a, b, 0, 0, equal_nan=True))
    assert same(q.received().cpu(), ref.received())


def assert_within_bound(q: bq.BatchQuant) -> None:
    """The receiver's values from the planes, every QUANT/CONST chunk within its verified bound."""
    x = q.x.cpu()
    y = dq.dequantize_planes(q.kind, q.minimum, q.step, q.bits, q.low, q.high, q.x, x.dtype).cpu()
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    for c in range(x.shape[0]):
        kind = int(q.kind[c])
        if kind == ChunkKind.RAW:
            assert torch.equal(y[c], x[c]) or x[c].isnan().any()
            continue
        err = float((y64[c] - x64[c]).abs().max())
        assert err <= float(q.eb_abs[c]) and (kind == ChunkKind.QUANT or err == 0.0)
        if kind == ChunkKind.QUANT:
            assert int(q.codes[c].max()) < 2 ** int(q.bits[c])


@st.composite
def batches(draw):
    """A mixed batch (`regimes.mixed_batches`) and a Triton block size."""
    x, eb = draw(mixed_batches(max_chunks=5, max_values=160))
    return x, eb, draw(st.sampled_from([16, 64, 2048]))


@settings(max_examples=40 if DEV.type == "cpu" else 12)  # on a GPU every new shape compiles
@given(batches())
def test_bit_identical_to_the_torch_path_and_within_the_bound(batch):
    x, eb, block = batch
    q = dq.quantize_batch(on_dev(x), torch.from_numpy(eb), block=block, x_hat=block == 64)
    assert_identical(q, torch_path(x, torch.from_numpy(eb)))
    assert_within_bound(q)


def test_regimes_every_kind_and_width():
    """Chunks that must come out QUANT at 8 and 16 bits, CONST, and RAW (NaN, Inf, zero bound,
    a step below float32's reciprocal range, more than 16 bits), in one batch of several blocks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 200, generator=g)
    fmax = float(torch.finfo(torch.float32).max)
    x[1] *= 1e3
    x[2] = 7.25
    x[3, 5] = float("nan")
    x[4, 0] = -float("inf")
    x[5] = torch.tensor([0.0, 1e-38, 2e-38, 5e-39]).repeat(50)
    x[6, :2] = torch.tensor([-fmax, fmax])
    x[7] = 1.0 + x[7] * 1e-7
    eb = torch.tensor([0.02, 1e-4, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 1e-7], dtype=torch.float64)
    q = dq.quantize_batch(on_dev(x), eb, block=64, x_hat=True)
    ref = torch_path(x, eb)
    assert_identical(q, ref)
    assert_within_bound(q)
    kinds, bits = q.kind.tolist(), q.bits.tolist()
    assert kinds[0] == ChunkKind.QUANT and bits[0] <= 8 and kinds[1] == ChunkKind.QUANT and bits[1] > 8
    assert kinds[2] == ChunkKind.CONST and kinds[3] == kinds[4] == kinds[5] == kinds[8] == ChunkKind.RAW
    assert int(q.nonfinite) == 2


def test_histograms_match_the_cpu_loops_and_skip_padding():
    """The byte-plane histograms (atomics) equal the numba loops' (padding excluded by counts),
    so ``entropy_bytes`` is the CPU path's; so do the travelling codes (the numba loop does not
    code the padding, which never travels)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 150, generator=g) * torch.tensor([[0.05], [3.0], [1.0], [0.2]])
    x[:, 120:] = x[:, :30]  # padding repeats the chunk's own values
    counts = np.array([150, 120, 150, 120])
    eb = torch.tensor([0.02, 1e-4, 0.01, 0.001], dtype=torch.float64)
    q = dq.quantize_batch(on_dev(x), eb, counts, block=32)
    cpu = bq.quantize_batch(x, eb, counts)  # numba
    assert torch.equal(q.hist.cpu().to(torch.int64), cpu.hist) and cpu.bits.max() > 8
    assert torch.allclose(q.entropy_bytes().cpu(), cpu.entropy_bytes(), rtol=1e-12, atol=1e-9)
    travels = torch.arange(150)[None, :] < torch.from_numpy(counts)[:, None]
    assert torch.equal(q.codes.cpu()[travels], cpu.codes[travels])
    assert not cpu.codes[~travels].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_reconstruction_is_bit_identical(dtype):
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(5, 100, generator=g) * torch.tensor([[0.1], [40.0], [1.0], [1.0], [1e-3]])).to(dtype)
    x[2] = 1.5
    x[3, 1] = float("inf")
    eb = torch.tensor([0.02, 1e-4, 0.01, 0.01, 0.3], dtype=torch.float64)
    ref = torch_path(x, eb)
    args = (ref.kind, ref.minimum, ref.step, ref.bits, ref.low, ref.high, x)
    y = dq.dequantize_planes(*(on_dev(a) for a in args), dtype, block=32).cpu()
    assert torch.equal(y, bq.dequantize_batch(ref.kind, ref.minimum, ref.step, ref.codes, x, dtype))
    with device_kernels("torch"):
        assert torch.equal(y, bq.dequantize_planes(*args, dtype))


def test_launches_are_constant_in_the_number_of_chunks():
    counts = []
    for c in (1, 6, 40):
        x = on_dev(torch.randn(c, 64))
        eb = torch.full((c,), 0.01, dtype=torch.float64)
        with launches.count() as quant:
            q = dq.quantize_batch(x, eb, block=64)
        with launches.count() as recon:
            dq.dequantize_planes(q.kind, q.minimum, q.step, q.bits, q.low, q.high, x, x.dtype)
        counts.append((quant.n, recon.n))
    assert counts == [(3, 1)] * 3


def test_the_switch_routes_quantize_batch():
    x = on_dev(torch.randn(3, 50) * 0.1)
    eb = torch.full((3,), 0.02, dtype=torch.float64)
    with device_kernels("triton"), launches.count() as c:
        q = bq.quantize_batch(x, eb)
        bq.dequantize_planes(q.kind, q.minimum, q.step, q.bits, q.low, q.high, x, x.dtype)
    assert c.n == 4
    with device_kernels("torch"), launches.count() as c:
        ref = bq.quantize_batch(x, eb)
    assert c.n == 0
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.kind, ref.kind)
    with device_kernels("auto"), launches.count() as c:
        bq.quantize_batch(x, eb)
    assert c.n == (3 if DEV.type == "cuda" else 0)  # auto: Triton on CUDA only


def test_the_switch_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("DLRM_COMP_DEVICE_KERNELS", "fast")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        bq.quantize_batch(torch.randn(2, 8), torch.full((2,), 0.01, dtype=torch.float64))


def test_quantize_throughput_reports_both_directions():
    """The microbenchmark's plumbing on a tiny batch (the figures themselves come from a GPU)."""
    from dlrm_comp.compress.device.throughput import quantize_throughput
    for impl in ("triton", "torch"):
        r = quantize_throughput(DEV, impl, chunks=3, n=256, repeat=1, rounds=1)
        assert r["impl"] == impl and r["shape"] == [3, 256] and r["quant_chunks"] == 3
        assert r["quantize_GBps"] > 0 and r["reconstruct_GBps"] > 0 and r["copy_GBps"] > 0
        assert r["triton_launches"] == ({"quantize": 3, "reconstruct": 1} if impl == "triton" else
                                        {"quantize": 0, "reconstruct": 0})
    with pytest.raises(ValueError, match="triton, torch, compile"):
        quantize_throughput(DEV, "numba")


@pytest.mark.cuda
@pytest.mark.skipif(DEV.type != "cuda", reason="the Terabyte step is too large for the interpreter")
def test_terabyte_step_on_cuda_matches_every_other_path():
    """52 chunks of 1024 x 64 (the Terabyte step's forward): compiled Triton on CUDA, the torch
    path on CUDA and the numba loops on the CPU give the same codes, tables and reconstruction."""
    from dlrm_comp.compress.device.throughput import step_batch
    x = step_batch("cpu")
    eb = torch.full((x.shape[0],), 0.02, dtype=torch.float64)
    with device_kernels("triton"):
        q = bq.quantize_batch(x.cuda(), eb.cuda())
        y = q.received()
    with device_kernels("torch"):
        eager = bq.quantize_batch(x.cuda(), eb.cuda())
    cpu = bq.quantize_batch(x, eb)
    for ref in (eager, cpu):
        for name in ("kind", "bits", "minimum", "step", "eb_abs", "err"):
            assert torch.equal(getattr(q, name).cpu(), getattr(ref, name).cpu()), name
        assert torch.equal(q.codes.cpu(), ref.codes.cpu()) and torch.equal(y.cpu(), ref.received().cpu())
    assert torch.equal(q.hist.cpu().to(torch.int64), cpu.hist)
