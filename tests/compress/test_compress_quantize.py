from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from compress_strategies import DTYPES, EBS, chunks

from dlrm_comp.compress.errors import NonFiniteError
from dlrm_comp.compress.quantize import (
    ChunkKind,
    codes_from_bytes,
    codes_to_bytes,
    dequantize,
    quantize,
    tensor_from_bytes,
    tensor_to_bytes,
)

def _err(x, y):
    return float((x.double() - y.double()).abs().max())


@settings(max_examples=300, deadline=None)
@given(x=chunks(), eb=EBS)
def test_bound_holds_after_cast(x, eb):
    q = quantize(x, eb)
    y = dequantize(q)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert _err(x, y) <= q.eb_abs
    rng = float(x.double().max() - x.double().min())
    assert q.eb_abs <= eb * rng
    if q.kind == ChunkKind.QUANT:
        assert q.step < 2 * q.eb_abs and int(q.codes.max()) < 256 ** q.width
        # the receiver's path from bytes gives the same tensor
        codes = codes_from_bytes(codes_to_bytes(q), q.width, q.numel)
        assert torch.equal(dequantize(type(q)(**{**q.__dict__, "codes": codes})), y)


def test_constant_chunk_exact_never_nan():
    x = torch.full((8, 8), 3.25)
    q = quantize(x, 1e-2)
    assert q.kind == ChunkKind.CONST and torch.equal(dequantize(q), x)


def test_near_float_limits():
    x = torch.tensor([3.4e38, -3.4e38, 0.0, 1.0])
    for eb in (1e-5, 1e-2, 0.5):
        q = quantize(x, eb)
        assert _err(x, dequantize(q)) <= q.eb_abs and not torch.isnan(dequantize(q)).any()


@pytest.mark.parametrize("target,width", [(255, 1), (256, 2), (65535, 2), (65536, 4)])
def test_code_width_boundaries(target, width):
    """Choose eb so the top code is exactly `target`: width must switch exactly there, no overflow."""
    x = torch.linspace(0, 1, 4 * target + 1, dtype=torch.float64)
    # step = 2*eb*(1-2^-20) rounded; solve so round(1/step) == target
    eb = 1.0 / (2 * target * (1 - 2.0**-20))
    q = quantize(x, eb)
    assert q.kind == ChunkKind.QUANT and q.max_code == target and q.width == width
    assert _err(x, dequantize(q)) <= q.eb_abs


def test_eb_1e5_gives_uint16():
    q = quantize(torch.randn(4096), 1e-5)
    assert q.width == 2 and 49_000 < q.max_code <= 51_000  # ~1/(2*eb) + 1, step trimmed for the fp32 cast


def test_nonfinite_raise_and_passthrough():
    x = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    with pytest.raises(NonFiniteError, match="2 non-finite"):
        quantize(x, 1e-2)
    q = quantize(x, 1e-2, nonfinite="passthrough")
    assert q.is_raw and q.nonfinite == 2
    assert torch.equal(torch.nan_to_num(dequantize(q)), torch.nan_to_num(x))
    with pytest.raises(ValueError, match="nonfinite"):
        quantize(x, 1e-2, nonfinite="ignore")


def test_invalid_inputs():
    with pytest.raises(ValueError, match="eb_rel"):
        quantize(torch.randn(4), 0.0)
    with pytest.raises(ValueError, match="eb_rel"):
        quantize(torch.randn(4), 0.7)
    with pytest.raises(TypeError, match="not supported"):
        quantize(torch.arange(4), 0.1)


def test_codes_relative_to_minimum_not_offset():
    q = quantize(torch.randn(1024) * 0.05 + 5.0, 1e-2)
    assert q.width == 1 and q.max_code <= 51


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_bytes_roundtrip(dtype):
    x = torch.randn(5, 3).to(dtype)
    assert torch.equal(tensor_from_bytes(tensor_to_bytes(x), dtype, (5, 3)), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(64, 64) * 0.05 + 1000
    qc, qg = quantize(x, 1e-3), quantize(x.cuda(), 1e-3)
    assert qg.codes.is_cuda
    assert torch.equal(dequantize(qg).cpu(), dequantize(qc))
    assert np.array_equal(codes_to_bytes(qc), codes_to_bytes(qg))


@pytest.mark.parametrize("width,n", [(1, 1000), (2, 100), (2, 5000), (4, 50)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lut_dequantize_equals_formula(width, n, dtype):
    """The CPU table lookup is the wire formula dtype(min + code*step) in float64, bit for bit."""
    from dlrm_comp.compress.quantize import _NP_CODE, dequantize_np

    g = torch.Generator().manual_seed(width * n)
    codes = torch.randint(0, min(256 ** width, 2**31) - 1, (n,), generator=g, dtype=torch.int64)
    for mn, step in ((-0.123456789, 0.00123456789), (1e6 + 0.1, 3.3e-3), (-3e38, 1e34)):
        ref = (codes.to(torch.float64) * step + mn).to(dtype)
        got = dequantize_np(codes.numpy().astype(_NP_CODE[width]), mn, step, np.dtype(str(dtype).split(".")[1]))
        assert torch.equal(torch.from_numpy(got), ref)
