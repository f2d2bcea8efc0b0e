"""Multi-process behaviour with 2-3 gloo processes on CPU, launched the way users launch them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multiproc import CODEC_BOTH_WAYS, ROOT, final_state, single_and_multi, straight_and_resumed, torchrun, train_cli
from dlrm_comp.train.logging import read_jsonl

pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize("world", [2, 3])
def test_off_matches_single_process(tiny_cfg, tmp_path, world):
    single_and_multi(tiny_cfg, tmp_path, world, "data.batch_size=36", "data.eval_batch_size=510")
    la = [r["loss"] for r in read_jsonl(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["loss"] for r in read_jsonl(tmp_path / "multi" / "metrics.jsonl") if r["kind"] == "train"]
    assert la == pytest.approx(lb, rel=1e-4)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["world_size"] == world


@pytest.mark.parametrize("world,sharding", [(2, "contiguous"), (3, "balanced")])
def test_exchange_bound_bytes_and_gradients(world, sharding):
    proc = torchrun(world, str(ROOT / "tests/dist_exchange_check.py"), sharding)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("exchange checks passed") == world


def test_codec_run_counts_real_bytes(codec_two_ranks):
    run = codec_two_ranks.finished()
    comp = json.loads((run / "summary.json").read_text())["compression"]
    # 40 iterations x 32 rows x 4 dims x 4 bytes x 8 tables, forward and backward
    assert comp["bytes_raw"] == 40 * 32 * 4 * 4 * 8
    assert comp["estimated"] is False and comp["cr"] > 2
    assert comp["bytes_meta"] == 40 * 2 * 8 * 2 * 2  # one int64 per destination and rank, both directions
    assert 0 < comp["max_err_ratio"] <= 1
    back = comp["backward"]
    assert back["bytes_raw"] == 40 * 32 * 4 * 4 * 8 and back["bytes_sent"] > 0
    tables = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "table"]
    assert {r["direction"] for r in tables} == {"fwd", "bwd"}


def test_batch_not_divisible_is_a_startup_error(tmp_path):
    proc = torchrun(3, *train_cli(tmp_path / "run", "data.batch_size=32"))
    assert proc.returncode != 0
    assert "data.batch_size" in proc.stderr and "divisible" in proc.stderr


def test_failing_rank_stops_the_run_with_its_error(tmp_path):
    proc = torchrun(2, *train_cli(tmp_path / "run", "train.iterations=200"),
                    env={"DLRM_COMP_FAIL_AT": "5", "DLRM_COMP_FAIL_RANK": "1"}, timeout=120)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr


def test_distributed_resume_matches_uninterrupted(tmp_path, codec_two_ranks):
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, *CODEC_BOTH_WAYS, straight=codec_two_ranks)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sa["compression"]["bytes_sent"] == sb["compression"]["bytes_sent"]


def test_mpiexec_launch(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not installed (pip install -e '.[mpi]')")
    cmd = [str(mpiexec), "-n", "2", sys.executable, *train_cli(tmp_path / "run", "compress.mode=codec")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["compression"]["bytes_sent"] > 0


def test_mpiexec_failing_rank_prints_its_error_before_the_abort(tmp_path):
    """MPI_Abort used to race the traceback away (5 of 8 runs): the error is flushed first now."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not installed (pip install -e '.[mpi]')")
    for attempt in range(3):
        cmd = [str(mpiexec), "-n", "2", sys.executable, *train_cli(tmp_path / f"run{attempt}", "train.iterations=200")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "DLRM_COMP_FAIL_AT": "3",
                                   "DLRM_COMP_FAIL_RANK": "1"})
        assert proc.returncode != 0
        assert "injected failure on rank 1 after iteration 3" in proc.stderr + proc.stdout, attempt


def test_mpiexec_config_error_is_exit_2_with_its_message(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not installed (pip install -e '.[mpi]')")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cmd = [str(mpiexec), "-n", "2", sys.executable, *train_cli(afile, "train.iterations=20")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "is a file, not a directory" in proc.stderr


@pytest.mark.multiprocess
def test_slot_size_exchange_trains_exactly_like_the_size_all_to_all(tmp_path, codec_two_ranks):
    """dist.size_exchange=slots moves the same messages with one collective instead of two (the
    first step's messages all overflow point-to-point): the parameters are bit-identical."""
    proc = torchrun(2, *train_cli(tmp_path / "slots", *CODEC_BOTH_WAYS, "dist.size_exchange=slots"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = {"exact": codec_two_ranks.finished(), "slots": tmp_path / "slots"}  # exact: the default
    runs = {how: json.loads((run / "summary.json").read_text()) for how, run in dirs.items()}
    saved = torch.load(dirs["exact"] / "checkpoints" / "ckpt_000000040.rank0.pt", weights_only=False)["config"]
    assert saved["dist"]["size_exchange"] == "exact"
    cards = runs["exact"]["data"]["cardinalities"]
    a, b = (final_state(dirs[how], 40, 2, cards) for how in ("exact", "slots"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exact, slots = runs["exact"]["compression"], runs["slots"]["compression"]
    assert slots["bytes_sent"] == exact["bytes_sent"] and slots["bytes_meta"] == 0 < exact["bytes_meta"]
    assert slots["bytes_pad"] > 0 and exact["bytes_pad"] == 0
    for comp in (exact, slots):  # whole bytes; the wire ratio counts what the payload ratio leaves out
        assert isinstance(comp["bytes_sent"], int) and isinstance(comp["backward"]["bytes_sent"], int)
        assert comp["bytes_wire"] == (comp["bytes_sent"] + comp["backward"]["bytes_sent"] + comp["bytes_meta"]
                                      + comp["bytes_pad"])
        assert comp["cr_wire"] == pytest.approx((comp["bytes_raw"] + comp["backward"]["bytes_raw"]) / comp["bytes_wire"])
    assert slots["cr_wire"] < exact["cr_wire"]  # the padding crossed the wire too


def test_slot_sizer_is_the_same_on_both_sides():
    from dlrm_comp.exchange.sizes import SlotSizer
    sender, receiver = SlotSizer(2), SlotSizer(2)
    assert sender.send_caps() == [0, 0]
    for sizes in ([100, 3000], [90, 3500], [130, 2000]):
        sender.update(sizes, [0, 0])
        receiver.update([0, 0], sizes)
        assert sender.send_caps() == receiver.recv_caps()
    assert sender.send_caps() == [192, 3968]  # 1.125 x the largest of the history, up to 64 bytes
