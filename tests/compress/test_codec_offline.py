"""The training codec as the offline tools run it (``codecs/offline.py``): the bound on every dtype
and value regime, NaN/Inf handling, corrupt or forged messages refused, lossless stages and
model coders through the wire format, fixed-rate sizes, and the figures the tools report."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress_strategies import EBS, chunks

from dlrm_comp.compress.codecs.offline import chunk_codes, roundtrip
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless import CodecCache, SymbolModelStore, codec_from_header, get_lossless
from dlrm_comp.compress.modes import CODEC_MODES, ERROR_BOUNDED, FIXED_RATE, build_codec
from dlrm_comp.compress.wire import CHUNK_HEADER, HEADER_DTYPE, PREAMBLE, SECTION_HEADER, parse

BYTE_MODES = ["codec", "sz"]
DTYPE_BYTE = 2  # the preamble's dtype id


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)


def _decode(msg: bytes, rows, dim: int, cache: CodecCache | None = None, mode: str = "codec") -> torch.Tensor:
    """What a fresh receiver (no encoder state) rebuilds from one message."""
    return build_codec(mode, None, cache).decode_message(msg, rows, dim)


@settings(max_examples=120, deadline=None)
@given(x=chunks(), eb=EBS, mode=st.sampled_from(ERROR_BOUNDED))
def test_bound_holds_on_every_dtype_and_regime(x, eb, mode):
    """Zero and tiny ranges, offsets, magnitudes near the dtype's maximum: every value within
    eb_rel * range (constant chunks exact), in the input's dtype and shape."""
    x = _rows(x)
    r = roundtrip(mode, [x], eb)
    y = r.decoded[0]
    assert y.dtype == x.dtype and y.shape == x.shape
    x64, y64 = x.double(), y.double()
    assert float((y64 - x64).abs().max()) <= eb * float(x64.max() - x64.min())
    assert r.max_err_ratio <= 1.0
    if mode in BYTE_MODES:
        (msg,) = r.messages
        assert torch.equal(_decode(msg, x.shape[0], x.shape[1], mode=mode), y)  # no encoder state needed
        assert r.bytes_sent == len(msg) == pytest.approx(sum(r.sent))
    if mode == "codec":  # simulate sends the quantizer's reconstruction: the codec's receiver, bit for bit
        assert torch.equal(roundtrip("simulate", [x], eb).decoded[0], y)


@pytest.mark.parametrize("mode", CODEC_MODES)
def test_nonfinite_chunks_are_counted_and_error_bounded_ones_travel_exactly(mode):
    x = torch.randn(4, 6) * 0.05
    x[1, 2], x[2, 0] = float("nan"), float("-inf")
    clean = torch.randn(4, 6) * 0.05
    r = roundtrip(mode, [x, clean], 0.01, counts=[1, 1])
    assert int(r.encoded.nonfinite) >= 1  # the exchange applies the policy on this count
    assert int(roundtrip(mode, [clean], 0.01).encoded.nonfinite) == 0
    if mode in ERROR_BOUNDED:
        assert torch.equal(torch.nan_to_num(r.decoded[0]), torch.nan_to_num(x))
        assert float((r.decoded[1] - clean).abs().max()) <= 0.01 * float(clean.max() - clean.min())


def _small(mode: str, coder: str = "identity") -> bytes:
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)) * 0.05
    return roundtrip(mode, [x], 0.01, coder=get_lossless(coder)).messages[0]


@pytest.mark.parametrize("mode", BYTE_MODES)
def test_every_byte_flip_truncation_and_extension_is_refused(mode):
    """Never silently wrong: a damaged message raises, or (a flip in a field the decoder ignores)
    rebuilds exactly the same values."""
    msg = _small(mode)
    clean = _decode(msg, 4, 6, mode=mode)
    for i in range(len(msg)):
        if i == DTYPE_BYTE:
            continue  # test_a_flipped_dtype_byte_is_refused
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(msg)
            bad[i] ^= flip
            try:
                got = _decode(bytes(bad), 4, 6, mode=mode)
            except CorruptPayloadError:
                continue
            assert torch.equal(got, clean), (i, flip)
    for n in range(len(msg)):
        with pytest.raises(CorruptPayloadError):
            _decode(msg[:n], 4, 6, mode=mode)
    for extra in (b"\x00", b"abc", msg):
        with pytest.raises(CorruptPayloadError):
            _decode(msg + extra, 4, 6, mode=mode)


