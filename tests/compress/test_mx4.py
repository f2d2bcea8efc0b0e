"""MX4 (OCP MXFP4): bit-exact against a float64 reference of the spec, exact on the E2M1 grid at
every scale, the per-element error bound, extreme magnitudes, the pinned byte layout, sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dlrm_comp.compress.mx4 import GROUP, GROUP_BYTES, dequantize_mx4, mx4_nbytes, quantize_mx4

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SIGNED = [*E2M1, *(-v for v in E2M1)]  # index = 4-bit code (bit 3 = sign)
MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
SPECIAL = [s * v for s in (1.0, -1.0) for v in (*E2M1, *MIDPOINTS, 7.0, 7.999, 6.5, 1e-3)]


# ---- reference: the spec, per element, in float64 --------------------------------------------
def ref_exponent(group: np.ndarray) -> int:
    """X = floor(log2(max|x|)) - 2, clamped to [-127, 127]; all-zero -> -127."""
    amax = float(np.abs(group).max())
    if amax == 0:
        return -127
    mant, e = math.frexp(amax)  # amax = mant * 2^e, mant in [0.5, 1): floor(log2) = e - 1
    return max(-127, min(127, e - 1 - 2))


def ref_e2m1(s: float) -> float:
    """Nearest E2M1 value to s, ties to the even code, saturated at +-6."""
    a = min(abs(s), 6.0)
    code = min(range(8), key=lambda i: (abs(a - E2M1[i]), i % 2))
    return math.copysign(E2M1[code], s)


def ref_roundtrip(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(decoded values, X per group) for x [G, 32] of float32 values."""
    x = x.astype(np.float64)
    exps = np.array([ref_exponent(g) for g in x], dtype=np.int64)
    out = [[ref_e2m1(v / 2.0 ** int(X)) * 2.0 ** int(X) for v in g] for g, X in zip(x, exps)]
    return np.array(out).reshape(x.shape), exps


def half_step_bound(s: np.ndarray) -> np.ndarray:
    """|decoded - x| / 2^X allowed for the scaled value s = x / 2^X, from the grid's definition.

    The grid has step 0.5 on [0, 2], 1 on [2, 4], 2 on [4, 6], so rounding to nearest is off by at
    most half of that: 0.25, 0.5, 1. Above 6 everything saturates to 6: off by |s| - 6, which is
    < 2 because max|s| = max|x| / 2^X < 8 by the choice of X (and < 4 when X is clamped at -127).
    """
    a = np.abs(s)
    return np.select([a <= 2, a <= 4, a <= 6], [0.25, 0.5, 1.0], default=a - 6)


@st.composite
def groups(draw, max_groups: int = 4) -> np.ndarray:
    """float32 [G, 32]: values in (-8, 8) or on grid / tie points, times 2^k per group, k spanning
    subnormal (down to 2^-150) to large scales (2^124 * 8 = 2^127 stays finite)."""
    g = draw(st.integers(1, max_groups))
    elem = st.one_of(st.floats(-8, 8, exclude_min=True, exclude_max=True), st.sampled_from(SPECIAL))
    base = draw(arrays(np.float64, (g, GROUP), elements=elem))
    k = draw(arrays(np.int64, (g, 1), elements=st.integers(-150, 124)))
    return (base * 2.0 ** k).astype(np.float32)


def roundtrip(x: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    q = quantize_mx4(torch.from_numpy(x))
    return q, dequantize_mx4(q).numpy()


def nibbles(q: torch.Tensor) -> torch.Tensor:
    p = q[:, :16].to(torch.int64)
    return torch.stack([p & 0xF, p >> 4], dim=2).reshape(-1, GROUP)


# ---- tests ------------------------------------------------------------------------------------
@given(x=groups())
def test_matches_reference_bit_for_bit(x):
    q, y = roundtrip(x)
    ref, exps = ref_roundtrip(x)
    assert q.dtype == torch.uint8 and q.shape == (x.shape[0], GROUP_BYTES)
    assert np.array_equal(q[:, -1].numpy().astype(np.int64), exps + 127)
    assert np.array_equal(y.astype(np.float64), ref)


def test_ties_round_to_even_and_saturate():
    x = torch.zeros(1, GROUP)
    vals = [7.0, *MIDPOINTS, 6.5, -7.999, -0.25, -0.75, -5.0]  # max 7 -> X = 0, s = x
    x[0, : len(vals)] = torch.tensor(vals)
    got = dequantize_mx4(quantize_mx4(x))[0, : len(vals)].tolist()
    assert got == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -6.0, -0.0, -1.0, -4.0]


def test_every_grid_value_at_every_scale_is_exact():
    ks = torch.arange(-127, 126)  # every X a finite float32 group can get (6 * 2^126 overflows)
    vals = torch.tensor(SIGNED * 2, dtype=torch.float64)  # 32 = 16 codes twice; 6 sets X = k
    x = (vals[None, :] * torch.exp2(ks.double())[:, None]).float()
    assert torch.equal(x.double(), vals[None, :] * torch.exp2(ks.double())[:, None])  # exact
    q = quantize_mx4(x)
    assert torch.equal(q[:, -1].long(), ks + 127)
    assert torch.equal(nibbles(q), torch.arange(16).repeat(2).expand(len(ks), -1))
    y = dequantize_mx4(q)
    assert torch.equal(y, x) and torch.equal(torch.signbit(y), torch.signbit(x))


