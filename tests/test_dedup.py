"""Bag deduplication: the bag index, bit-identical forward values in every mode, the backward's
summed gradients, fewer bytes, no host reads, the `compress.dedup*` switches in training, and
2- and 3-rank exchanges."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.config import ConfigError
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport, destination_rows
from dlrm_comp.exchange.dedup import bag_codes, build_bag_index
from dlrm_comp.compress.modes import EXCHANGE_MODES as MODES
from dlrm_comp.recorder import CompressionRecorder
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["compress.print_tables=false", "train.tensorboard=false"]


class Bags:
    """A batch's ids: single-hot tables with few distinct ids, and one multi-hot table."""

    def __init__(self, b: int, tables: int, seed: int = 0, vocab: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.indices = [torch.randint(0, vocab + t, (b,), generator=g) for t in range(tables - 1)]
        self.offsets = [torch.arange(b) for _ in range(tables - 1)]
        sizes = torch.randint(0, 3, (b,), generator=g)  # empty bags too
        self.indices.append(torch.randint(0, 3, (int(sizes.sum()),), generator=g))
        self.offsets.append(torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]]))


def _bags_of(ids: torch.Tensor, offsets: torch.Tensor) -> list[tuple]:
    ends = torch.cat([offsets[1:], torch.tensor([len(ids)])])
    return [tuple(ids[a:b].tolist()) for a, b in zip(offsets.tolist(), ends.tolist())]


@settings(max_examples=40)
@given(b=st.integers(1, 40), w=st.integers(1, 4), seed=st.integers(0, 999), mask=st.lists(st.booleans(), min_size=3,
                                                                                       max_size=3))
def test_bag_index_rebuilds_every_row(b, w, seed, mask):
    """Every row's bag is the bag of the sent row it points to; a slice sends each distinct bag
    once; tables without dedup send every row."""
    w = min(w, b)
    bags = Bags(b, 3, seed)
    slices = destination_rows(b, w)
    index = build_bag_index(bags.indices, bags.offsets, slices, mask)
    for t in range(3):
        rows = _bags_of(bags.indices[t], bags.offsets[t])
        for q, (lo, hi) in enumerate(slices):
            sent = index.sent_rows(t, q)
            assert int(index.distinct[t, q]) == len(set(rows[lo:hi]))
            if not mask[t]:
                assert sent.tolist() == list(range(lo, hi))
                continue
            assert len(sent) == len(set(rows[lo:hi])) and all(lo <= r < hi for r in sent)
            for r in range(lo, hi):
                assert rows[sent[index.bag[t][r]]] == rows[r]


def test_bag_index_survives_ids_across_the_whole_int64_range():
    """Composite (table, slice, id) keys would overflow: the index ranks the ids per table first."""
    big = torch.tensor([0, 2**62, 2**63 - 1, -2**63, 2**62, 0, -2**63, 7])
    bags = [big, big.flip(0)]
    offsets = [torch.arange(8), torch.arange(8)]
    index = build_bag_index(bags, offsets, [(0, 4), (4, 8)], [True, True])
    for t in range(2):
        for q, (lo, hi) in enumerate([(0, 4), (4, 8)]):
            sent = index.sent_rows(t, q)
            assert len(sent) == len(set(bags[t][lo:hi].tolist()))
            assert torch.equal(bags[t][sent[index.bag[t][lo:hi]]], bags[t][lo:hi])


def test_bag_codes_are_exact_for_multi_hot_rows():
    ids = torch.tensor([1, 2, 2, 1, 1, 2, 5])
    offsets = torch.tensor([0, 2, 4, 6, 6])  # (1,2) (2,1) (1,2) (5,) () -- order matters, empty bags count
    codes = bag_codes(ids, offsets)
    assert codes[0] == codes[2] and len(set(codes.tolist())) == 4


def _exchange(mode, t, w, dedup, recorder=None, bwd="off", dtype_eb=0.02):
    plan = CompressionPlan(DirectionPlan(mode, t, eb_rel=[dtype_eb] * t), DirectionPlan(bwd, t, eb_rel=[0.01] * t),
                           [dedup] * t)
    return Exchange(LoopbackTransport(w), [0] * t, 4, plan, recorder)


def _lookup(bags: Bags, dtype=torch.float32, seed=5):
    g = torch.Generator().manual_seed(seed)
    tables = [torch.nn.EmbeddingBag(16, 4, mode="sum").to(dtype) for _ in bags.indices]
    for e in tables:
        with torch.no_grad():
            e.weight.copy_(torch.randn(16, 4, generator=g, dtype=dtype) * 0.1)
    return tables, [e(i, o) for e, i, o in zip(tables, bags.indices, bags.offsets)]