def test_a_flipped_dtype_byte_is_refused():
    """The dtype byte lies outside the table's checksum: the receiver checks the dtype it expects
    (the exchange passes its model's)."""
    msg = bytearray(_small("codec"))
    msg[DTYPE_BYTE] ^= 0x01
    codec = build_codec("codec", None, None)
    with pytest.raises(CorruptPayloadError, match="expected torch.float32"):
        codec.decode_message(bytes(msg), 4, 6, dtype=torch.float32)
    assert torch.equal(codec.decode_message(_small("codec"), 4, 6, dtype=torch.float32), _decode(_small("codec"), 4, 6))


def test_forged_row_count_is_refused_before_allocating():
    """A message with a valid table checksum claiming 2**31 rows (a decompression bomb): the
    receiver knows the rows it expects and refuses before it allocates."""
    msg = _small("codec")
    h = np.frombuffer(msg[PREAMBLE:PREAMBLE + CHUNK_HEADER], dtype=HEADER_DTYPE).copy()
    h["rows"] = 2**31
    pre = bytearray(msg[:PREAMBLE])
    struct.pack_into("<I", pre, 8, 2**31)  # the preamble's widest chunk
    struct.pack_into("<I", pre, 16, zlib.adler32(h.tobytes()))
    forged = bytes(pre) + h.tobytes() + msg[PREAMBLE + CHUNK_HEADER:]
    with pytest.raises(CorruptPayloadError, match="expected"):
        parse(forged, 4, 6)
    with pytest.raises(CorruptPayloadError, match="magic"):
        parse(b"\x00" * 40, 4, 6)


def test_a_stage_that_cannot_shrink_falls_back_to_identity():
    noise = torch.rand(64, 32, generator=torch.Generator().manual_seed(2))
    lz4 = get_lossless("blosc2", codec="LZ4", clevel=1, filter="NOFILTER")
    r = roundtrip("codec", [noise], 1e-3, coder=lz4)
    (msg,) = r.messages
    assert msg[PREAMBLE + CHUNK_HEADER] in (0, lz4.codec_id)  # the section's codec id
    assert len(msg) <= noise.numel() * 2 + PREAMBLE + CHUNK_HEADER + SECTION_HEADER + 8
    assert r.max_err_ratio <= 1.0


def test_model_coder_versions_travel_in_the_message():
    """The ans stage names its model (table, version) in the message: a receiver with the store
    decodes it after the model was refreshed, one without a store or without the model refuses."""
    pytest.importorskip("constriction")
    store = SymbolModelStore()
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)) * 0.05
    _, codes = chunk_codes(x, 0.03)
    v1 = store.learn(777, codes, 1)
    ans = get_lossless("ans", table=777, version=v1, store=store)
    r = roundtrip("codec", [x], 0.03, coder=ans, cache=CodecCache(store))
    (msg,) = r.messages
    assert msg[PREAMBLE + CHUNK_HEADER] == ans.codec_id  # really coded by 'ans'
    y = _decode(msg, 32, 32, CodecCache(store))
    assert torch.equal(y, r.decoded[0]) and r.max_err_ratio <= 1.0
    assert store.learn(777, np.zeros(100, np.uint8), 1) == v1 + 1
    assert torch.equal(_decode(msg, 32, 32, CodecCache(store)), y)  # the message names v1
    with pytest.raises(CorruptPayloadError, match="no model store"):
        _decode(msg, 32, 32, CodecCache())
    hdr = ans.header_params()
    store.retire(777, keep=0)
    with pytest.raises(CorruptPayloadError, match="table 777 version"):
        codec_from_header(ans.codec_id, hdr, store)


