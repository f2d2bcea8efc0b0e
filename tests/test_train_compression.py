"""Compression in the training loop (one process: the loopback exchange): every mode trains and
summarises, bounds follow the lists and decay, totals survive resume, bad input fails fast."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["simulate", "codec", "sz", "fp16", "bf16", "fp8", "int8"])
def test_every_mode_trains_and_summarises(tiny_cfg, tmp_path, mode):
    cfg = tiny_cfg(f"compress.mode={mode}", "compress.chunks=2", "train.iterations=20",
                   "compress.print_tables=false")
    summary = Trainer(cfg, tmp_path).run()
    comp = summary["compression"]
    assert comp["mode"] == mode
    assert comp["bytes_raw"] == 20 * 32 * 4 * 4 * len(cfg_tables(tmp_path))  # iters x B x d x fp32 x tables
    assert comp["bytes_sent"] > 0 and comp["cr"] > 1.0
    assert comp["estimated"] == (mode == "simulate")
    if mode in ("fp16", "bf16", "fp8", "int8"):
        assert comp["max_err_ratio"] is None
    else:
        assert 0 <= comp["max_err_ratio"] <= 1.0
    tables = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "table"]
    assert {r["table"] for r in tables} == set(range(len(cfg_tables(tmp_path))))
    for r in tables:
        assert set(r) >= {"iteration", "table", "direction", "eb_rel", "codec", "bytes_raw", "bytes_sent", "cr",
                          "max_err_ratio", "enc_s", "dec_s"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())["compression"]
    assert len(on_disk["per_table"]) == len(cfg_tables(tmp_path))
    for key in ("cr", "ideal_cr", "harmonic_mean_cr", "bytes_raw", "bytes_sent", "estimated", "max_err_ratio"):
        assert key in on_disk


def cfg_tables(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["data"]["cardinalities"]


def test_bounds_follow_table_lists_and_decay(tiny_cfg, tmp_path):
    cfg = tiny_cfg("compress.mode=simulate", "compress.tighten_tables=[0]", "compress.loosen_tables=[1]",
                   "compress.decay.func=linear", "compress.decay.constant=2", "compress.decay.early_stage=20",
                   "train.iterations=10", "compress.print_tables=false")
    Trainer(cfg, tmp_path).run()
    per_table = json.loads((tmp_path / "summary.json").read_text())["compression"]["per_table"]
    assert per_table[0]["eb_rel_base"] == 0.01 and per_table[1]["eb_rel_base"] == 0.05
    assert per_table[2]["eb_rel_base"] == 0.03
    # the last step ran at t=9 of E=20: m = 2 * (1 - 0.45 * 0.5) = 1.55
    assert per_table[0]["eb_rel_last"] == pytest.approx(0.0155)


def test_compression_totals_survive_resume(tiny_cfg, straight_and_resumed):
    cfg = tiny_cfg("compress.mode=codec", "compress.print_tables=false")
    straight, resumed = straight_and_resumed(cfg, stop_after=25)
    assert resumed["compression"]["bytes_raw"] == straight["compression"]["bytes_raw"]
    assert resumed["compression"]["bytes_sent"] == straight["compression"]["bytes_sent"]


def test_bad_table_index_is_a_config_error(tiny_cfg):
    from dlrm_comp.config import ConfigError
    with pytest.raises(ConfigError, match="tighten_tables"):
        Trainer(tiny_cfg("compress.mode=codec", "compress.tighten_tables=[99]"), "unused-dir")


def test_unknown_decay_fails_fast_with_choices(tmp_path):
    env = {"DECAY_FUNC": "bogus", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--config", str(ROOT / "configs/debug.yaml"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for name in ("linear", "log", "step", "constant"):
        assert name in proc.stderr