@pytest.mark.parametrize("w", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_forward_is_bit_identical_with_fewer_bytes(mode, w):
    """A chunk's range is that of its distinct rows, so every mode decodes the same values (SZ3
    codes the distinct rows as another array: within the bound; MX4 groups 32 values of
    consecutive rows, so other neighbours: within its format's error); every mode sends fewer bytes."""
    bags = Bags(25, 5)  # 25 rows: the last destination takes the remainder
    _, pooled = _lookup(bags)
    sent = {}
    outs = {}
    for dedup in (False, True):
        recorder = CompressionRecorder(5)
        ex = _exchange(mode, 5, w, dedup, recorder)
        outs[dedup] = ex.forward([p.detach() for p in pooled], compress=True, bags=bags)
        recorder.flush(1, lambda *a, **k: None)
        summary = recorder.direction_summary("fwd", [16] * 5, None)
        sent[dedup] = summary["bytes_sent"] if summary else None
        if dedup:
            assert summary["bytes_raw"] == 5 * 25 * 4 * 4  # raw counts every row: the ratio holds both savings
            assert 0 < summary["distinct_fraction"] < 1 and summary["dedup_bytes_saved"] > 0
    for t, (a, b) in enumerate(zip(outs[False], outs[True])):
        if mode == "sz":
            for lo, hi in destination_rows(25, w):
                chunk = pooled[t].detach()[lo:hi].double()
                assert float((b[lo:hi].double() - chunk).abs().max()) <= 0.02 * float(chunk.max() - chunk.min())
        elif mode == "mx4":  # at most a quarter of the group's largest magnitude, so of the table's
            assert float((b - pooled[t].detach()).abs().max()) <= 0.25 * float(pooled[t].detach().abs().max())
        else:
            assert torch.equal(a, b), f"table {t}"
    if mode != "off":
        assert sent[True] < sent[False]


def test_codec_bound_holds_on_a_constant_and_a_tiny_range_chunk():
    bags = Bags(24, 3)
    bags.indices[0] = torch.zeros(24, dtype=torch.int64)  # one id: one distinct row, a CONST chunk
    _, pooled = _lookup(bags)
    pooled = [p.detach() for p in pooled]
    pooled[1] = pooled[1] * 1e-30  # a tiny range
    ex = _exchange("codec", 3, 2, True)
    out = ex.forward(pooled, compress=True, bags=bags)
    for p, o in zip(pooled, out):
        for lo, hi in destination_rows(24, 2):
            chunk = p[lo:hi].double()
            assert float((o[lo:hi].double() - chunk).abs().max()) <= 0.02 * float(chunk.max() - chunk.min())


def _table_grads(dedup: bool, mode: str, dtype=torch.float64, w: int = 3):
    bags = Bags(30, 5, seed=2)
    tables, pooled = _lookup(bags, dtype)
    ex = _exchange(mode, 5, w, dedup)
    out = ex(pooled, compress=True, bags=bags)
    g = torch.Generator().manual_seed(9)
    sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out).backward()
    return [e.weight.grad for e in tables], ex


