"""The batched quantizer: every chunk of a batch within its own bound, whatever the batch mixes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from regimes import DTYPES, mixed_batches

from dlrm_comp.compress.batch_quant import BatchQuant, dequantize_batch, quantize_batch, round_down_f32
from dlrm_comp.compress.kinds import ChunkKind



def _check(x: torch.Tensor, eb_rel: np.ndarray, q: BatchQuant) -> None:
    """The guarantee: every decoded chunk within eb_abs <= eb_rel * (max - min), elementwise."""
    y = dequantize_batch(q.kind, q.minimum, q.step, q.codes, x, x.dtype)
    assert torch.equal(y, q.received(), ) or torch.allclose(y, q.received(), equal_nan=True, rtol=0, atol=0)  # bit-exact rebuild
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    for c in range(x.shape[0]):
        kind = int(q.kind[c])
        row = x64[c]
        if kind == ChunkKind.RAW:
            assert torch.equal(y[c], x[c]) or (torch.isnan(row).any())
            continue
        rng = float(row.max() - row.min())
        eb_abs = float(q.eb_abs[c])
        assert eb_abs <= eb_rel[c] * rng
        err = float((y64[c] - row).abs().max())
        assert err <= eb_abs
        if kind == ChunkKind.CONST:
            assert err == 0.0
        else:
            assert kind == ChunkKind.QUANT
            assert int(q.codes[c].min()) >= 0 and int(q.codes[c].max()) < 2 ** int(q.bits[c])


@settings(max_examples=150)
@given(mixed_batches())
def test_every_chunk_within_its_bound(batch):
    x, eb = batch
    _check(x, eb, quantize_batch(x, torch.from_numpy(eb)))


def test_chunks_are_independent_of_their_neighbours():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, generator=g)
    x[2] *= 1e4  # a wide chunk beside narrow ones
    eb = torch.tensor([0.01, 0.02, 0.001, 0.05], dtype=torch.float64)
    q = quantize_batch(x, eb)
    for c in range(4):
        alone = quantize_batch(x[c:c + 1], eb[c:c + 1])
        assert torch.equal(alone.codes[0], q.codes[c]) and float(alone.step[0]) == float(q.step[c])
    assert q.bits.tolist()[2] > 8 and q.bits.tolist()[0] <= 6


def test_tiny_range_falls_back_to_raw_without_error():
    x = torch.tensor([[0.0, 1e-38, 2e-38, 5e-39]], dtype=torch.float32)
    q = quantize_batch(x, torch.tensor([0.01], dtype=torch.float64))
    assert int(q.kind[0]) == ChunkKind.RAW  # the bound 1e-40 is not a usable step: raw, not OverflowError
    _check(x, np.array([0.01]), q)


def test_near_overflow_and_constant_and_empty():
    fmax = float(torch.finfo(torch.float32).max)
    x = torch.tensor([[-fmax, fmax, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float32)
    q = quantize_batch(x, torch.tensor([0.01, 0.01], dtype=torch.float64))
    assert int(q.kind[1]) == ChunkKind.CONST
    _check(x, np.array([0.01, 0.01]), q)
    empty = quantize_batch(torch.zeros(3, 0), torch.full((3,), 0.01, dtype=torch.float64))
    assert empty.kind.tolist() == [ChunkKind.RAW] * 3


def test_nonfinite_chunks_are_counted_and_raw():
    x = torch.randn(3, 16)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    q = quantize_batch(x, torch.full((3,), 0.01, dtype=torch.float64))
    assert q.kind.tolist() == [ChunkKind.QUANT, ChunkKind.RAW, ChunkKind.RAW] and int(q.nonfinite) == 2


def test_round_down_f32():
    v = torch.tensor([0.1, 1.0, 3.5e38, 1e-46, -0.1], dtype=torch.float64)
    r = round_down_f32(v)
    assert (r <= v).all() and torch.equal(r.to(torch.float32).to(torch.float64), r)
    assert float(r[2]) == float(torch.finfo(torch.float32).max)


def test_cpu_params_match_the_device_formula():
    """The CPU batch evaluates its per-chunk parameters with numpy; the device uses torch: same
    formula, same results (checked here with the torch path forced on CPU tensors)."""
    from dlrm_comp.compress import batch_quant as bq
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 128, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 8, dtype=torch.float64)[:, None]
    mn, mx = x.amin(1), x.amax(1)
    eb = torch.full((8,), 0.013, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64, torch.float16):
        a = bq.chunk_params(bq._Numpy, mn.numpy(), mx.numpy(), eb.numpy(), 128, dtype)
        b = bq.chunk_params(bq._Torch, mn, mx, eb, 128, dtype)
        for k in a:
            assert np.array_equal(np.asarray(a[k]).astype(np.float64), b[k].numpy().astype(np.float64)), k


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 512, generator=g) * 0.05
    eb = torch.full((16,), 0.02, dtype=torch.float64)
    a, b = quantize_batch(x, eb), quantize_batch(x.cuda(), eb.cuda())
    assert torch.equal(a.codes, b.codes.cpu()) and torch.equal(a.received(), b.received().cpu())


def test_fused_cpu_path_matches_the_torch_path(monkeypatch):
    """The numba loops and the device-agnostic torch ops: the same codes, kinds, parameters,
    reconstruction and entropy, bit for bit (the torch path forced on the same CPU batch)."""
    from dlrm_comp.compress import cpu_kernels
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 300, generator=g) * torch.logspace(-4, 4, 12)[:, None]
    x[3] = 2.0
    x[5, 7] = float("nan")
    x[7] *= 1e-39
    eb = torch.tensor([1e-2, 1e-3, 1e-5, 0.05, 0.5, 0.01, 0.02, 0.01, 1e-4, 0.03, 0.2, 0.01], dtype=torch.float64)
    fused = quantize_batch(x, eb)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    eager = quantize_batch(x, eb)
    for name in ("kind", "bits", "minimum", "step", "eb_abs", "ok"):
        assert torch.equal(getattr(fused, name), getattr(eager, name)), name
    ok = eager.ok
    assert torch.equal(fused.codes[ok], eager.codes[ok]) and torch.equal(fused.err, eager.err)
    assert torch.allclose(fused.received(), eager.received(), rtol=0, atol=0, equal_nan=True)  # bit for bit
    assert torch.allclose(fused.entropy_bytes()[ok], eager.entropy_bytes()[ok], rtol=1e-12, atol=1e-9)


@settings(max_examples=80)
@given(mixed_batches(max_chunks=8, max_values=96), st.data())
def test_ragged_chunks_quantize_as_their_padded_batch_and_decode_within_their_bound(batch, data):
    """Chunks of different row counts lying back to back (bag deduplication's layout):
    ``quantize_ragged`` gives every kind, parameter, error, entropy and travelling code of the
    padded path, and the codec's host round trip through wire messages (``reconstruct``'s fused
    loop) keeps every value within its chunk's bound (RAW chunks exact), in every regime."""
    from hypothesis import assume

    from dlrm_comp.compress.batch_quant import quantize_ragged, ragged_ready
    from dlrm_comp.compress.codecs.base import ChunkLayout, pad_chunks
    from dlrm_comp.compress.codecs.quant import QuantCodec
    from dlrm_comp.compress.lossless import CodecCache
    from dlrm_comp.exchange.plan import DirectionPlan
    x, eb = batch
    assume(x.dtype != torch.float64)  # float16/bfloat16 values are float32 values
    x = x.to(torch.float32)
    assert ragged_ready(x.device, x.dtype)
    c, n = x.shape
    d = data.draw(st.sampled_from([d for d in (1, 2, 4) if d <= n]))
    rows = np.array([data.draw(st.integers(1, n // d)) for _ in range(c)], dtype=np.int64)
    flat = torch.cat([x[k, :rows[k] * d] for k in range(c)]).view(-1, d)
    eb_t = torch.from_numpy(eb)
    ragged = quantize_ragged(flat, rows, d, eb_t)
    chunks, counts = pad_chunks(flat, rows, d)
    padded = quantize_batch(chunks, eb_t, counts)
    for name in ("kind", "bits", "minimum", "step", "eb_abs", "ok", "err", "nonfinite"):
        assert torch.equal(getattr(ragged, name), getattr(padded, name)), name
    assert torch.equal(ragged.entropy_bytes()[padded.ok], padded.entropy_bytes()[padded.ok])
    at = np.concatenate([[0], np.cumsum(rows * d)])
    for k in np.flatnonzero(padded.ok.numpy()):
        m = int(rows[k] * d)
        assert torch.equal(ragged.low[at[k]:at[k + 1]], padded.low[k, :m])
        assert torch.equal(ragged.high[at[k]:at[k + 1]], padded.high[k, :m])

    layout = ChunkLayout([list(range(c))], [rows], [(0, int(rows.max()))], d, True)
    plan = DirectionPlan("codec", c, message_path="host")
    sent = QuantCodec(plan, CodecCache()).encode(flat, eb_t, layout)
    y = QuantCodec(plan, CodecCache()).decode(sent.messages, layout, torch.float32).to(torch.float64)
    x64 = flat.to(torch.float64)
    for k in range(c):
        a, b = int(at[k] // d), int(at[k + 1] // d)
        if int(ragged.kind[k]) == ChunkKind.RAW:
            assert torch.equal(y[a:b].isnan(), x64[a:b].isnan())
            assert torch.equal(y[a:b].nan_to_num(), x64[a:b].nan_to_num())
        else:
            assert float((y[a:b] - x64[a:b]).abs().max()) <= float(ragged.eb_abs[k])


def test_ragged_quantizer_takes_no_chunks_and_refuses_rows_that_do_not_add_up():
    """A rank that sends no chunk quantizes nothing; rows that are not the chunks' sum are an
    error before any loop reads past them."""
    from dlrm_comp.compress.batch_quant import quantize_ragged
    q = quantize_ragged(torch.zeros(0, 4), np.zeros(0, np.int64), 4, torch.zeros(0, dtype=torch.float64))
    assert q.kind.numel() == 0 and q.low.numel() == 0
    with pytest.raises(ValueError, match="quantize_ragged"):
        quantize_ragged(torch.zeros(5, 4), np.array([2, 2]), 4, torch.full((2,), 0.01, dtype=torch.float64))


@settings(max_examples=80, deadline=None)
@given(mixed_batches(max_chunks=12, max_values=64), st.integers(0, 3))
def test_the_compiled_float32_params_are_the_formula_bit_for_bit(batch, empty):
    """``cpu_kernels.chunk_params_f32`` (the fused CPU quantizer's parameters, one compiled call)
    against ``chunk_params`` in torch, the device formula: every parameter equal bit for bit on
    every regime (zero, tiny and constant ranges, magnitudes near overflow, subnormals, NaN/Inf),
    chunks without values included."""
    from dlrm_comp.compress import batch_quant as bq, cpu_kernels
    if not cpu_kernels.available():
        pytest.skip("numba not installed")
    x, eb = batch
    x, eb = x.to(torch.float32), np.asarray(eb, dtype=np.float64)
    c, n = x.shape
    counts = np.full(c, n, np.int64)
    counts[:min(empty, c)] = 0  # chunks without values: never QUANT or CONST
    mn, mx = x.amin(1).numpy(), x.amax(1).numpy()
    out = [np.empty(c, np.float64) for _ in range(5)] + [np.empty(c, np.int64), np.empty(c, np.uint8)]
    cpu_kernels.chunk_params_f32(mn, mx, eb, counts, *out)
    minimum, step, safe_step, max_code, eb_abs, bits, flags = out
    ref = bq.chunk_params(bq._Torch, torch.from_numpy(mn).double(), torch.from_numpy(mx).double(),
                          torch.from_numpy(eb), torch.from_numpy(counts), torch.float32)
    got = {"min": minimum, "step": step, "safe_step": safe_step, "max_code": max_code, "eb_abs": eb_abs, "bits": bits,
           "finite": flags & 1 != 0, "const": flags & 2 != 0, "valid": flags & 4 != 0}
    for k, v in got.items():
        assert np.array_equal(v, ref[k].numpy().astype(v.dtype), equal_nan=True), k


def test_one_bound_serves_every_chunk_on_the_compiled_and_the_torch_path(monkeypatch):
    """A single relative bound is every chunk's, as in the torch formula: the compiled
    parameters broadcast it rather than read past it, and a bound list of the wrong length is
    an error, not garbage bounds."""
    from dlrm_comp.compress import cpu_kernels
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(8))
    one = torch.tensor([0.01], dtype=torch.float64)
    each = quantize_batch(x, one.expand(4).contiguous())
    for eb in (one, one[0]):
        got = quantize_batch(x, eb)
        assert torch.equal(got.kind, each.kind) and torch.equal(got.eb_abs, each.eb_abs)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert torch.equal(quantize_batch(x, one).eb_abs, each.eb_abs)
    monkeypatch.undo()
    with pytest.raises(ValueError):
        quantize_batch(x, torch.tensor([0.01, 0.02], dtype=torch.float64))