@pytest.mark.parametrize("mode", FIXED_RATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_fixed_rate_sizes_and_errors(mode, dtype):
    x = (torch.randn(32, 16, generator=torch.Generator().manual_seed(2)) * 0.05).to(dtype)
    r = roundtrip(mode, [x])
    assert r.decoded[0].dtype == dtype and r.err_ratio is None
    assert r.bytes_sent == {"fp16": 2 * 512, "bf16": 2 * 512, "fp8": 512 + 4, "int8": 32 * (16 + 8),
                            "mx4": 512 // 32 * 17}[mode]
    rel = {"fp16": 1e-3, "bf16": 8e-3, "fp8": 7e-2, "int8": 5e-3, "mx4": 0.25}[mode]
    amax = float(x.double().abs().max())
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 0.0
    assert float((r.decoded[0].double() - x.double()).abs().max()) <= rel * amax + 2 * amax * eps


def test_fixed_rate_saturation_and_zeros():
    assert torch.isfinite(roundtrip("fp16", [torch.tensor([[1e6, -1e6, 1.0]])]).decoded[0]).all()
    assert torch.equal(roundtrip("int8", [torch.zeros(4, 4)]).decoded[0], torch.zeros(4, 4))


def test_simulate_estimates_the_codec_and_ratios_are_realistic():
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) * 0.05
    sim, real = roundtrip("simulate", [x], 1e-2), roundtrip("codec", [x], 1e-2)
    assert real.ideal[0] == pytest.approx(sim.sent[0], rel=0.02)  # one entropy ideal, framing included
    assert sim.bytes_sent <= real.bytes_sent < 1.15 * sim.bytes_sent
    for mode, lo in (("codec", 5.0), ("sz", 3.0), ("simulate", 5.0)):
        assert roundtrip(mode, [x], 1e-2).cr > lo, mode


def test_messages_per_chunk_or_per_run_and_per_chunk_figures():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(16, 8, generator=g) * 0.05 for _ in range(3)] + [torch.randn(5, 8, generator=g)]
    coders = [get_lossless("zstd"), get_lossless("zlib"), get_lossless("zstd"), get_lossless("identity")]
    for counts, n_msgs in ((None, 1), ([1, 1, 1, 1], 4), ([3, 1], 2)):
        r = roundtrip("codec", xs, [0.01, 0.02, 0.03, 0.01], coder=coders, counts=counts)
        assert len(r.messages) == n_msgs and r.bytes_sent == pytest.approx(sum(r.sent))
        assert r.raw == [x.numel() * 4 for x in xs] and len(r.decoded) == 4
        for x, y, eb in zip(xs, r.decoded, [0.01, 0.02, 0.03, 0.01]):
            assert y.shape == x.shape and float((y - x).abs().max()) <= eb * float(x.max() - x.min())
        if counts == [1, 1, 1, 1]:
            assert [len(m) for m in r.messages] == [round(s) for s in r.sent]
    with pytest.raises(ValueError, match="add up"):
        roundtrip("codec", xs, 0.01, counts=[1, 1])


def test_training_quantizer_codes():
    """Codes are offsets from the chunk minimum (their width follows the bound, not the offset),
    one step per chunk, up to 16 bits."""
    g = torch.Generator().manual_seed(5)
    q, codes = chunk_codes(torch.randn(1024, generator=g) * 0.05 + 5.0, 1e-2)
    assert codes.dtype == np.uint8 and int(codes.max()) <= 51 and int(q.bits[0]) <= 6
    q, codes = chunk_codes(torch.randn(4096, generator=g), 1e-5)
    assert codes.dtype == np.dtype("<u2") and int(q.bits[0]) == 16
    assert chunk_codes(torch.full((8,), 3.0), 1e-2)[1] is None  # constant: no codes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("mode", CODEC_MODES)
def test_cuda_matches_cpu(mode):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(6)) * 0.05
    on_gpu = roundtrip(mode, [x.cuda()], 1e-2)
    assert on_gpu.decoded[0].is_cuda
    assert torch.equal(on_gpu.decoded[0].cpu(), roundtrip(mode, [x], 1e-2).decoded[0])
    if on_gpu.messages is not None:
        assert on_gpu.messages == roundtrip(mode, [x], 1e-2).messages
