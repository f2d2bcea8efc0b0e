"""The Btune port: deterministic trials, crafted dominance, trace, env overrides, bad parameters."""
from __future__ import annotations


import numpy as np
import pytest

from dlrm_comp.adaptive.btune import (
    TRACE_COLUMNS,
    Btune,
    BtuneConfig,
    Candidate,
    Measurement,
    SearchSpace,
    codecs_for,
    make_sample,
    tune,
)


def fake_trial(favourite: Candidate):
    """Deterministic cost model: everything compresses 2x in 1 ms, except ``favourite`` (by family
    and a clevel of 3) which compresses 8x in 0.1 ms; clevels further from 3 are a bit worse."""
    def trial(c: Candidate, sample: bytes, typesize: int) -> Measurement:
        n = len(sample)
        if c.family == favourite.family:
            ratio = 8.0 - 0.3 * abs(c.clevel - 3)
            return Measurement(n, int(n / ratio), 1e-4 * (1 + 0.1 * abs(c.clevel - 3)), 1e-4)
        return Measurement(n, n // 2, 1e-3, 1e-3)
    return trial


@pytest.mark.parametrize("tradeoff", [0.2, 0.5, 0.9])
def test_finds_dominant_candidate(tradeoff):
    fav = Candidate("LZ4", "BYTEDELTA", "ALWAYS_SPLIT", 3, 16384)
    space = SearchSpace(codecs=("LZ4", "ZSTD", "BLOSCLZ"))
    res = tune(b"x" * 100_000, 1, tradeoff=tradeoff, space=space, trial=fake_trial(fav), use_env=False)
    assert res.candidate.family == fav.family and res.candidate.clevel == 3
    assert res.unique_trials <= res.grid_size / 4
    assert res.codec.params["filter"] == "BYTEDELTA" and res.codec.params["blocksize"] == 16384


def test_real_measurements_dominant_codec():
    # bytes 0..3 cycling with long runs: every codec squeezes them, LZ4 without a filter at level >= 1 is
    # far faster than ZLIB/ZSTD for similar ratio; ratio-only tuning must find a high-ratio setting
    data = np.repeat(np.arange(64, dtype=np.uint8) % 4, 512).tobytes()
    res = tune(data, 1, tradeoff=1.0, space=SearchSpace(codecs=("LZ4", "ZSTD"), filters=("NOFILTER", "SHUFFLE"),
                                                         blocksizes=(0,)), use_env=False)
    assert res.cratio > 50
    assert res.codec.decompress(res.codec.compress(data, 1), len(data)) == data


def test_trace_printed(monkeypatch, capsys):
    monkeypatch.setenv("BTUNE_TRACE", "1")
    fav = Candidate("ZSTD", "SHUFFLE", "NEVER_SPLIT", 3, 0)
    res = tune(b"y" * 2048, 1, space=SearchSpace(codecs=("ZSTD", "LZ4")), trial=fake_trial(fav))
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for col in TRACE_COLUMNS:
        assert col in header
    assert "CODEC_FILTER" in out and "CLEVEL" in out and "HARD" in out and "SOFT" in out and "WAITING" in out
    assert sum(1 for line in out.splitlines() if line.rstrip().endswith("| W")) >= 1
    assert len(res.trace) == res.trials and set(res.trace[0]) == set(TRACE_COLUMNS)


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("BTUNE_TRADEOFF", "0.9")
    monkeypatch.setenv("BTUNE_PERF_MODE", "decomp")
    cfg = BtuneConfig.from_env(tradeoff=0.1, perf_mode="COMP")
    assert cfg.tradeoff == 0.9 and cfg.perf_mode == "DECOMP" and not cfg.trace
    monkeypatch.setenv("BTUNE_TRADEOFF", "fast")
    with pytest.raises(ValueError, match="BTUNE_TRADEOFF"):
        BtuneConfig.from_env()
    monkeypatch.setenv("BTUNE_TRADEOFF", "0.5")
    monkeypatch.setenv("BTUNE_PERF_MODE", "SPEED")
    with pytest.raises(ValueError, match="BTUNE_PERF_MODE.*COMP, DECOMP, BALANCED"):
        BtuneConfig.from_env()


@pytest.mark.parametrize("kw, key", [({"tradeoff": 1.5}, "tradeoff"), ({"perf_mode": "FAST"}, "perf_mode"),
                                     ({"repeat_mode": "ONCE"}, "repeat_mode"), ({"bandwidth_gbs": 0}, "bandwidth_gbs"),
                                     ({"nwaits": -1}, "nwaits"), ({"min_gain": 0}, "min_gain"),
                                     ({"population": 0}, "population")])
def test_bad_config(kw, key):
    with pytest.raises(ValueError, match=key):
        BtuneConfig(**kw)


def test_bad_space_and_inputs():
    with pytest.raises(ValueError, match="btune.codecs"):
        SearchSpace(codecs=("BROTLI",))
    with pytest.raises(ValueError, match="typesize"):
        tune(b"abcd", 3, use_env=False)
    with pytest.raises(ValueError, match="empty"):
        tune(b"", 1, use_env=False)
    with pytest.raises(ValueError, match="extras"):
        tune(b"ab", 1, extras=["lzma"], use_env=False)


@pytest.mark.parametrize("repeat", ["STOP", "REPEAT_SOFT", "REPEAT_ALL"])
def test_repeat_modes_bounded(repeat):
    fav = Candidate("LZ4", "NOFILTER", "NEVER_SPLIT", 3, 0)
    cfg = BtuneConfig(repeat_mode=repeat, max_trials=150, nhards=1)
    eng = Btune(cfg, SearchSpace(codecs=("LZ4",), blocksizes=(0,)), trial=fake_trial(fav))
    res = eng.run(b"z" * 1000, 1)
    assert res.candidate.family == fav.family
    if repeat == "STOP":
        assert res.trials < 150
    else:
        assert res.trials == 150


def test_score_uses_bandwidth_and_mode():
    m = Measurement(1000, 100, 1e-6, 2e-6)
    slow = Btune(BtuneConfig(bandwidth_gbs=0.001, perf_mode="COMP"))
    fast = Btune(BtuneConfig(bandwidth_gbs=1000, perf_mode="DECOMP"))
    assert slow.score(m) == pytest.approx(1e-6 + 100 / 1e6)
    assert fast.score(m) == pytest.approx(100 / 1e12 + 2e-6)
    assert codecs_for(0.9, "COMP") == ("ZSTD", "ZLIB")
    assert codecs_for(0.5, "DECOMP") == ("LZ4", "BLOSCLZ", "LZ4HC")
    assert codecs_for(0.2, "COMP") == ("LZ4",)


def test_sample_and_incumbent_remeasured():
    data = bytes(range(256)) * 100
    s = make_sample(data, 1000, 2)
    assert len(s) <= 1000 and len(s) % 2 == 0
    fav = Candidate("LZ4", "NOFILTER", "NEVER_SPLIT", 3, 0)
    eng = Btune(BtuneConfig(nwaits=2), SearchSpace(codecs=("LZ4",), blocksizes=(0,)), trial=fake_trial(fav))
    res = eng.run(data, 1)
    waits = [r for r in res.trace if r["Btune State"] == "WAITING"]
    assert waits and all(r["Winner"] == "-" for r in waits)
    assert len(eng._meas[res.candidate]) > 1  # the winner was measured more than once


def test_extras_compete():
    data = np.random.default_rng(0).integers(0, 4, 4096).astype(np.uint8).tobytes()
    res = tune(data, 1, tradeoff=1.0, space=SearchSpace(codecs=("LZ4",), filters=("NOFILTER",), blocksizes=(0,)),
               extras=["zlib"], use_env=False)
    assert res.candidate.extra == "zlib"  # LZ4 barely compresses random 2-bit symbols; Huffman does


def test_ans_extra_codes_with_the_store_it_is_given():
    from dlrm_comp.compress.lossless import HAVE_CONSTRICTION, SymbolModelStore
    if not HAVE_CONSTRICTION:
        pytest.skip("constriction not installed")
    data = np.random.default_rng(0).integers(0, 4, 4096).astype(np.uint8).tobytes()
    store = SymbolModelStore()
    store.learn(7, np.frombuffer(data, np.uint8), 1)
    space = SearchSpace(codecs=("LZ4",), filters=("NOFILTER",), blocksizes=(0,))
    res = tune(data, 1, tradeoff=1.0, space=space, extras=["ans"], ans_table=7, store=store, use_env=False)
    assert res.candidate.extra == "ans" and res.codec.store is store  # the model coder wins on its own model
    with pytest.raises(ValueError, match="ans.store"):  # no process-wide store to fall back on
        tune(data, 1, tradeoff=1.0, space=space, extras=["ans"], ans_table=7, use_env=False)
