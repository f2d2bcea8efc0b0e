"""Ablation runner: table and plots from fake run directories, baseline insertion, skip and resume."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plot_checks import assert_plot
from tiny import tiny_yaml

from dlrm_comp.config import load_config
from dlrm_comp.study.ablate import ablate, discover_variants, ensure_baseline, run_variants, summarize
from dlrm_comp.study.fake import make_fake_run
from dlrm_comp.study.report import build_table, to_markdown
from dlrm_comp.study.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
SWEEP_BASE = ("train.iterations=20", "train.eval_every=10", "train.tensorboard=false", "compress.mode=codec",
              "compress.table_preset=rank:top=2,bottom=3")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fake_sweep(tmp_path):
    runs = tmp_path / "runs"
    make_fake_run(runs / "off", "off", 0.800, None)
    make_fake_run(runs / "codec", "codec", 0.7990, 12.0, seed=1)
    make_fake_run(runs / "int8", "int8", 0.7998, 4.0, seed=2)
    make_fake_run(runs / "broken", "broken", 0.7, 3.0, write_summary=False)
    return tmp_path, [load_run(runs / n, name=n) for n in ("off", "codec", "int8", "broken")]


def test_ablate_table_deltas_and_ratios(fake_sweep):
    _, runs = fake_sweep
    rows = {r["variant"]: r for r in build_table(runs, "off")}
    assert rows["off"]["auc_delta"] == 0.0 and rows["off"]["cr"] == 1.0 and rows["off"]["step_ratio"] == 1.0
    assert rows["codec"]["auc_delta"] == pytest.approx(-0.001)
    assert rows["codec"]["step_ratio"] == pytest.approx(1.3)
    assert rows["codec"]["cr"] == pytest.approx(runs[1].summary["compression"]["cr"])
    assert rows["codec"]["harmonic_mean_cr"] < rows["codec"]["cr"] + 1e-9
    assert rows["broken"]["status"] == "missing" and rows["broken"]["auc"] is None
    md = to_markdown(list(rows.values()))
    assert md.count("\n") == 6 and "dAUC vs off" in md and "+0.0000" in md and "-0.0010" in md


def test_ablate_running_ratio_is_cumulative(fake_sweep):
    _, runs = fake_sweep
    codec = runs[1]
    assert [it for it, _ in codec.cr_curve] == [250, 500, 750, 1000]
    first_interval = codec.interval_cr[0][1]
    assert codec.cr_curve[0][1] == pytest.approx(first_interval)
    # the running average lags the per-interval ratio, which falls over this fake run
    assert codec.interval_cr[-1][1] < codec.cr_curve[-1][1] < codec.cr_curve[0][1]
    recs = [json.loads(x) for x in (codec.path / "metrics.jsonl").read_text().splitlines()]
    tab = [r for r in recs if r["kind"] == "table"]
    assert codec.cr_curve[-1][1] == pytest.approx(sum(r["bytes_raw"] for r in tab) / sum(r["bytes_sent"] for r in tab))
    assert runs[0].cr_curve == []


def test_ablate_summarize_writes_table_plots_report(fake_sweep):
    out, runs = fake_sweep
    rows = summarize(runs, out, "off")
    with open(out / "table.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in csv_rows] == ["off", "codec", "int8", "broken"]
    assert float(csv_rows[1]["auc_delta"]) == pytest.approx(-0.001)
    report = (out / "report.md").read_text()
    for name in ("auc", "cr", "per_table", "step"):
        png = out / "plots" / f"{name}.png"
        assert_plot(png)
        assert f"](plots/{name}.png)" in report
    assert "Missing (failed or not run): broken" in report
    assert len(rows) == 4


def test_ablate_variants_get_names_and_an_off_baseline(tmp_path):
    base = tiny_yaml(tmp_path / "base.yaml", *SWEEP_BASE)
    a = _write(tmp_path / "v" / "a.yaml", "name: loose\ncompress: {base_error_bound: 0.1}\n")
    b = _write(tmp_path / "v" / "int8.yaml", "compress: {mode: int8}\n")
    c = _write(tmp_path / "v2" / "a.yaml", "name: loose\ncompress: {base_error_bound: 0.2}\n")
    variants = discover_variants([a, b, c])
    assert [v.name for v in variants] == ["loose", "int8", "loose_1"]
    with_off, name = ensure_baseline([base], variants, tmp_path / "out")
    assert name == "off" and with_off[0].name == "off" and len(with_off) == 4
    assert load_config([base, *with_off[0].configs], []).compress.mode == "off"
    # an existing uncompressed variant is used as is (moved first), nothing added
    off = _write(tmp_path / "v" / "plain.yaml", "name: plain\ncompress: {mode: \"off\"}\n")
    again, name2 = ensure_baseline([base], discover_variants([a, off]), tmp_path / "out2")
    assert name2 == "plain" and [v.name for v in again] == ["plain", "loose"]


def test_ablate_resume_after_kill_and_skip_done(tmp_path, monkeypatch):
    """A run killed mid-way resumes from its checkpoint; finished variants are skipped."""
    base = tiny_yaml(tmp_path / "base.yaml", *SWEEP_BASE)
    variant = _write(tmp_path / "loose.yaml", "name: loose\ncompress: {base_error_bound: 0.1}\n")
    out = tmp_path / "sweep"
    logs: list[str] = []
    monkeypatch.setenv("DLRM_COMP_FAIL_AT", "10")  # every run "dies" after iteration 10 (checkpoint at 10)
    first = ablate([base], [variant], out, jobs=2, log=logs.append)
    assert set(first["failed"]) == {"off", "loose"}
    assert (out / "runs" / "loose" / "checkpoints").is_dir() and not (out / "runs" / "loose" / "summary.json").exists()
    assert (out / "report.md").exists()  # a report of what there is, even then
    monkeypatch.delenv("DLRM_COMP_FAIL_AT")
    logs.clear()
    (out / "runs" / "off" / "summary.json").write_text(json.dumps({"name": "off", "final_eval": {
        "auc": 0.5, "logloss": 0.7, "accuracy": 0.7}, "step_s_mean": 0.01}))  # pretend off finished
    second = ablate([base], [variant], out, jobs=2, log=logs.append)
    assert not second["failed"]
    assert any("off: summary.json exists, skipped" in line for line in logs)
    assert any("loose: resuming from checkpoint" in line for line in logs)
    assert "resumed from" in (out / "runs" / "loose" / "train.log").read_text()
    rows = {r["variant"]: r for r in second["rows"]}
    assert rows["loose"]["status"] == "ok" and rows["loose"]["cr"] > 1 and rows["loose"]["auc_delta"] is not None
    logs.clear()
    third = ablate([base], [variant], out, log=logs.append)  # nothing left to run
    assert all(r.status == "skipped" for r in third["results"].values())


def test_ablate_cli_config_error_exit_2(tmp_path):
    base = tiny_yaml(tmp_path / "base.yaml", *SWEEP_BASE)
    bad = _write(tmp_path / "bad.yaml", "compress: {mode: zip}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "ablate.py"), "--base", str(base), "--variants",
                           str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "compress.mode" in proc.stderr and "bad" in proc.stderr


def test_ablate_run_variants_skips_existing(tmp_path):
    base = tiny_yaml(tmp_path / "base.yaml", *SWEEP_BASE)
    variants = discover_variants([_write(tmp_path / "x.yaml", "name: x\n")])
    make_fake_run(tmp_path / "runs" / "x", "x", 0.8, 5.0)
    res = run_variants([base], variants, tmp_path / "runs", jobs=1, log=lambda s: None)
    assert res["x"].status == "skipped"


def test_children_die_with_a_terminated_parent(tmp_path):
    """SIGTERM to the sweep raises KeyboardInterrupt in it and takes its children down; the old handler returns."""
    import os
    import signal

    from dlrm_comp.study.children import ChildProcesses
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with ChildProcesses(grace_s=5) as children:
            child = children.start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "child.log")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives first
    assert child.poll() is not None and signal.getsignal(signal.SIGTERM) is before
    assert "$ " in (tmp_path / "child.log").read_text()


def test_a_second_sigterm_does_not_cut_the_clean_up_short(tmp_path):
    """A child that ignores SIGTERM is killed after the grace time even when a second SIGTERM
    reaches the parent while it waits (schedulers send several)."""
    import os
    import signal
    import threading

    from dlrm_comp.study.children import ChildProcesses
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('IGNORING' .lower(), flush=True); time.sleep(60)")
    log = tmp_path / "child.log"
    outer = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must never reach pytest's default
    try:
        with pytest.raises(KeyboardInterrupt):
            with ChildProcesses(grace_s=2) as children:
                child = children.start([sys.executable, "-c", stubborn], log)
                deadline = time.time() + 30
                while "\nignoring\n" not in log.read_text() and time.time() < deadline:
                    time.sleep(0.05)
                second = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))  # in the grace wait
                second.start()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        second.join()
        assert child.poll() == -signal.SIGKILL  # it ignored the terminate: killed after the grace time
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_a_variant_without_a_checkpoint_starts_afresh(tmp_path):
    """Killed before its first checkpoint, a variant left records a fresh run refuses to mix with:
    the sweep owns the folder, so it passes --overwrite (and --resume once a checkpoint exists)."""
    from dlrm_comp.study.ablate import Variant, train_command
    variant = Variant(name="v", configs=[tmp_path / "v.yaml"])
    assert train_command([tmp_path / "b.yaml"], variant, tmp_path / "runs" / "v")[-1] == "--overwrite"
    assert train_command([tmp_path / "b.yaml"], variant, tmp_path / "runs" / "v", resume=True)[-1] == "--resume"
