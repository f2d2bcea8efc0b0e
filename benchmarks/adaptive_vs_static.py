#!/usr/bin/env python
"""`closed_loop` against `static` table-wise bounds (and `off`) on the same seed and data, as JSON.

Runs the three variants of a base config one after another and reports final AUC, its change
against static, and forward bytes sent: the goal is fewer bytes at equal or better AUC.

    python benchmarks/adaptive_vs_static.py [--config configs/debug.yaml] [--target-cr 18] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402


def train(config: Path, overrides: list[str]) -> dict:
    cfg = load_config([config], [*overrides, "train.progress=false", "compress.print_tables=false"])
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        return Trainer(cfg, out).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/debug.yaml")
    parser.add_argument("--target-cr", type=float, default=18.0)
    parser.add_argument("--eb-min", type=float, default=0.001)
    parser.add_argument("--eb-max", type=float, default=0.1)
    parser.add_argument("--set", nargs="+", default=[], dest="overrides")
    args = parser.parse_args()
    config = ROOT / args.config
    runs = {
        "off": train(config, [*args.overrides, "compress.mode=off"]),
        "static": train(config, [*args.overrides, "compress.mode=codec", "adaptive.policy=static"]),
        "closed_loop": train(config, [*args.overrides, "compress.mode=codec", "adaptive.policy=closed_loop",
                                      f"adaptive.target_cr={args.target_cr}", f"adaptive.eb_min={args.eb_min}",
                                      f"adaptive.eb_max={args.eb_max}"]),
    }
    static, closed = runs["static"], runs["closed_loop"]
    result = {
        "benchmark": "adaptive_vs_static", "config": args.config, "overrides": args.overrides,
        "target_cr": args.target_cr,
        "runs": {name: {"auc": s["final_eval"]["auc"], "logloss": s["final_eval"]["logloss"],
                        "bytes_sent": s.get("compression", {}).get("bytes_sent"),
                        "cr": s.get("compression", {}).get("cr"),
                        "adaptive_changes": s.get("adaptive", {}).get("changes"),
                        "final_eb_rel": s.get("adaptive", {}).get("eb_rel")} for name, s in runs.items()},
        "closed_vs_static": {
            "forward_bytes_reduction": 1 - closed["compression"]["bytes_sent"] / static["compression"]["bytes_sent"],
            "auc_change": closed["final_eval"]["auc"] - static["final_eval"]["auc"],
        },
        "static_vs_off_auc_change": static["final_eval"]["auc"] - runs["off"]["final_eval"]["auc"],
        "closed_vs_off_auc_change": closed["final_eval"]["auc"] - runs["off"]["final_eval"]["auc"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
