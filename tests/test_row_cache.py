"""The cross-step row cache (issue 22): the bound for every row (hits included), the owner's
mirror equal to the receiver's cache bit for bit, deterministic bounded eviction, the wire's
flag section, evaluation bypassing the cache, statistics, config errors, resume after a kill -9,
and 2 and 3 ranks equal to one process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_comp.compress.batch_quant import ChunkKind, dequantize_batch, quantize_batch
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.row_cache import KEY_BITS, CacheIndex
from dlrm_comp.config import ConfigError
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport
from dlrm_comp.recorder import CompressionRecorder
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["compress.print_tables=false", "train.tensorboard=false"]
CACHE = ["compress.mode=codec", "compress.dedup=on", "compress.row_cache=on", "compress.row_cache_rows=16"]


# ----------------------------------------------------------------------------- the bound
def _delta_case(rows, d, scale, offset, drift, cached_p, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, rows * d, generator=g, dtype=torch.float64) * scale + offset).clamp(-3.3e38, 3.3e38)
    base = (x + torch.randn(x.shape, generator=g, dtype=torch.float64) * drift).clamp(-3.3e38, 3.3e38)
    x, base = x.to(torch.float32), base.to(torch.float32)
    cached = torch.rand(2, rows, generator=g) < cached_p
    base = torch.where(cached.repeat_interleave(d, 1), base, 0.0)
    return x, base, cached


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 12), d=st.integers(1, 6), scale=st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 1e30, 1e37]),
       offset=st.sampled_from([0.0, 1.0, -1e20, 3e38]), drift=st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 1e38]),
       cached_p=st.sampled_from([0.0, 0.5, 1.0]), eb=st.sampled_from([1e-6, 0.01, 0.03, 0.5]),
       seed=st.integers(0, 10**6))
def test_every_row_meets_the_bound_hits_included(rows, d, scale, offset, drift, cached_p, eb, seed):
    """Zero, tiny and huge ranges, magnitudes near float32's maximum, copies near and far:
    every value the receiver ends with (a hit's cached copy, a delta row's, a new row's, a RAW
    chunk's) is within the chunk's bound, which is relative to the chunk's values; and the
    receiver's own reconstruction from the codes equals the sender's."""
    x, base, cached = _delta_case(rows, d, scale, offset, drift, cached_p, seed)
    q = quantize_batch(x, torch.full((2,), eb, dtype=torch.float64), None, base=base, cached=cached)
    y = q.received()
    xw = x.to(torch.float64)
    bound = torch.tensor([float(np.float32(eb * (float(r.max()) - float(r.min())))) for r in xw], dtype=torch.float64)
    assert torch.all(q.eb_abs <= bound * (1 + 1e-6) + 1e-45)
    err = (y.to(torch.float64) - xw).abs().amax(dim=1)
    exact = err == 0
    assert torch.all(exact | (err < q.eb_abs)), (err, q.eb_abs, q.kind)
    assert torch.allclose(q.err, err, rtol=2**-23, atol=0)  # reported as computed in float32
    hit = q.hit.view(2, rows, d)[:, :, 0]
    assert not torch.any(hit & ~cached)  # only a cached row can hit
    recv = dequantize_batch(q.kind, q.minimum, q.step, q.codes, x, x.dtype, base)
    recv = torch.where(q.hit, base, recv)  # the receiver keeps its copy for a flagged row
    assert torch.equal(recv.view(torch.int32), y.view(torch.int32))  # bit for bit
    assert torch.all((q.kind == ChunkKind.QUANT) | (q.kind == ChunkKind.RAW))


def test_an_unchanged_row_hits_even_at_a_zero_bound():
    x = torch.ones(1, 8)
    q = quantize_batch(x, torch.tensor([0.03], dtype=torch.float64), None, base=x.clone(),
                       cached=torch.ones(1, 2, dtype=torch.bool))
    assert bool(q.hit.all()) and q.eb_abs.item() == 0 and torch.equal(q.received(), x)


# ----------------------------------------------------------------------------- the index
def _reference_lru(capacity, steps):
    """A plain dict model of the eviction rule: per slot, keep this step's rows (lowest ids
    first when they do not fit); a full slot frees its least recently used rows (oldest step,
    lowest place first out), at least an eighth of its places."""
    caches: dict[int, dict[int, list]] = {}
    out = []
    for t, (slots, keys) in enumerate(steps, start=1):
        cached = []
        for s, k in zip(slots.tolist(), keys.tolist()):
            cached.append(k in caches.get(s, {}))
        for s in sorted(set(slots.tolist())):
            c = caches.setdefault(s, {})
            mine = sorted(k for ss, k in zip(slots.tolist(), keys.tolist()) if ss == s)
            for k in mine:
                if k in c:
                    c[k][0] = t
            new = [k for k in mine if k not in c]
            used = {v[1] for v in c.values()}
            free = [p for p in range(capacity) if p not in used]
            need = len(new) - len(free)
            if need > 0:
                need = max(need, -(-capacity // 8))  # a batch at a time
                old = sorted((v[0], v[1], k) for k, v in c.items() if v[0] < t)[:need]
                for _, p, k in old:
                    del c[k]
                used = {v[1] for v in c.values()}
                free = [p for p in range(capacity) if p not in used]
            for k, p in zip(new, free):
                c[k] = [t, p]
        out.append(cached)
    return out, caches


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 6), seed=st.integers(0, 10**6), n_steps=st.integers(1, 8))
def test_eviction_is_the_documented_lru_and_bounded(capacity, seed, n_steps):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_steps):
        slots, keys = [], []
        for s in range(3):
            k = np.unique(rng.integers(0, 10, rng.integers(0, 8)))
            slots += [s] * len(k)
            keys += k.tolist()
        steps.append((np.array(slots, np.int64), np.array(keys, np.int64)))
    want, caches = _reference_lru(capacity, steps)
    index = CacheIndex(capacity)
    index.slot_of([(0, 0), (1, 0), (2, 0)])
    for (slots, keys), expect in zip(steps, want):
        cached, read, write = index.advance(slots, keys)
        assert cached.tolist() == expect
        assert len(index.keys) <= 3 * capacity and np.all(np.diff(index.keys) > 0)
    held = {(int(k) >> KEY_BITS, int(k) & ((1 << KEY_BITS) - 1)): int(p) % capacity
            for k, p in zip(index.keys, index.places)}
    assert held == {(s, k): v[1] for s, c in caches.items() for k, v in c.items()}


# ----------------------------------------------------------------------------- the exchange
class _Bags:
    def __init__(self, indices):
        self.indices = indices
        self.offsets = [torch.arange(len(i)) for i in indices]


def _steps(mode, cache_rows, steps=5, w=2, t_count=3, d=8, seed=0, eval_at=None, nonfinite="error"):
    """A loopback exchange over a few steps of drifting tables; returns it, its recorder and
    each step's (sent rows, received rows)."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(24 + t, d, generator=g) for t in range(t_count)]
    plan = CompressionPlan(DirectionPlan(mode, t_count, eb_rel=[0.05] * t_count, row_cache_rows=cache_rows,
                                         nonfinite=nonfinite), DirectionPlan("off", t_count), dedup=[True] * t_count)
    rec = CompressionRecorder(t_count)
    ex = Exchange(LoopbackTransport(w), list(range(t_count)), d, plan, rec)
    got = []
    for s in range(steps):
        bags = _Bags([torch.randint(0, 24 + t, (48,), generator=g) for t in range(t_count)])
        for t in range(t_count):
            tables[t] += 1e-3 * torch.randn(tables[t].shape, generator=g)
        pooled = [tables[t][bags.indices[t]] for t in range(t_count)]
        got.append((pooled, ex.forward(pooled, s != eval_at, bags=bags)))
    return ex, rec, got


