"""Launch helpers shared by the multi-process tests: torchrun with gloo on CPU, the training
CLI with the tiny config, and a finished run's parameters under global table names."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from tiny import TINY_OVERRIDES
from dlrm_comp.distributed.sharding import place_tables, tables_of

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["train.progress=false", "compress.print_tables=false", "train.tensorboard=false"]
# the codec both ways at its default bound: conftest's shared 2-rank run (`codec_two_ranks`)
CODEC_BOTH_WAYS = ("compress.mode=codec", "compress.backward.mode=codec", "compress.backward.error_bound=0.01")


# A rank of a TorchRec run once died in CI with this C++ abort (no Python error; 0 of 56 runs
# reproduced it, alone or 3 at a time). Ranks run with faulthandler on, so a recurrence prints
# every thread's Python stack; a fresh run that ends this way is run once more, and the first
# attempt's output is kept beside the run directory and reported as a warning.
NATIVE_ABORT = "terminate called without an active exception"


def torchrun(nproc: int, *args: str, env: dict | None = None, timeout: int = 240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    injected = any(key in full_env for key in ("DLRM_COMP_FAIL_AT", "DLRM_COMP_SIGNAL_AT"))  # meant to fail
    if proc.returncode and NATIVE_ABORT in proc.stderr and out is not None and "--resume" not in args \
            and not injected:
        kept = out.with_name(out.name + ".native-abort.log")
        kept.write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
        warnings.warn(f"a rank aborted natively ({NATIVE_ABORT!r}); output kept in {kept}; running again")
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    return proc


def torchrun_nodes(nodes: int, *args: str, timeout: int = 240) -> list[subprocess.CompletedProcess]:
    """``nodes`` torchrun agents on this host, one rank each, each its own node (``GROUP_RANK``):
    what the link benchmark runs in its namespaces, without the namespaces (gloo over loopback)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
                               f"--node_rank={i}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                               f"--master_port={port}", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for i in range(nodes)]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def train_cli(out: Path, *overrides: str, base: tuple[str, ...] = tuple(TINY_OVERRIDES),
              configs: tuple[str, ...] = ()) -> list[str]:
    files = [arg for c in configs for arg in ("--config", str(ROOT / c))]
    return [str(ROOT / "launch/train.py"), *files, "--set", *base, *QUIET, *overrides, "--out", str(out)]


def final_state(run: Path, iterations: int, world: int, cards: list[int], dim: int = 4,
                sharding: str = "contiguous") -> dict[str, torch.Tensor]:
    """Parameters of a finished run, with sharded tables renamed to their global index (the
    torchrec backend's checkpoints already use global names)."""
    ckpt = run / "checkpoints"
    if world == 1:
        return torch.load(ckpt / f"ckpt_{iterations:09d}.pt", weights_only=False)["model"]
    owners = place_tables(cards, dim, world, sharding)
    state = {}
    for rank in range(world):
        saved = torch.load(ckpt / f"ckpt_{iterations:09d}.rank{rank}.pt", weights_only=False)
        torchrec = saved["config"]["model"].get("backend") == "torchrec"
        for key, value in saved["model"].items():
            if key.startswith("embeddings.") and not torchrec:
                local = int(key.split(".")[1])
                key = f"embeddings.{tables_of(owners, rank)[local]}.weight"
            state[key] = value
    return state


