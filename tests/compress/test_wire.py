"""The batched wire format: round trips for every layout and coder, and corruption always caught."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless import get_lossless
from dlrm_comp.compress.kinds import ChunkKind
from dlrm_comp.compress.wire import CHUNK_HEADER, PREAMBLE, bitpack, bitunpack, parse
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport

CODERS = ["identity", "zstd", "zlib", "blosc2"]


def _message(x: torch.Tensor, coder: str = "zstd", layout_bitpack: bool = False, eb: float = 0.02):
    """One loopback exchange of a [T, B, d] batch as one message; (exchange, messages)."""
    t = x.shape[0]
    plan = DirectionPlan("codec", t, eb_rel=[eb] * t, coders=[get_lossless(coder)] * t, bitpack=[layout_bitpack] * t)
    ex = Exchange(LoopbackTransport(1), [0] * t, x.shape[2], CompressionPlan(plan, DirectionPlan("off", t)))
    return ex, ex.encode(list(x))


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("bp", [False, True])
def test_round_trip_every_coder_and_layout(coder, bp):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 32, 8, generator=g) * 0.05
    x[1] *= 1e3  # wide codes at a tight bound below
    x[2] = 1.5  # a constant chunk
    x[3, 0, 0] = 1e30  # a chunk whose range leaves no usable bound for the rest: RAW
    x[4] = x[4] * 1e-39
    t = x.shape[0]
    plan = DirectionPlan("codec", t, eb_rel=[0.02, 1e-4, 0.02, 1e-9, 0.02], coders=[get_lossless(coder)] * t,
                         bitpack=[bp] * t)
    ex = Exchange(LoopbackTransport(2), [0] * t, 8, CompressionPlan(plan, DirectionPlan("off", t)))
    y = ex.forward(list(x), compress=True)
    for c in range(t):
        for a, b in ((0, 16), (16, 32)):
            chunk = x[c, a:b].double()
            eb_abs = plan.eb_rel[c] * float(chunk.max() - chunk.min())
            assert float((y[c][a:b].double() - chunk).abs().max()) <= eb_abs


def test_bitpack_round_trip_at_every_width():
    for bits in range(1, 17):
        codes = torch.randint(0, 2**bits, (3, 37), dtype=torch.int32)
        b = torch.tensor([bits, max(bits - 1, 1), bits], dtype=torch.int64)
        codes[1] %= 2 ** int(b[1])
        packed = bitpack(codes, b)
        assert torch.equal(bitunpack(packed, b, 37), codes)
        assert int(packed[0, (37 * bits + 7) // 8:].abs().sum()) == 0  # nothing past the width


def test_header_bytes_count_in_sent():
    x = torch.randn(3, 16, 4) * 0.05
    ex, (msg,) = _message(x, "identity")
    assert len(msg) >= PREAMBLE + 3 * CHUNK_HEADER
    ex.recorder = None


@settings(max_examples=60)
@given(st.data())
def test_any_corruption_is_caught(data):
    """A flipped bit anywhere, a truncation or an extension: CorruptPayloadError, or (where the
    flipped bit falls in a lossless stream that still decodes to the same bytes) the same values."""
    coder = data.draw(st.sampled_from(CODERS))
    x = torch.randn(4, 16, 4, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) * 0.05
    _, (msg,) = _message(x, coder, data.draw(st.booleans()))
    clean = parse(msg, 16, 4)
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    buf = bytearray(msg)
    if how == "flip":
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        buf = buf[:data.draw(st.integers(0, len(buf) - 1))]
    else:
        buf += bytes(data.draw(st.integers(1, 8)))
    try:
        got = parse(bytes(buf), 16, 4)
    except CorruptPayloadError:
        return
    assert how == "flip"
    for plane in ("primary", "high", "rest"):
        assert np.array_equal(getattr(got, plane), getattr(clean, plane))
    assert np.array_equal(got.header, clean.header) and got.sz.keys() == clean.sz.keys()


def test_wrong_magic_and_version_are_named():
    _, (msg,) = _message(torch.randn(2, 8, 4))
    with pytest.raises(CorruptPayloadError, match="magic"):
        parse(b"\x00" + msg[1:], 8, 4)
    with pytest.raises(CorruptPayloadError, match="version"):
        parse(msg[:1] + b"\x09" + msg[2:], 8, 4)


def test_parse_checks_the_chunk_count_before_allocating():
    _, (msg,) = _message(torch.randn(3, 8, 4))
    assert parse(msg, 8, 4, expect_chunks=3).header.shape == (3,)
    with pytest.raises(CorruptPayloadError, match="expected 2"):
        parse(msg, 8, 4, expect_chunks=2)


@settings(max_examples=60)
@given(st.data())
def test_span_gather_equals_a_copy_per_span(data):
    """The gather that builds a section's planes from the chunks' planes (numba, or a view when
    the spans lie back to back) equals copying each span in turn: spans in any order, empty,
    overlapping, back to back."""
    from dlrm_comp.compress import cpu_kernels, wire
    k = data.draw(st.integers(1, 6))
    size = data.draw(st.integers(1, 60))
    plane = np.random.default_rng(k * size).integers(0, 256, size).astype(np.uint8)
    at = np.array(data.draw(st.lists(st.integers(0, size), min_size=k, max_size=k)), dtype=np.int64)
    length = np.array([data.draw(st.integers(0, size - a)) for a in at], dtype=np.int64)
    if data.draw(st.booleans()):  # back to back: the view
        at = np.minimum(np.concatenate([[0], np.cumsum(length)[:-1]]), size)
        length = np.minimum(length, size - at)
    assert cpu_kernels.available()
    got = wire._gather(plane, at, length)
    expect = np.concatenate([plane[a:a + n] for a, n in zip(at, length)])
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("coder", CODERS)
def test_unpadded_chunks_send_the_padded_messages(coder, monkeypatch):
    """Deduplicated chunks quantized as their rows lie (``quantize_ragged``: no padding, a
    section's stream a slice of flat planes) make byte for byte the messages of the padded path
    (forced), and decode to the same rows: QUANT, wide, CONST and RAW chunks, one and two sections."""
    from dlrm_comp.compress.codecs import quant
    from dlrm_comp.compress.codecs.base import ChunkLayout
    from dlrm_comp.compress.lossless import CodecCache
    g = torch.Generator().manual_seed(11)
    rows = [np.array([5, 1, 9, 3, 7], dtype=np.int64), np.array([2, 8, 8, 1, 4], dtype=np.int64)]
    layout = ChunkLayout([list(range(5))] * 2, rows, [(0, 9), (9, 18)], 4, True)
    x = torch.randn(int(sum(r.sum() for r in rows)), 4, generator=g) * 0.05
    x[5:6] = 1.5  # message 0's chunk 1: constant
    x[6:15] *= 1e3  # chunk 2: wide codes at the tight bound below
    x[15, 0] = 1e30  # chunk 3: no usable bound, RAW
    eb = torch.tensor([0.02, 0.02, 1e-4, 1e-9, 0.05] * 2, dtype=torch.float64)
    coders = [get_lossless(coder)] * 3 + [get_lossless("identity")] * 2  # two sections a message
    plan = DirectionPlan("codec", 5, coders=coders, message_path="host")

    def run():
        sent = quant.QuantCodec(plan, CodecCache()).encode(x, eb, layout)
        return sent.messages, quant.QuantCodec(plan, CodecCache()).decode(sent.messages, layout, torch.float32)
    messages, got = run()
    monkeypatch.setattr(quant, "ragged_ready", lambda device, dtype: False)
    padded_messages, padded_got = run()
    assert messages == padded_messages
    assert torch.equal(got, padded_got)
    head = parse(messages[0], rows[0], 4).header
    assert {int(ChunkKind.QUANT), int(ChunkKind.CONST), int(ChunkKind.RAW)} <= set(head["kind"].tolist())
    assert (head["bits"] > 8).any() and head["section"].max() == (coder != "identity")  # identity: one section


def test_a_forged_width_on_a_chunk_without_codes_is_corruption():
    """A chunk table that passes its checksum but gives a RAW chunk a code width (no sender
    writes one) is refused by ``parse``, not decoded into a wrong-sized plane."""
    import struct
    import zlib

    from dlrm_comp.compress.wire import HEADER_DTYPE
    x = torch.randn(3, 8, 4, dtype=torch.float64) * 0.05
    x[1, 0, 0] = 1e300  # no usable bound: RAW
    _, (msg,) = _message(x, "identity")
    buf = bytearray(msg)
    table = np.frombuffer(bytes(buf[PREAMBLE:PREAMBLE + 3 * CHUNK_HEADER]), dtype=HEADER_DTYPE).copy()
    raw = np.flatnonzero(table["kind"] == ChunkKind.RAW)
    assert raw.size
    table["bits"][raw] = 9
    buf[PREAMBLE:PREAMBLE + 3 * CHUNK_HEADER] = table.tobytes()
    buf[16:20] = struct.pack("<I", zlib.adler32(table.tobytes()))
    with pytest.raises(CorruptPayloadError, match="out-of-range"):
        parse(bytes(buf), 8, 4)


def _table_rules(h: np.ndarray, want: np.ndarray, m_rows: int, cols: int, item: int, n_sections: int) -> int:
    """The chunk-table rules as numpy statements (what ``parse`` checked before the compiled pass)."""
    from dlrm_comp.compress import cpu_kernels as k
    rows, kind, bits = h["rows"].astype(np.int64), h["kind"].astype(np.int64), h["bits"].astype(np.int64)
    layout, sec, nbytes = h["layout"].astype(np.int64), h["section"].astype(np.int64), h["nbytes"].astype(np.int64)
    fail = 0
    if len(h) and ((rows != want).any() or m_rows != rows.max()):
        fail |= k.TABLE_ROWS
    if len(h):
        step, turn = np.diff(sec), np.diff(layout)
        if ((kind > k._SZ) | (bits > 16) | (layout > 1) | ((kind != k._QUANT) & (bits != 0))).any() or sec[0] != 0 \
                or sec[-1] != n_sections - 1 or ((step < 0) | (step > 1) | ((turn != 0) & (step == 0))).any():
            fail |= k.TABLE_FIELDS
    sz = kind == k._SZ
    if (sz & ((layout != 1) | (nbytes > rows * cols * item))).any():
        fail |= k.TABLE_SZ
    from dlrm_comp.compress.wire import plane_spans
    if ((nbytes != plane_spans(h, cols, item)[0].sum(0)) & ~sz).any():
        fail |= k.TABLE_SIZES
    return fail | (k.TABLE_HAS_SZ * sz.any()) | (k.TABLE_HAS_RAW * (kind == k._RAW).any()) \
        | (k.TABLE_HAS_BITPACK * (layout == 1).any())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_compiled_table_check_is_the_rules(data):
    """Forged chunk tables (any field of any chunk moved, a section skipped, a wrong widest row):
    ``cpu_kernels.check_table``, compiled and as Python, finds exactly the failures the rules
    name, and counts each section's chunks and bytes as the table says."""
    from dlrm_comp.compress import cpu_kernels as k
    from dlrm_comp.compress.wire import HEADER_DTYPE
    c = data.draw(st.integers(0, 6))
    cols, item = data.draw(st.sampled_from([1, 4, 16])), data.draw(st.sampled_from([2, 4, 8]))
    h = np.zeros(c, HEADER_DTYPE)
    for f, hi in (("kind", 4), ("bits", 17), ("layout", 2), ("rows", 6)):
        h[f] = data.draw(st.lists(st.integers(0, hi), min_size=c, max_size=c))
    h["bits"] = np.where(h["kind"] == k._QUANT, h["bits"], 0 if data.draw(st.booleans()) else h["bits"])
    steps = np.array(data.draw(st.lists(st.sampled_from([0, 0, 1, 1, 2, -1]), min_size=c, max_size=c)), np.int64)
    h["section"] = np.clip(np.cumsum(steps) - (steps[0] if c else 0), 0, 20)  # skips and steps back too
    from dlrm_comp.compress.wire import plane_spans
    h["nbytes"] = plane_spans(h, cols, item)[0].sum(0) + data.draw(st.lists(st.sampled_from([0, 0, 0, 1]),
                                                                            min_size=c, max_size=c))
    n_sections = int(h["section"].max()) + 1 + data.draw(st.sampled_from([0, 0, 1])) if c else 0
    want = h["rows"].astype(np.int64) + data.draw(st.lists(st.sampled_from([0, 0, 0, 1]), min_size=c, max_size=c))
    m_rows = int(h["rows"].max()) + data.draw(st.sampled_from([0, 0, 1])) if c else 0
    expected = _table_rules(h, want, m_rows, cols, item, n_sections)
    for check in (k.check_table, getattr(k.check_table, "py_func", k.check_table)):
        sizes, at = np.empty((3, c), np.int64), np.empty((3, c + 1), np.int64)
        chunks, nbytes = np.zeros(n_sections, np.int64), np.zeros(n_sections, np.int64)
        got = check(h["kind"], h["bits"], h["layout"], h["section"], h["rows"], h["nbytes"], want, m_rows, cols, item,
                    n_sections, sizes, at, chunks, nbytes)
        assert got == expected
        inside = h["section"] < n_sections
        assert np.array_equal(chunks, np.bincount(h["section"][inside], minlength=n_sections))
        assert np.array_equal(nbytes, np.bincount(h["section"][inside], h["nbytes"][inside].astype(np.float64),
                                                  minlength=n_sections).astype(np.int64))