def _contents(cache):
    inv = {v: k for k, v in cache.index.slots.items()}
    mask = (1 << KEY_BITS) - 1
    return {(inv[int(k) >> KEY_BITS], int(k) & mask): cache.values[p] for k, p in zip(cache.index.keys, cache.index.places)}


@pytest.mark.parametrize("mode", ["codec", "simulate"])
def test_mirror_equals_the_receivers_cache_and_the_bound_holds(mode):
    ex, rec, got = _steps(mode, 16)
    stage = ex.row_cache
    if mode == "codec":
        a, b = _contents(stage.sides["send"]), _contents(stage.sides["recv"])
        assert a.keys() == b.keys() and len(a) == 3 * 2 * 16  # full: eviction ran
        assert all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)
    else:
        assert set(stage.sides) == {"send"}  # the reconstruction travels: no receiver copy
    rows = rec.flush(0, lambda *a, **k: None)
    assert all(r["max_err_ratio"] < 1 for r in rows)
    assert all(0 < r["cache_hit_fraction"] < 1 and r["cache_bytes_saved"] > 0 for r in rows)
    for pooled, out in got:  # every row of every step within its chunk's bound (0.05 of the chunk's range)
        for x, y in zip(pooled, out):
            for lo, hi in ((0, 24), (24, 48)):
                xs, ys = x[lo:hi], y[lo:hi]
                assert float((xs - ys).abs().max()) < 0.05 * float(xs.max() - xs.min())