@pytest.mark.parametrize("mode", ["off", "codec", "fp16"])
def test_backward_sums_equal_bags_into_the_same_table_gradients(mode):
    """The receiver sums the gradients of a bag's rows, the owner puts the sum on its first row:
    the tables' gradients are those without dedup (float64 here, so only a wrong gradient, not
    the order of the summation, can break the tolerance)."""
    ref, _ = _table_grads(False, mode)
    got, _ = _table_grads(True, mode)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_backward_is_deterministic_and_sends_fewer_gradient_bytes():
    a, _ = _table_grads(True, "off", torch.float32)
    b, _ = _table_grads(True, "off", torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    totals = {}
    for dedup in (False, True):
        bags = Bags(30, 5, seed=2)
        _, pooled = _lookup(bags)
        recorder = CompressionRecorder(5)
        ex = _exchange("off", 5, 3, dedup, recorder)
        sum(o.sum() for o in ex(pooled, compress=True, bags=bags)).backward()
        recorder.flush(1, lambda *a, **k: None)
        totals[dedup] = recorder.direction_summary("bwd", [16] * 5, None)
    assert totals[False] is None  # exact and not deduplicated: nothing to account
    assert totals[True]["bytes_sent"] < totals[True]["bytes_raw"]


@pytest.mark.parametrize("mode", ["off", "fp16", "int8", "fp8", "simulate"])
def test_dedup_adds_no_host_read(monkeypatch, mode):
    """The bag index comes from the host ids: sizes stay known, no tensor is read back."""
    from test_exchange import _Reads
    bags = Bags(32, 4)
    _, pooled = _lookup(bags)
    ex = _exchange(mode, 4, 4, True, CompressionRecorder(4))
    ex.plan.fwd.nonfinite = "passthrough"
    pooled = [p.detach().requires_grad_() for p in pooled]
    reads = _Reads(monkeypatch)
    sum(o.sum() for o in ex(pooled, compress=True, bags=bags)).backward()
    assert reads.count == 0


def test_parse_checks_each_chunks_rows():
    from dlrm_comp.compress.wire import parse
    bags = Bags(16, 3)
    _, pooled = _lookup(bags)
    ex = _exchange("codec", 3, 1, True)
    (msg,) = ex.encode([p.detach() for p in pooled], bags=bags)
    rows = build_bag_index(bags.indices, bags.offsets, [(0, 16)], [True] * 3).counts[:, 0]
    assert parse(msg, rows, 4).header["rows"].tolist() == rows.tolist()
    with pytest.raises(CorruptPayloadError, match="rows"):
        parse(msg, rows + 1, 4)
    with pytest.raises(CorruptPayloadError, match="chunks"):
        parse(msg, rows[:-1], 4)


# ------------------------------------------------------------------------------- training
def _run(tiny_cfg, out: Path, *overrides: str) -> dict:
    Trainer(tiny_cfg(*QUIET, *overrides), out).run()
    return json.loads((out / "summary.json").read_text())


def test_training_with_dedup_reports_it_and_raises_the_ratio(tiny_cfg, tmp_path):
    off = _run(tiny_cfg, tmp_path / "off", "compress.mode=codec")
    on = _run(tiny_cfg, tmp_path / "on", "compress.mode=codec", "compress.dedup=on")
    c_off, c_on = off["compression"], on["compression"]
    assert c_on["bytes_raw"] == c_off["bytes_raw"] and c_on["cr"] > c_off["cr"]
    assert 0 < c_on["distinct_fraction"] < 1 and c_on["dedup_bytes_saved"] > 0
    assert c_on["dedup"] == {"mode": "on", "max_fraction": 0.95, "tables": list(range(len(c_on["per_table"])))}
    assert all(0 < t["distinct_fraction"] <= 1 for t in c_on["per_table"])
    assert c_off["dedup_bytes_saved"] == 0
    rows = [r for r in read_jsonl(tmp_path / "on" / "metrics.jsonl") if r["kind"] == "table"]
    assert rows and all("distinct_fraction" in r and "dedup_bytes_saved" in r for r in rows)


def test_exact_training_with_dedup_moves_fewer_bytes_in_both_directions(tiny_cfg, tmp_path):
    """`off` plus dedup: exact values, fewer rows, measured like any mode."""
    summary = _run(tiny_cfg, tmp_path / "exact", "compress.dedup=on")["compression"]
    assert summary["mode"] == "off" and summary["cr"] > 1 and summary["max_err_ratio"] is None
    assert summary["backward"]["cr"] == pytest.approx(summary["cr"])


def _untimed(section):
    """A summary section without its measured seconds (which differ run to run)."""
    if isinstance(section, dict):
        return {k: _untimed(v) for k, v in section.items() if k not in ("enc_s", "dec_s")}
    if isinstance(section, list):
        return [_untimed(v) for v in section]
    return section


def test_auto_decides_per_table_at_intervals_and_resumes_the_decision(tiny_cfg, straight_and_resumed, tmp_path):
    cfg = tiny_cfg(*QUIET, "compress.mode=codec", "compress.dedup=auto", "compress.dedup_max_fraction=0.5",
                   "compress.dedup_tables=[1]", "train.checkpoint_every=5")  # resumed mid-interval (at 25)
    straight, resumed = straight_and_resumed(cfg, 25)
    assert _untimed(straight["compression"]) == _untimed(resumed["compression"])
    records = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r["kind"] == "dedup"]
    assert len(records) == 4  # one per print interval
    last = records[-1]
    want = [t for t, f in enumerate(last["distinct_fraction"]) if f < 0.5 or t == 1]
    assert last["tables"] == want == straight["compression"]["dedup"]["tables"]
    assert 0 < len(want) < len(last["distinct_fraction"])  # the tiny profile has tables on both sides


