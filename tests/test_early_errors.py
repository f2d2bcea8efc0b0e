"""User mistakes end before any work with exit status 2 and a message naming the field or file."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest

from tiny import TINY_OVERRIDES
from dlrm_comp.cli.train import main
from dlrm_comp.data import criteo_cache
from dlrm_comp.data.criteo import preprocess_criteo
from test_criteo import make_rows, write_tsv

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["train.tensorboard=false", "train.progress=false"]


def cli(capsys, *args: str, sets: tuple[str, ...] = (), out: Path | None = None) -> tuple[int, str]:
    argv = ["--set", *TINY_OVERRIDES, *QUIET, *sets, *args]
    if out is not None:
        argv += ["--out", str(out)]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("sets,needle", [
    (("data.profile=bogus",), "data.profile: 'bogus' is not one of"),
    (("data.num_test_samples=-5",), "data.num_test_samples"),
    (("adaptive.policy=closed_loop", "adaptive.target_cr=nan"), "adaptive.target_cr: expected a finite number"),
    (("data.zipf_exponent=nan",), "data.zipf_exponent"),
    (("data.zipf_exponent=inf",), "data.zipf_exponent"),
    (("train.lr=.nan",), "train.lr"),
    (("compress.chunks=1000",), "compress.chunks: 1000 chunks cannot be cut from a batch of data.batch_size=32"),
    (("data.source=criteo",), "data.path"),
    (("data.source=criteo", "data.path=/nonexistent/day_0"), "does not exist"),
    (("data.cardinalities=[3, 4]",), "data.cardinalities: only used with data.profile=custom"),
    (("train.iterations=0",), "train.iterations"),
    (("compress.peers=sometimes",), "compress.peers: 'sometimes' is not one of"),
    (("compress.peers=auto", "compress.mode=fp8"), "compress.peers: auto routes"),
])
def test_bad_values_exit_2_naming_the_field(capsys, tmp_path, sets, needle):
    code, err = cli(capsys, sets=sets, out=tmp_path / "run")
    assert code == 2, err
    assert needle in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _tsv_like(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.tsv"
    good = tmp_path / "good.tsv"
    write_tsv(good, make_rows(50))
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "gzip":
        path.write_bytes(gzip.compress(good.read_bytes()))
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "directory":
        path.mkdir()
    else:  # a malformed line in the middle
        lines = good.read_text().splitlines()
        bad = {"columns": "1\t2\t3", "label": "2\t" + "\t".join(["0"] * 13 + ["ab"] * 26),
               "integer": "1\t" + "\t".join(["x1"] + ["0"] * 12 + ["ab"] * 26),
               "hex": "0\t" + "\t".join(["0"] * 13 + ["ab"] * 25 + ["zz"])}[kind]
        lines.insert(10, bad)
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind,needle", [
    ("empty", "is empty"), ("gzip", "is gzip"), ("binary", "binary file"), ("directory", "is a directory"),
    ("columns", "line 11: expected 40 tab-separated columns"), ("label", "line 11: column 1 (label)"),
    ("integer", "line 11: column 2 (integer feature I1)"), ("hex", "line 11: column 40 (categorical feature C26)"),
])
def test_criteo_file_faults_exit_2(capsys, tmp_path, kind, needle):
    path = _tsv_like(tmp_path, kind)
    code, err = cli(capsys, sets=("data.source=criteo", f"data.path=[{path}]", "data.max_ind_range=50",
                                  f"data.cache_dir={tmp_path / 'cache'}"), out=tmp_path / "run")
    assert code == 2, err
    assert "data.path" in err and needle in err and str(path.name) in err


def test_out_must_be_a_writable_directory(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, needle in ((afile, "is a file, not a directory"), (afile / "run", "is a file, so no directory"),
                        (Path("/proc/dlrm_run"), "/proc is not a place")):
        code, err = cli(capsys, out=out)
        assert code == 2 and f"--out {out}" in err and needle in err, err


def test_run_directory_and_resume_errors_exit_2(capsys, tmp_path):
    out = tmp_path / "run"
    assert cli(capsys, sets=("train.iterations=20",), out=out)[0] == 0
    code, err = cli(capsys, sets=("train.iterations=20", "compress.mode=fp8"), out=out)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    code, err = cli(capsys, "--resume", sets=("train.iterations=30", "compress.mode=fp8"), out=out)
    assert code == 2 and "compress.mode" in err and "--resume-allow compress.mode" in err
    code, err = cli(capsys, "--resume", sets=("train.iterations=10",), out=out)
    assert code == 2 and "train.iterations" in err
    code, err = cli(capsys, "--resume", "--resume-allow", "compress.bogus", sets=("train.iterations=30",), out=out)
    assert code == 2 and "not a config key" in err
    assert cli(capsys, "--resume", "--resume-allow", "compress.mode",
               sets=("train.iterations=30", "compress.mode=fp8"), out=out)[0] == 0
    assert cli(capsys, "--overwrite", sets=("train.iterations=20",), out=out)[0] == 0


def test_criteo_cache_is_rebuilt_after_a_same_size_edit(tmp_path, monkeypatch):
    src = write_tsv(tmp_path / "day.tsv", make_rows(60))
    first = preprocess_criteo([src], tmp_path / "c", max_ind_range=50)
    text = src.read_text()
    edited = text.replace("\n1\t", "\n0\t", 1) if "\n1\t" in text else text.replace("\n0\t", "\n1\t", 1)
    assert len(edited) == len(text) and edited != text
    src.write_text(edited)  # same size, same name: the old identity check reused the stale cache
    built = []
    real = criteo_cache._build
    monkeypatch.setattr(criteo_cache, "_build", lambda *a, **k: built.append(1) or real(*a, **k))
    second = preprocess_criteo([src], tmp_path / "c", max_ind_range=50)
    assert built == [1] and second.positives != first.positives
    preprocess_criteo([src], tmp_path / "c", max_ind_range=50)
    assert built == [1]  # unchanged file: reused


def _tune_main():
    spec = importlib.util.spec_from_file_location("launch_tune", ROOT / "launch" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("args,needle", [(["--thresholds", "nan"], "--thresholds"),
                                         (["--thresholds", "0.001", "inf"], "--thresholds"),
                                         (["--trials", "0"], "--trials")])
def test_tune_rejects_bad_numbers(capsys, tmp_path, args, needle):
    code = _tune_main()(["--config", str(ROOT / "configs" / "debug.yaml"), "--out", str(tmp_path / "t"), *args])
    assert code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_torchrec_backend_without_torchrec_is_exit_2_naming_the_install(capsys, tmp_path, monkeypatch):
    """Works with or without torchrec installed: the check asks importlib, which is hidden here."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torchrec", "fbgemm_gpu") else real(name, *a))
    code, err = cli(capsys, sets=("model.backend=torchrec",), out=tmp_path / "run")
    assert code == 2
    assert "model.backend" in err and "make torchrec" in err and "[torchrec] extra" in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_torchrec_codec_needs_the_torchrec_backend(capsys, tmp_path):
    code, err = cli(capsys, sets=("compress.mode=torchrec_qcomm:fp16",), out=tmp_path / "run")
    assert code == 2 and "needs model.backend=torchrec" in err