def test_the_cache_sends_fewer_bytes_and_decodes_what_the_sender_kept():
    _, rec_off, _ = _steps("codec", 0)
    ex, rec_on, got = _steps("codec", 64)
    off = sum(r["bytes_sent"] for r in rec_off.flush(0, lambda *a, **k: None))
    on = sum(r["bytes_sent"] for r in rec_on.flush(0, lambda *a, **k: None))
    assert on < off
    pooled, out = got[-1]  # the last step's received rows are the mirror's copies of those bags
    mirror = _contents(ex.row_cache.sides["send"])
    assert len(mirror) > 0


def test_simulate_with_the_cache_adds_no_host_read(monkeypatch):
    """The index is the host's (from the ids), the rows the device's: nothing is read back."""
    from test_exchange import _Reads
    reads = _Reads(monkeypatch)
    _steps("simulate", 8, steps=3, nonfinite="passthrough")  # "error" checks NaN/Inf at once on the CPU
    assert reads.count == 0


def test_evaluation_bypasses_the_cache():
    ex, _, _ = _steps("codec", 16, steps=4, eval_at=2)
    assert ex.row_cache.sides["send"].index.step == 3 and ex.row_cache.sides["recv"].index.step == 3


def test_a_corrupted_flag_section_is_refused():
    from dlrm_comp.compress.codecs.quant import QuantCodec
    ex, _, _ = _steps("codec", 16, steps=2)
    codec = ex.codec(ex.plan.fwd)
    g = torch.Generator().manual_seed(9)
    bags = _Bags([torch.randint(0, 24 + t, (48,), generator=g) for t in range(3)])
    index = ex.bag_index(48, bags)
    lay = ex.layout(index, ex.plan.fwd)
    pooled = [torch.randn(48, 8, generator=g) for _ in range(3)]
    enc = codec.encode(ex._owner_rows(pooled, lay), torch.full((6,), 0.05, dtype=torch.float64), lay.owner)
    assert isinstance(codec, QuantCodec) and enc.messages[0][1] == 5  # wire version 5
    bad = bytearray(enc.messages[0])
    bad[20 + 6 * 22 + 16] ^= 0xFF  # the first coded byte of the flag section
    with pytest.raises(CorruptPayloadError):
        codec.decode([bytes(bad), enc.messages[1]], lay.consumer, torch.float32)


# ----------------------------------------------------------------------------- training
def _run(tiny_cfg, out: Path, *overrides: str) -> dict:
    Trainer(tiny_cfg(*QUIET, *overrides), out).run()
    return json.loads((out / "summary.json").read_text())


