#!/usr/bin/env python
"""Samples/s of the training step on the debug and kaggle-profile configs, printed as JSON.

The baseline that compression overheads are measured against: each config runs with every
`--modes` value (default: off, then codec) in the same process, side by side, and reports the
step-time ratio to the first mode.

    python benchmarks/train_throughput.py [--iterations 300] [--modes off codec] [--set key=value ...]
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


def measure(config: Path, overrides: list[str], iterations: int, warmup: int) -> dict:
    cfg = load_config([config], [*overrides, "train.progress=false", "train.tensorboard=false"])
    with tempfile.TemporaryDirectory() as out:
        t_build = time.perf_counter()
        trainer = Trainer(cfg, out)
        build_s = time.perf_counter() - t_build
        for ext in trainer.extensions:
            ext.before_step(0)
        for t in range(warmup):
            trainer.train_step(t)
        times = []
        for t in range(warmup, warmup + iterations):
            for ext in trainer.extensions:
                ext.before_step(t)
            s0 = time.perf_counter()
            trainer.train_step(t)
            times.append(time.perf_counter() - s0)
    median = statistics.median(times)
    return {
        "config": str(config.relative_to(ROOT)),
        "overrides": overrides,
        "batch_size": cfg.data.batch_size,
        "tables": len(trainer.source.cardinalities),
        "embedding_rows": int(sum(trainer.source.cardinalities)),
        "compress_mode": cfg.compress.mode,
        "iterations": iterations,
        "build_s": round(build_s, 3),
        "step_s_median": median,
        "step_s_mean": statistics.fmean(times),
        "samples_per_s": cfg.data.batch_size / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/debug.yaml", "configs/kaggle.yaml"])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["off", "codec"],
                        help="compress.mode values measured side by side on each config")
    parser.add_argument("--set", nargs="+", default=[], dest="overrides")
    args = parser.parse_args()
    results = []
    for c in args.configs:
        rows = [measure(ROOT / c, [*args.overrides, f"compress.mode={m}"], args.iterations, args.warmup)
                for m in args.modes]
        for row in rows:
            row["step_time_vs_first_mode"] = row["step_s_median"] / rows[0]["step_s_median"]
        results.extend(rows)
    print(json.dumps({"benchmark": "train_throughput", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
