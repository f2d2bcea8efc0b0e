"""`benchmarks/gpu_check.py` runs every section end to end on the CPU at a toy size (`--device cpu
--quick`), so the GPU session's one script cannot rot between GPU sessions; its figures are not
checked here (timings never are), only that each section ran and reported its fields."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick",
                           "--skip-tests", "--iterations", "2", "--block", "1", "--modes", "off", "codec", "fp8",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report == json.loads(out.read_text())
    assert [(r["config"], r["mode"]) for r in report["steps"]] == [("debug", "off"), ("debug", "codec"),
                                                                    ("debug", "fp8")]
    assert report["steps"][0]["vs_off"] == 1.0
    assert report["nvcomp_probe"] == {"ran": False, "why": "no CUDA device"}
    for row in report["steps"]:
        assert {"step_ms", "kernel_launches", "h2d_copies", "d2h_copies", "sync_calls"} <= set(row)
    stages = report["stages"]
    assert stages["quantize_GBps"] > 0 and stages["reconstruct_GBps"] > 0 and stages["zstd1_host"]["cr_vs_fp32"] > 1
    codecs = {r["mode"]: r for r in report["codecs"]}
    assert {"codec", "fp16", "fp8", "int8", "mx4", "simulate"} <= set(codecs)
    assert all(r["max_err_ratio"] is None or r["max_err_ratio"] <= 1.0 for r in codecs.values())
    assert codecs["fp16"]["cr"] == 2.0 and all("speedup_100gbit" in r for r in codecs.values())
    dev = report["device_codec"]  # codec's device message path (the identity stage on the CPU)
    assert dev["stage"] == "identity" and dev["bit_identical_to_host_path"] is True and dev["max_err_ratio"] <= 1.0
    assert dev["encode_GBps"] > 0 and dev["decode_GBps"] > 0 and "speedup_100gbit" in dev and "cr_vs_zstd1" in dev
    assert dev["lossless_sweep"] == "not run: needs CUDA and nvcomp's library"
    world1, two = report["distributed"]
    assert world1["returncode"] == 0 and world1["result"]["slots"]["backward_ok"], world1
    assert two["returncode"] == 0 and two["max_err_ratio"] <= 1.0, two
    assert "step ms" in proc.stderr  # the table at the end
