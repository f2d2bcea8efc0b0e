"""The Triton fixed-rate kernels (``compress/device/fixed.py``) against their torch definitions,
byte for byte and value for value: MX4 groups, int8 rowwise records, fp8 records and scales,
and the codecs' own encode/decode through the switch. See ``device_env``."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from device_env import DEV, MARKS, on_dev  # noqa: I001  (sets TRITON_INTERPRET first)
from dlrm_comp.compress import mx4
from dlrm_comp.compress.codecs.base import ChunkLayout, chunk_ids
from dlrm_comp.compress.codecs.fixed import Fp8Codec, Int8Codec, Mx4Codec
from dlrm_comp.compress.device import device_kernels, launches
from dlrm_comp.compress.device import fixed as dk

pytestmark = MARKS
F32_MAX = float(torch.finfo(torch.float32).max)
EXAMPLES = 40 if DEV.type == "cpu" else 12  # on a GPU every new shape compiles


def torch_ref(fn, *args):
    with device_kernels("torch"):
        return fn(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN where NaN)."""
    a = a.cpu()
    if a.is_floating_point():
        return a.dtype == b.dtype and torch.equal(a.view(torch.int32 if a.element_size() == 4 else torch.int16),
                                                  b.view(torch.int32 if b.element_size() == 4 else torch.int16))
    return torch.equal(a, b)


@st.composite
def values(draw, rows_max=12, finite=False, dims=(4, 8, 16, 32, 64)):
    """[R, d] float32 across scales (subnormal to near overflow), signed zeros, exact ties of
    the formats, constant rows, and (unless finite) NaN/Inf. (The torch int8 decode needs d a
    multiple of 4 when R is 1: it views a record's bytes as float32.)"""
    r, d = draw(st.integers(1, rows_max)), draw(st.sampled_from(dims))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(r, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-40, 1e-3, 1.0, 1e4, 1e37]))
    x = x.clamp(-F32_MAX, F32_MAX).to(torch.float32)
    for _ in range(draw(st.integers(0, 4))):
        i, j = draw(st.integers(0, r - 1)), draw(st.integers(0, d - 1))
        specials = [0.0, -0.0, 0.25, 0.75, 2.5, 5.0, -1.75, 448.0, F32_MAX, -F32_MAX]
        x[i, j] = draw(st.sampled_from(specials + ([] if finite else [float("nan"), float("inf")])))
    if draw(st.booleans()):
        x[0] = 3.0
    return x


@settings(max_examples=EXAMPLES)
@given(values(dims=(1, 3, 8, 32, 64)))
def test_mx4_bytes_and_values(x):
    groups = torch.cat([x.reshape(-1), x.new_zeros(-x.numel() % 32)]).view(-1, 32)
    packed = dk.quantize_mx4(on_dev(groups))
    ref = torch_ref(mx4.quantize_mx4, groups)
    assert torch.equal(packed.cpu(), ref)
    for dtype in (torch.float32, torch.bfloat16):
        assert same(dk.dequantize_mx4(on_dev(ref), dtype), torch_ref(mx4.dequantize_mx4, ref, dtype))


@settings(max_examples=EXAMPLES)
@given(values(finite=True))
def test_int8_rows(x):
    records = dk.int8_encode_rows(on_dev(x))
    ref, _ = torch_ref(Int8Codec().encode_rows, x, None, 1)
    assert torch.equal(records.cpu(), ref)
    assert same(dk.int8_decode_rows(on_dev(ref)), torch_ref(Int8Codec().decode_rows, ref, ref[:0], None))


@settings(max_examples=EXAMPLES)
@given(values(finite=True), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_fp8_rows_with_a_scale_per_chunk(x, c, seed):
    rows = np.random.default_rng(seed).multinomial(x.shape[0], [1 / c] * c)  # some chunks may be empty
    chunk = chunk_ids(rows, "cpu")
    records, trailers = dk.fp8_encode_rows(on_dev(x), on_dev(chunk), c)
    ref = torch_ref(Fp8Codec().encode_rows, x, chunk, c)
    assert torch.equal(records.cpu(), ref[0]) and torch.equal(trailers.cpu(), ref[1])
    assert same(dk.fp8_decode_rows(on_dev(ref[0]), on_dev(ref[1]), on_dev(chunk)),
                torch_ref(Fp8Codec().decode_rows, ref[0], ref[1], chunk))


def test_fp8_codes_cover_every_byte():
    """Every e4m3 value and every midpoint between neighbours (ties to even) round as torch does."""
    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
    finite = every[every.isfinite()].unique()
    mids = (finite[1:].double() + finite[:-1].double()).div(2).float()
    x = torch.cat([finite, mids, -mids]).view(-1, 1)
    chunk = torch.zeros(x.shape[0], dtype=torch.int64)
    # scale 1: one chunk whose max|x| is 448
    records, trailers = dk.fp8_encode_rows(on_dev(x), on_dev(chunk), 1)
    assert float(trailers.cpu().view(torch.float32)[0]) == 1.0
    assert torch.equal(records.cpu().view(-1), x.view(-1).to(torch.float8_e4m3fn).view(torch.uint8))


def test_codecs_through_the_switch_and_their_launches():
    """Int8Codec, Fp8Codec and Mx4Codec encode and decode the same bytes and values with the
    switch on ``triton`` as on ``torch`` (odd row counts: MX4's slot map; an empty chunk);
    encode launches do not grow with the number of chunks."""
    seen = {}
    for per in (1, 6):  # chunks per message, two messages
        rows = [np.array([5, 0, 7, 3, 2, 4][:per], np.int64), np.array([2, 6, 1, 0, 3, 5][:per], np.int64)]
        layout = ChunkLayout([list(range(per))] * 2, rows, [(0, 8), (8, 16)], 16)
        x = torch.randn(int(sum(r.sum() for r in rows)), 16) * 3
        for codec in (Int8Codec(), Fp8Codec(), Mx4Codec()):
            with device_kernels("torch"):
                ref = codec.encode(x, None, layout)
                ref_out = codec.decode(ref.payload, layout)
            with device_kernels("triton"), launches.count() as n:
                enc = codec.encode(on_dev(x), None, layout)
            assert torch.equal(enc.payload.cpu(), ref.payload), codec.name
            with device_kernels("triton"), launches.count() as m:
                out = codec.decode(on_dev(ref.payload), layout)
            assert same(out, ref_out), codec.name
            seen.setdefault(codec.name, set()).add((n.n, m.n))
    assert seen == {"int8": {(1, 1)}, "fp8": {(2, 1)}, "mx4": {(1, 1)}}