def together(*launches):
    """Call independent launches (zero-argument callables: each starts its processes and waits
    for them) at the same time, one thread each, and return their results in order. Two launches
    spend most of their time importing torch; side by side they share the cores instead of
    waiting on each other. An exception in any is raised here, after all have finished."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(launches)) as pool:
        futures = [pool.submit(launch) for launch in launches]
        return [future.result() for future in futures]


class SharedRun:
    """One torchrun launch of the tiny config (plus ``overrides``) that several tests of a module
    read, instead of each launching the same configuration again: ``run.out`` after
    ``run.finished()``, which launches it the first time and asserts that it succeeded."""

    def __init__(self, out: Path, world: int, *overrides: str):
        self.out, self.world, self.overrides, self.proc = out, world, overrides, None

    def finished(self) -> Path:
        if self.proc is None:
            self.proc = torchrun(self.world, *train_cli(self.out, *self.overrides))
        assert self.proc.returncode == 0, self.proc.stderr[-3000:]
        return self.out


def single_and_multi(tiny_cfg, tmp_path: Path, world: int, *overrides: str, single: tuple[str, ...] = (),
                     multi: SharedRun | None = None):
    """The tiny config trained in one process (plus ``single`` overrides) and by ``world``
    torchrun ranks; checks that their final parameters match and returns the one-process trainer.
    ``multi``: the ranks' run of the same ``world`` and ``overrides``, shared with other tests."""
    from dlrm_comp.train.loop import Trainer
    if multi is not None:
        assert (multi.world, multi.overrides) == (world, overrides)
    one = Trainer(tiny_cfg(*overrides, *QUIET, *single), tmp_path / "single")
    one.run()
    if multi is None:
        proc = torchrun(world, *train_cli(tmp_path / "multi", *overrides))
        assert proc.returncode == 0, proc.stderr[-3000:]
    multi_out = tmp_path / "multi" if multi is None else multi.finished()
    cards = one.source.cardinalities
    a = final_state(tmp_path / "single", one.iterations, 1, cards)
    b = final_state(multi_out, one.iterations, world, cards)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    return one


def straight_and_resumed(tmp_path: Path, *overrides: str, world: int = 2, fail_at: int = 25, iterations: int = 40,
                         straight: SharedRun | None = None):
    """A torchrun run straight through (``a``) and the same run killed after ``fail_at`` steps
    then resumed (``b``); returns both runs' final parameters and summaries. The straight run and
    the killed one are independent: they run side by side. ``straight``: the straight run of the
    same ``world`` and ``overrides``, shared with other tests."""
    import json
    killed_run = lambda: torchrun(world, *train_cli(tmp_path / "b", *overrides),  # noqa: E731
                                  env={"DLRM_COMP_FAIL_AT": str(fail_at)})
    if straight is None:
        straight = SharedRun(tmp_path / "a", world, *overrides)
        _, killed = together(straight.finished, killed_run)
    else:
        assert (straight.world, straight.overrides) == (world, overrides)
        killed = killed_run()
    runs = (straight.finished(), tmp_path / "b")
    assert killed.returncode != 0
    assert f"injected failure on rank 0 after iteration {fail_at}" in killed.stderr, killed.stderr[-3000:]
    resumed = torchrun(world, *train_cli(tmp_path / "b", *overrides), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    cards = summaries[0]["data"]["cardinalities"]
    states = [final_state(r, iterations, world, cards) for r in runs]
    return states, summaries


def kill_after_checkpoint(out: Path, *overrides: str, iteration: int = 60, timeout: float = 180, meanwhile=None):
    """Start the training CLI (the tiny config, then ``overrides``) into ``out`` and kill -9
    it a moment after its checkpoint of ``iteration`` appears: an arbitrary point mid-step or
    mid-write, as a scheduler's kill would be. ``meanwhile``: a callable run in this thread while
    the CLI trains (a thread of its own watches for the checkpoint and kills); its result is
    returned once the CLI is dead."""
    import signal
    import threading
    import time
    cmd = [sys.executable, str(ROOT / "launch/train.py"), "--set", *TINY_OVERRIDES, *overrides, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt, name = out / "checkpoints", f"ckpt_{iteration:09d}.pt"

    def watch_and_kill():
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None:
                if ckpt.is_dir() and any(p.name >= name for p in ckpt.glob("ckpt_*.pt")):
                    break
                time.sleep(0.01)
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.003)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    if meanwhile is None:
        return watch_and_kill()
    failure = []
    watcher = threading.Thread(target=lambda: failure.extend(_raised(watch_and_kill)))
    watcher.start()
    try:
        result = meanwhile()
    finally:
        watcher.join()
    if failure:
        raise failure[0]
    return result


def _raised(call) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:  # handed to the caller's thread
        return [exc]
    return []
