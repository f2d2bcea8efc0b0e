"""Offline benchmark pipeline end to end on a tiny config, and its input checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plot_checks import assert_plot
from tiny import TINY_SHAPE

from dlrm_comp.bench.cli import main
from dlrm_comp.bench.dumps import DumpFormatError, list_dumps, load_dump, read_meta
from dlrm_comp.bench.pipeline import quantize_dir

ROOT = Path(__file__).resolve().parents[1]
# the tiny data and model, wider: 64 x 8 messages (the dumps' shape checked below); the bench sets the run
TINY = [*TINY_SHAPE, "data.batch_size=64", "data.eval_batch_size=256", "data.num_val_samples=512",
        "model.emb_dim=8", "model.bottom_mlp=13-16-8", "model.top_mlp=16-1", "compress.mode=off",
        "compress.table_preset=none", "train.threads=1", "train.device=cpu"]


def test_bench_all_tiny(tmp_path):
    out = tmp_path / "b"
    rc = main(["--quiet", "all", "--config", str(ROOT / "configs/debug.yaml"), "--set", *TINY,
               "--iterations", "21", "--every", "10", "--out", str(out), "--bounds", "1e-2", "5e-2",
               "--factor", "4", "--bandwidths", "10", "100", "--no-floats"])
    assert rc == 0
    meta = json.loads((out / "dumps/meta.json").read_text())
    assert {"batch", "dim", "tables", "cardinalities", "every"} <= set(meta)
    assert meta["batch"] == 64 and meta["dim"] == 8 and meta["every"] == 10
    files = list_dumps(out / "dumps")
    assert len(files) == 8 * 3  # 8 tiny tables at iterations 0, 10, 20
    assert files[0][2].stat().st_size == 64 * 8 * 4
    rows = json.loads((out / "encode/results.json").read_text())
    assert {r["size"] for r in rows} == {"real", "padded", "dedup"}
    # dedup: the same messages, distinct bags only, ratios against the whole message: never worse
    by = {(r["table"], r["iteration"], r["eb_rel"], r["encoder"], r["size"]): r for r in rows}
    pairs = [(r, by[k[:4] + ("real",)]) for k, r in by.items() if k[4] == "dedup" and r["encoder"] == "identity"]
    assert pairs and all(d["message_bytes"] == r["message_bytes"] and d["bytes"] <= r["bytes"] for d, r in pairs)
    assert any(d["bytes"] < r["bytes"] for d, r in pairs)
    encs = {r["encoder"] for r in rows}
    assert {"identity", "zlib-auto", "btune", "blosc2-zstd5"} <= encs
    real = [r for r in rows if r["size"] == "real"]
    assert {r["message_bytes"] for r in real} == {64 * 8 * 4}
    assert {r["message_bytes"] for r in rows if r["size"] == "padded"} == {4 * 64 * 8 * 4}
    report = out / "report"
    md = (report / "report.md").read_text()
    for png in ("ratio_per_table.png", "ratio_vs_bound.png", "time_stacked_real.png"):
        assert_plot(report / png)
        assert f"({png})" in md
    summary = json.loads((report / "summary.json").read_text())
    assert summary["hybrid"] and all(h["hybrid_speedup"] >= h["best_single_speedup"] * 0.999 for h in summary["hybrid"])
    assert (report / "per_table.csv").exists()


def test_wrong_file_size(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    np.zeros((4, 3), "<f4").tofile(d / "EMB_0_iter_0.bin")
    np.zeros(5, "<f4").tofile(d / "EMB_1_iter_0.bin")
    with pytest.raises(DumpFormatError, match=r"EMB_1_iter_0.bin: 20 bytes, expected batch \* dim \* 4 = 4 \* 3 \* 4 = 48"):
        quantize_dir(d, tmp_path / "q", [1e-2], batch=4, dim=3, progress=False)
    assert load_dump(d / "EMB_0_iter_0.bin", 4, 3).shape == (4, 3)
    with pytest.raises(DumpFormatError, match="--batch and --dim"):
        read_meta(d)
    # CLI: clear message, exit status 2
    assert main(["--quiet", "quantize", "--dumps", str(d), "--out", str(tmp_path / "q"), "--batch", "4", "--dim", "3"]) == 2


def test_quantize_any_directory_and_bad_args(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in (0, 5):
        rng.normal(0, 0.1, (16, 4)).astype("<f4").tofile(d / f"EMB_2_iter_{k}.bin")
    entries = quantize_dir(d, tmp_path / "q", [1e-2, 3e-2], width="2", batch=16, dim=4, progress=False)
    assert len(entries) == 4 and all(e["width"] == 2 for e in entries)
    assert (tmp_path / "q" / entries[0]["file"]).stat().st_size == 16 * 4 * 2
    with pytest.raises(ValueError, match="quantize.width"):
        quantize_dir(d, tmp_path / "q", [1e-2], width="3", batch=16, dim=4, progress=False)
    with pytest.raises(ValueError, match="quantize.bounds"):
        quantize_dir(d, tmp_path / "q", [0.9], batch=16, dim=4, progress=False)
    with pytest.raises(DumpFormatError, match="no EMB_"):
        list_dumps(tmp_path / "q")


def test_quantize_handles_subnormal_and_huge_dumps(tmp_path):
    """Values near 1e-40 (float32 subnormals: no step has a float32 reciprocal) and near the
    float32 maximum (the range overflows) go through the training quantizer offline (the old
    per-chunk path raised OverflowError): training sends such chunks RAW, so they have no codes
    and are counted as skipped; a normal dump beside them is quantized; the codec decodes the
    extreme ones exactly."""
    from dlrm_comp.compress.codecs.offline import roundtrip
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(1)
    tiny = (rng.normal(0, 1, (16, 4)) * 1e-40).astype("<f4")
    huge = (rng.normal(0, 1, (16, 4)) * 1e38).astype("<f4")
    tiny.tofile(d / "EMB_0_iter_0.bin")
    huge.tofile(d / "EMB_1_iter_0.bin")
    rng.normal(0, 1, (16, 4)).astype("<f4").tofile(d / "EMB_2_iter_0.bin")
    assert main(["--quiet", "quantize", "--dumps", str(d), "--out", str(tmp_path / "q"), "--batch", "16",
                 "--dim", "4"]) == 0
    index = json.loads((tmp_path / "q" / "codes.json").read_text())
    n_bounds = len(index["settings"]["bounds"])
    assert index["skipped"] == 2 * n_bounds and [e["table"] for e in index["entries"]] == [2] * n_bounds
    for x in (tiny, huge):
        rt = roundtrip("codec", [torch.from_numpy(x)], 0.01)
        assert torch.equal(rt.decoded[0], torch.from_numpy(x)) and rt.max_err_ratio == 0.0