@given(x=groups())
def test_error_within_half_grid_step(x):
    q, y = roundtrip(x)
    X = q[:, -1].numpy().astype(np.int64) - 127
    x64, scale = x.astype(np.float64), 2.0 ** X[:, None].astype(np.float64)
    err = np.abs(y.astype(np.float64) - x64)
    assert np.all(err <= half_step_bound(x64 / scale) * scale)
    # consequence: unless X is clamped at -127, every element is within max|x| / 4 of the input
    # (|s| <= 6: err <= 2^X <= amax / 4; |s| > 6: err = |x| - 6 * 2^X < amax - 6/8 * amax)
    amax = np.abs(x64).max(axis=1, keepdims=True)
    assert np.all((err <= amax / 4) | (X[:, None] == -127))


def test_zero_group_uses_smallest_exponent():
    q = quantize_mx4(torch.zeros(3, GROUP))
    assert torch.equal(q, torch.zeros(3, GROUP_BYTES, dtype=torch.uint8))  # X = -127, codes 0
    assert torch.equal(dequantize_mx4(q), torch.zeros(3, GROUP))


FMAX = torch.finfo(torch.float32).max  # ~3.4028e38


@pytest.mark.parametrize("scale", [1e-40, 1e-45, 1.2e-38, 3e38, FMAX])
def test_extreme_magnitudes_stay_finite(scale):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, GROUP, generator=g, dtype=torch.float64) * 2 - 1) * scale
    x[0, 0], x[1] = scale, 0.0
    x[1, 5] = -scale
    x = x.clamp(-FMAX, FMAX).float()
    q = quantize_mx4(x)
    y = dequantize_mx4(q)
    assert torch.isfinite(y).all() and (q[:, -1] != 255).all()
    ref, _ = ref_roundtrip(x.numpy())
    assert np.array_equal(y.double().numpy(), ref)
    if scale == FMAX:  # floor(log2) = 127 -> X = 125; the max saturates to 6 * 2^125
        assert q[0, -1] == 252 and y[0, 0] == 6 * 2.0**125


def test_byte_layout_pinned():
    head = [1.0, -0.5, 6.0, 3.0, -0.0, 0.75, -7.0, 5.0]  # max 7 -> X = 0
    x = torch.zeros(2, GROUP)
    x[0, :8] = torch.tensor(head)
    x[1] = x[0] * 2.0**-10
    q = quantize_mx4(x)
    # codes (low nibble first) 2, 9 | 7, 5 | 8 (-0), 2 (0.75 tie -> 1) | F (-7 -> -6), 6 (5 tie -> 4)
    body = [0x92, 0x57, 0x28, 0x6F] + [0] * 12
    assert q[0].tolist() == body + [127]
    assert q[1].tolist() == body + [117]
    y = dequantize_mx4(q)
    assert y[0, :8].tolist() == [1.0, -0.5, 6.0, 3.0, -0.0, 1.0, -6.0, 4.0]
    assert torch.equal(y[1], y[0] * 2.0**-10) and not y[:, 8:].any()


def test_nbytes():
    assert [mx4_nbytes(n) for n in (0, 1, 31, 32, 33, 64, 1000)] == [0, 17, 17, 17, 34, 34, 544]
    assert mx4_nbytes(32 * 1024) * 8 / (32 * 1024) == 4.25
    assert 32 * 1024 * 4 / mx4_nbytes(32 * 1024) > 7.5  # vs fp32
    with pytest.raises(ValueError):
        mx4_nbytes(-1)


def test_input_dtypes_and_output_dtype():
    x = torch.randn(8, GROUP, generator=torch.Generator().manual_seed(1)) * 100
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.equal(quantize_mx4(x.to(dt)), quantize_mx4(x.to(dt).float()))
    q = quantize_mx4(x)
    y = dequantize_mx4(q)
    assert torch.equal(dequantize_mx4(q, torch.float64), y.double())
    assert torch.equal(dequantize_mx4(q, torch.bfloat16), y.to(torch.bfloat16))


def test_non_finite_poisons_only_its_group():
    x = torch.ones(5, GROUP, dtype=torch.float64)
    x[0, 3], x[1, 0], x[2, 31], x[3, 7] = math.nan, math.inf, -math.inf, 1e300  # 1e300 -> inf
    q = quantize_mx4(x)
    assert (q[:4, -1] == 255).all() and not q[:4, :-1].any()  # E8M0 NaN, codes 0
    y = dequantize_mx4(q)
    assert torch.isnan(y[:4]).all() and torch.equal(y[4], torch.ones(GROUP))


def test_rejects_bad_shapes():
    for bad in (torch.zeros(GROUP), torch.zeros(2, 16), torch.zeros(2, GROUP, dtype=torch.int32)):
        with pytest.raises(ValueError):
            quantize_mx4(bad)
    for bad in (torch.zeros(2, GROUP_BYTES), torch.zeros(2, 16, dtype=torch.uint8)):
        with pytest.raises(ValueError):
            dequantize_mx4(bad)
    assert quantize_mx4(torch.zeros(0, GROUP)).shape == (0, GROUP_BYTES)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(2)
    k = torch.randint(-140, 120, (64, 1), generator=g)
    x = torch.randn(64, GROUP, generator=g) * torch.exp2(k.float())
    x[0], x[1, 0], x[2, 0] = 0.0, 3.4e38, math.nan
    q = quantize_mx4(x)
    q_cuda = quantize_mx4(x.cuda())
    assert q_cuda.is_cuda and torch.equal(q_cuda.cpu(), q)
    torch.testing.assert_close(dequantize_mx4(q_cuda).cpu(), dequantize_mx4(q), rtol=0, atol=0,
                               equal_nan=True)