def test_training_reports_hits_savings_and_memory(tiny_cfg, tmp_path):
    off = _run(tiny_cfg, tmp_path / "off", *CACHE[:2])["compression"]
    on = _run(tiny_cfg, tmp_path / "on", *CACHE)["compression"]
    assert on["bytes_raw"] == off["bytes_raw"] and on["cr"] > off["cr"] and on["max_err_ratio"] < 1
    assert 0 < on["cache_hit_fraction"] < 1 and on["cache_bytes_saved"] > 0 and "cache_hit_fraction" not in off
    assert on["row_cache"]["rows"] == 16 and on["row_cache"]["memory_bytes"] > 0
    assert all("cache_hit_fraction" in t for t in on["per_table"])
    rows = [r for r in read_jsonl(tmp_path / "on" / "metrics.jsonl") if r["kind"] == "table" and r["direction"] == "fwd"]
    assert rows and all("cache_hit_fraction" in r and "cache_bytes_saved" in r for r in rows)


def test_resume_equals_uninterrupted(tiny_cfg, straight_and_resumed):
    cfg = tiny_cfg(*QUIET, *CACHE, "train.checkpoint_every=5")
    straight, resumed = straight_and_resumed(cfg, 25)
    for key in ("bytes_sent", "cr", "cache_hit_fraction", "cache_bytes_saved", "max_err_ratio"):
        assert straight["compression"][key] == resumed["compression"][key], key
    assert straight["final_eval"] == resumed["final_eval"]


def test_resume_without_the_saved_caches_is_refused(tiny_cfg, tmp_path):
    from dlrm_comp.train.loop import InterruptedRun
    with pytest.raises(InterruptedRun):
        Trainer(tiny_cfg(*QUIET, *CACHE[:2]), tmp_path / "r").run(stop_after=20)
    with pytest.raises((ValueError, ConfigError), match="row_cache"):
        Trainer(tiny_cfg(*QUIET, *CACHE), tmp_path / "r", resume=True,
                resume_allow=["compress.row_cache", "compress.row_cache_rows"]).run()


