#!/usr/bin/env python
"""Samples/s of the training step on the debug and kaggle-profile configs, printed as JSON.

The baseline that compression overheads are measured against: each config runs with every
`--modes` value (default: off, then codec) in the same process, side by side, in interleaved
blocks of `--block` steps (so a noisy moment of the machine costs every mode alike), and reports
the median step time and its ratio to the first mode. The steps are the Trainer's own
(`Trainer.steps`), so every mode pays what training pays: hooks, interval records, decisions.
`--backend torchrec` (or `both`) runs every mode on the TorchRec backend too (one process:
DistributedModelParallel on a one-rank group, the exchange on the loopback transport),
interleaved with the pure-torch runs, each row with its `backend` and the TorchRec rows with
their step time over the pure-torch run of the same mode. `torchrec_qcomm:*` modes run on the
TorchRec backend only.

    python benchmarks/train_throughput.py [--iterations 300] [--modes off codec] [--backend torch|torchrec|both]
                                          [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402


class Run:
    """One config x mode: a trainer's real steps (`Trainer.steps`: the extensions' hooks, the
    interval records and decisions), taken on demand so modes can interleave; no evaluation or
    checkpoint in between, and none at the end (the run is closed before its last step)."""

    def __init__(self, config: Path, overrides: list[str], warmup: int, steps: int):
        self.config, self.overrides = config, overrides
        self.cfg = load_config([config], [*overrides, "train.progress=false", "train.tensorboard=false",
                                          "train.eval_every=0", "train.checkpoint_every=0",
                                          "compress.print_tables=false"])  # stdout is the JSON
        self._tmp = tempfile.TemporaryDirectory()
        t_build = time.perf_counter()
        self.trainer = Trainer(self.cfg, self._tmp.name, handle_signals=False)
        self.build_s = time.perf_counter() - t_build
        if self.trainer.iterations <= warmup + steps:
            raise SystemExit(f"{config}: a run of {self.trainer.iterations} iterations, not more than --warmup + "
                             f"--iterations ({warmup + steps}); raise train.iterations with --set")
        self._steps = self.trainer.steps()
        self.warmup = warmup
        self.step(warmup)

    def step(self, n: int) -> None:
        for _ in range(n):
            next(self._steps)

    @property
    def times(self) -> list[float]:
        return self.trainer.step_times[self.warmup:]

    def result(self) -> dict:
        median = statistics.median(self.times)
        self._steps.close()
        self._tmp.cleanup()
        return {
            "config": str(self.config.relative_to(ROOT)),
            "overrides": self.overrides,
            "batch_size": self.cfg.data.batch_size,
            "tables": len(self.trainer.source.cardinalities),
            "embedding_rows": int(sum(self.trainer.source.cardinalities)),
            "backend": self.cfg.model.backend,
            "compress_mode": self.cfg.compress.mode,
            "dedup": self.cfg.compress.dedup,
            "row_cache": self.cfg.compress.row_cache,
            "iterations": len(self.times),
            "build_s": round(self.build_s, 3),
            "step_s_median": median,
            "step_s_mean": statistics.fmean(self.times),
            "samples_per_s": self.cfg.data.batch_size / median,
        }


def mode_overrides(label: str) -> list[str]:
    """``codec`` -> compress.mode=codec; ``codec+dedup`` also switches bag deduplication on;
    ``codec+dedup+cache`` the row cache too; ``codec+host`` / ``codec+device`` pin
    ``compress.message_path`` (the default, ``auto``, takes the device path on CUDA with nvcomp)."""
    mode, _, extra = label.partition("+")
    if extra not in ("", "dedup", "dedup+cache", "host", "device"):
        raise SystemExit(f"--modes: {label!r}: the only suffixes are +dedup, +dedup+cache, +host and +device")
    if extra in ("host", "device"):
        return [f"compress.mode={mode}", f"compress.message_path={extra}"]
    return [f"compress.mode={mode}"] + (["compress.dedup=on"] if extra else []) + \
        (["compress.row_cache=on"] if extra.endswith("cache") else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/debug.yaml", "configs/kaggle.yaml"])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=20, help="steps per mode before switching to the next")
    parser.add_argument("--modes", nargs="+", default=["off", "codec"],
                        help="compress.mode values measured side by side on each config; MODE+dedup adds "
                             "compress.dedup=on, MODE+dedup+cache compress.row_cache=on too")
    parser.add_argument("--backend", choices=["torch", "torchrec", "both"], default="torch",
                        help="torch: the pure-torch model; torchrec (same as both): also the TorchRec backend, "
                             "beside the pure-torch runs")
    parser.add_argument("--set", nargs="+", default=[], dest="overrides")
    args = parser.parse_args()
    backends = ["torch"] if args.backend == "torch" else ["torch", "torchrec"]
    results = []
    blocks = max(1, args.iterations // args.block)
    for c in args.configs:
        runs = [Run(ROOT / c, [*args.overrides, *mode_overrides(m), f"model.backend={b}"], args.warmup,
                    blocks * args.block)
                for m in args.modes for b in backends if b == "torchrec" or not m.startswith("torchrec_qcomm")]
        # interleaved blocks: a noisy moment of the machine costs every mode alike
        for _ in range(blocks):
            for run in runs:
                run.step(args.block)
        rows = [run.result() for run in runs]
        first = {}
        for row in rows:
            first.setdefault(row["backend"], row)
            row["step_time_vs_first_mode"] = row["step_s_median"] / first[row["backend"]]["step_s_median"]
        torch_rows = {row["compress_mode"]: row for row in rows if row["backend"] == "torch"}
        for row in rows:
            if row["backend"] == "torchrec" and row["compress_mode"] in torch_rows:
                row["step_time_vs_torch"] = row["step_s_median"] / torch_rows[row["compress_mode"]]["step_s_median"]
        results.extend(rows)
    print(json.dumps({"benchmark": "train_throughput", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