@pytest.mark.parametrize("override,message", [
    ("compress.dedup=maybe", "compress.dedup"),
    ("compress.dedup_max_fraction=0", "compress.dedup_max_fraction"),
    ("compress.dedup_tables=[99]", "compress.dedup_tables"),
])
def test_bad_dedup_settings_are_named(tiny_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_cfg(*QUIET, override), tmp_path / "bad")


# ------------------------------------------------------------------------------- 2 and 3 ranks
@pytest.mark.multiprocess
@pytest.mark.parametrize("world,sharding", [(2, "contiguous"), (3, "balanced")])
def test_dedup_across_ranks_in_every_mode(world, sharding):
    from multiproc import torchrun
    proc = torchrun(world, str(ROOT / "tests/dist_dedup_check.py"), sharding)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("dedup checks passed") == world


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 3])
def test_dedup_training_matches_one_process(tiny_cfg, tmp_path, world):
    from multiproc import single_and_multi
    single_and_multi(tiny_cfg, tmp_path, world, "data.batch_size=36", "data.eval_batch_size=510", "compress.dedup=on",
                     single=(f"compress.chunks={world}",))
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())["compression"]
    one = json.loads((tmp_path / "single" / "summary.json").read_text())["compression"]
    assert multi["bytes_sent"] == pytest.approx(one["bytes_sent"]) and multi["cr"] > 1
    assert np.isclose(multi["distinct_fraction"], one["distinct_fraction"])


def test_device_bag_sum_is_the_cpu_one():
    """The deterministic segment_reduce path used on devices sums exactly as index_add_ does
    on the CPU (both in row order), so gradients do not depend on the device's summation."""
    from dlrm_comp.exchange.dedup import bag_order, sum_by_bag
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(300, 4, generator=g)
    expand = torch.randint(0, 40, (300,), generator=g).numpy()
    expand = np.unique(expand, return_inverse=True)[1]
    total = int(expand.max()) + 1
    perm, lengths = bag_order(expand, total)
    cpu = sum_by_bag(rows, torch.from_numpy(expand), total)
    device_path = sum_by_bag(rows, torch.from_numpy(expand), total, (torch.from_numpy(perm), torch.from_numpy(lengths)))
    assert torch.equal(cpu, device_path)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_distinct_rows_kernel_equals_a_sort_per_chunk(data):
    """``cpu_kernels.distinct_rows`` (the index's one pass) against ``np.unique`` per chunk: the
    same distinct sets and counts, first occurrences in row order, every row pointing at a sent
    row with its code, over codes across the whole int64 range (hash collisions forced by few
    buckets: slices of 1 row up to 64)."""
    from dlrm_comp.compress import cpu_kernels
    t = data.draw(st.integers(1, 4))
    edges = sorted(set(data.draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))))
    bounds = np.array([0, *edges], np.int64)
    b = int(bounds[-1])
    pool = data.draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=6))
    codes = np.array(data.draw(st.lists(st.sampled_from(pool), min_size=t * b, max_size=t * b)),
                     np.int64).reshape(t, b)
    w = len(bounds) - 1
    first = np.full(t * b, -1, np.int64)
    bag = np.full((t, b), -1, np.int64)
    counts = np.zeros(t * w, np.int64)
    total = cpu_kernels.distinct_rows(codes, bounds, first, bag, counts)
    assert total == counts.sum()
    pos = 0
    for ti in range(t):
        for q in range(w):
            lo, hi = bounds[q], bounds[q + 1]
            chunk = codes[ti, lo:hi]
            n = counts[ti * w + q]
            assert n == len(np.unique(chunk))
            sent = first[pos:pos + n]
            assert np.array_equal(sent, np.sort(np.unique(chunk, return_index=True)[1]) + lo)  # first occurrences
            assert np.array_equal(codes[ti, sent[bag[ti, lo:hi]]], chunk)
            pos += n


@settings(max_examples=40, deadline=None)
@given(r=st.integers(0, 50), d=st.integers(1, 9), total=st.integers(1, 12), seed=st.integers(0, 999),
       wide=st.booleans())
def test_sum_by_bag_on_the_cpu_equals_index_add_bit_for_bit(r, d, total, seed, wide):
    """The numba row sums (``cpu_kernels.add_rows``) add in ``index_add_``'s order: bit-identical."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    rows = torch.randn(r, d, generator=g, dtype=dtype) * torch.logspace(-3, 3, d, dtype=dtype)
    expand = torch.randint(0, total, (r,), generator=g)
    from dlrm_comp.exchange.dedup import sum_by_bag
    got = sum_by_bag(rows, expand, total)
    assert torch.equal(got, torch.zeros(total, d, dtype=dtype).index_add_(0, expand, rows))