@pytest.mark.parametrize("override,message", [
    ("compress.row_cache=maybe", "compress.row_cache: 'maybe' is not one of: off, on"),
    ("compress.row_cache_rows=-1", "compress.row_cache_rows: -1 must be an integer >= 1"),
    ("compress.row_cache_rows=1.5", "compress.row_cache_rows"),
    ("compress.mode=fp16", "compress.row_cache: 'on' needs compress.mode codec or simulate"),
    ("compress.dedup=off", "compress.row_cache: 'on' keys the cache on the distinct bags"),
    ("compress.peers=inter_node", "compress.row_cache: 'on' with compress.peers=inter_node is not supported"),
])
def test_bad_row_cache_settings_are_config_errors_naming_the_key(tiny_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(tiny_cfg(*QUIET, *CACHE, override), tmp_path / "bad")


def test_a_bad_row_cache_setting_exits_2_from_the_cli(tmp_path):
    """The CLI turns every ConfigError above into exit 2 with its message (one case: the path
    is the same for all of them)."""
    from tiny import TINY_OVERRIDES
    proc = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--set", *TINY_OVERRIDES, *QUIET, *CACHE,
                           "compress.mode=fp16", "--out", str(tmp_path / "cli")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "compress.row_cache: 'on' needs compress.mode codec or simulate" in proc.stderr
    assert not (tmp_path / "cli" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_real_sigkill_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    """A real kill -9 of the CLI with the cache on, then --resume: the same parameters and metrics."""
    from multiproc import kill_after_checkpoint
    extra = [*CACHE, "train.iterations=300", "train.eval_every=50"]
    cfg = tiny_cfg(*QUIET, *extra)
    straight = Trainer(cfg, tmp_path / "a")
    kill_after_checkpoint(tmp_path / "k", *QUIET, *extra, meanwhile=straight.run)  # the two side by side
    resumed = Trainer(cfg, tmp_path / "k", resume=True)
    resumed.run()
    assert resumed.start_iteration >= 60
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"samples_per_s", "step_s", "enc_s", "dec_s", "wall_s", "load_s", "eval_s"}
    strip = lambda run: [{k: v for k, v in r.items() if k not in timing and not k.endswith("_s")}  # noqa: E731
                         for r in read_jsonl(run / "metrics.jsonl")]
    assert strip(tmp_path / "k") == strip(tmp_path / "a")


RANKS = ("data.batch_size=36", "data.eval_batch_size=510", *CACHE)  # 36 rows: a whole share per rank at 2 and 3


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """2 ranks with the cache: one launch, read against one process and as the uninterrupted run
    of the kill-and-resume test."""
    from multiproc import SharedRun
    return SharedRun(tmp_path_factory.mktemp("cache") / "multi", 2, *RANKS)


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_match_one_process(tiny_cfg, tmp_path, world, two_ranks):
    from multiproc import single_and_multi
    shared = two_ranks if world == 2 else None
    single_and_multi(tiny_cfg, tmp_path, world, *RANKS, single=(f"compress.chunks={world}",), multi=shared)
    multi_out = tmp_path / "multi" if shared is None else shared.finished()
    multi = json.loads((multi_out / "summary.json").read_text())["compression"]
    one = json.loads((tmp_path / "single" / "summary.json").read_text())["compression"]
    # the same rows hit (messages differ: W per rank, so the framing bytes do)
    assert multi["cache_hit_fraction"] == pytest.approx(one["cache_hit_fraction"]) and one["cache_hit_fraction"] > 0
    assert multi["cache_bytes_saved"] == one["cache_bytes_saved"] and multi["cr"] > 1
    assert multi["distinct_fraction"] == pytest.approx(one["distinct_fraction"]) and multi["max_err_ratio"] < 1


@pytest.mark.cuda
def test_the_stage_is_bit_identical_on_a_device():
    """The same hits, codes and reconstruction on CUDA as on the CPU (torch ops, float64 sums)."""
    x, base, cached = _delta_case(16, 8, 1.0, 0.5, 1e-3, 0.7, 3)
    eb = torch.full((2,), 0.03, dtype=torch.float64)
    a = quantize_batch(x, eb, None, base=base, cached=cached)
    b = quantize_batch(x.cuda(), eb.cuda(), None, base=base.cuda(), cached=cached.cuda())
    for name in ("kind", "bits", "minimum", "step", "low", "high", "hit"):
        assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name
    assert torch.equal(a.received().view(torch.int32), b.received().cpu().view(torch.int32))


@pytest.mark.multiprocess
def test_two_ranks_stopped_and_resumed_equal_uninterrupted(tmp_path, two_ranks):
    """Each rank's caches (its mirrors and its receiver caches) come back from its own checkpoint."""
    from multiproc import straight_and_resumed
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, *RANKS, straight=two_ranks)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("bytes_sent", "cache_hit_fraction", "cache_bytes_saved", "max_err_ratio"):
        assert sa["compression"][key] == sb["compression"][key], key
    assert sa["compression"]["cache_hit_fraction"] > 0


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 12), d=st.integers(1, 6), scale=st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 1e30, 1e37]),
       offset=st.sampled_from([0.0, 1.0, -1e20, 3e38]), drift=st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 1e38]),
       cached_p=st.sampled_from([0.0, 0.5, 1.0]), eb=st.sampled_from([1e-6, 0.03, 0.5]), seed=st.integers(0, 10**6),
       nan=st.booleans())
def test_the_fused_cpu_loop_is_the_torch_path_bit_for_bit(rows, d, scale, offset, drift, cached_p, eb, seed, nan):
    from dlrm_comp.compress import cpu_kernels
    from dlrm_comp.compress.batch_quant import quantize_delta
    if not cpu_kernels.available():
        pytest.skip("numba not installed")
    x, base, cached = _delta_case(rows, d, scale, offset, drift, cached_p, seed)
    if nan:
        x[1, 0] = float("nan")
    e = torch.full((2,), eb, dtype=torch.float64)
    counts = np.array([rows * d, max(rows - 1, 1) * d])
    a = quantize_delta(x, e, counts, base, cached, fused=True)
    b = quantize_delta(x, e, counts, base, cached, fused=False)
    for name in ("kind", "bits", "minimum", "step", "eb_abs", "err", "nonfinite", "ok", "hit", "sent_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    travel = ~a.hit
    assert torch.equal(a.low[travel], b.low[travel]) and torch.equal(a.high[travel], b.high[travel])
    assert torch.equal(a.received().view(torch.int32), b.received().view(torch.int32))
    assert torch.equal(a.entropy_bytes(), b.entropy_bytes())