# ----------------------------------------------------------------------------- issue 24: the data checked
def _criteo_sets(tmp_path: Path, *paths: Path) -> tuple[str, ...]:
    return ("data.source=criteo", f"data.path=[{', '.join(map(str, paths))}]", "data.max_ind_range=50",
            f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=16")


def test_the_same_criteo_file_twice_is_refused(capsys, tmp_path):
    src = write_tsv(tmp_path / "s.tsv", make_rows(200))
    code, err = cli(capsys, sets=_criteo_sets(tmp_path, src, src), out=tmp_path / "run")
    assert code == 2 and "data.path" in err and "the same file" in err and "list each file once" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rows,sets", [(200, ("data.val_fraction=0",)), (15, ())])
def test_an_empty_validation_split_is_refused_before_training(capsys, tmp_path, rows, sets):
    src = write_tsv(tmp_path / "s.tsv", make_rows(rows))
    code, err = cli(capsys, sets=(*_criteo_sets(tmp_path, src), "data.batch_size=4", *sets), out=tmp_path / "run")
    assert code == 2 and "data.val_fraction: the validation split has no rows" in err, err
    assert not (tmp_path / "run").exists()  # refused after --out was made: not left behind


def test_a_cache_dir_on_proc_is_blamed_on_cache_dir(capsys, tmp_path):
    src = write_tsv(tmp_path / "s.tsv", make_rows(200))
    sets = (*_criteo_sets(tmp_path, src)[:-2], "data.cache_dir=/proc/x")
    code, err = cli(capsys, sets=sets, out=tmp_path / "run")
    assert code == 2 and "data.cache_dir: /proc/x" in err and "data.path" not in err, err


def test_resume_on_a_directory_that_does_not_exist_is_an_error(capsys, tmp_path):
    code, err = cli(capsys, "--resume", out=tmp_path / "mistyped")
    assert code == 2 and "--resume" in err and "does not exist" in err
    assert not (tmp_path / "mistyped").exists()


def test_a_diverging_run_prints_one_line_naming_train_lr(capsys, tmp_path):
    code, err = cli(capsys, sets=("train.lr=1e30",), out=tmp_path / "run")
    assert code == 3 and "train.lr" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_resume_on_other_data_at_the_same_path_is_refused(capsys, tmp_path):
    src = write_tsv(tmp_path / "s.tsv", make_rows(400))
    sets = (*_criteo_sets(tmp_path, src), "train.iterations=20")
    assert cli(capsys, sets=sets, out=tmp_path / "run")[0] == 0
    write_tsv(src, make_rows(400, seed=1))  # other rows, same path
    longer = (*_criteo_sets(tmp_path, src), "train.iterations=30")
    code, err = cli(capsys, "--resume", sets=longer, out=tmp_path / "run")
    assert code == 2 and "the data changed since the checkpoint" in err and "s.tsv differs" in err
    assert "--resume-allow data.sources" in err
    code, err = cli(capsys, "--resume", "--resume-allow", "data.sources", sets=longer, out=tmp_path / "run")
    assert code == 0, err


@pytest.mark.parametrize("tool", ["tune", "ablate"])
def test_jobs_zero_is_refused(capsys, tmp_path, tool):
    spec = importlib.util.spec_from_file_location(f"launch_{tool}", ROOT / "launch" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = ["--config"] if tool == "tune" else ["--base"]
    args = [*base, str(ROOT / "configs" / "debug.yaml"), "--out", str(tmp_path / "t"), "--jobs", "0"]
    if tool == "ablate":
        args += ["--variants", str(ROOT / "configs" / "ablations" / "mode_fp16.yaml")]
    with pytest.raises(SystemExit) as exit_:
        module.main(args)
    assert exit_.value.code == 2 and "--jobs: 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_keys_a_launch_ignores_are_refused(tiny_cfg, tmp_path):
    import torch

    from dlrm_comp.config import ConfigError
    from dlrm_comp.distributed.env import DistEnv, init_distributed
    from dlrm_comp.train.loop import Trainer
    with pytest.raises(ConfigError, match="dist.backend: 'nccl' .*one process"):
        init_distributed("nccl", torch.device("cpu"), environ={})
    assert init_distributed("auto", torch.device("cpu"), environ={}).world_size == 1
    two_ranks = DistEnv(0, 2, 0, "torchrun", "gloo")
    with pytest.raises(ConfigError, match="compress.chunks: 4 emulates destinations in one process; this run's 2 ranks"):
        Trainer(tiny_cfg("compress.mode=fp16", "compress.chunks=4"), tmp_path / "r", env=two_ranks)


def test_the_ranks_message_reaches_torchruns_error_file(capsys, tmp_path, monkeypatch):
    """torchrun prints the error file's message as the root cause, last (not a link to its docs)."""
    import json
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    code, err = cli(capsys, sets=("train.seed=-1",), out=tmp_path / "run")
    message = json.loads(error_file.read_text())["message"]
    assert code == 2 and message.startswith("config error: train.seed") and message.endswith("(exit status 2)")
