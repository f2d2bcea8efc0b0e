#!/usr/bin/env python
"""QoS-threshold tuner: maximise the compression ratio (or modeled speedup) with the accuracy loss
against the uncompressed run under each threshold. Resumable (optuna SQLite study in --out).

  python launch/tune.py --config configs/debug.yaml --qos auc_drop --thresholds 0.0005 0.001 0.002 \\
      --trials 36 --short-iterations 600 --jobs 2 --out runs/tune [--validate]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlrm_comp.checks import positive_count  # noqa: E402
from dlrm_comp.config import ConfigError, load_config  # noqa: E402
from dlrm_comp.study import tune  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/tune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="YAML", help="base config; repeat to layer")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every run (short trials and full validation runs)")
    p.add_argument("--qos", default="auc_drop", choices=sorted(tune.QOS_KINDS))
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0005, 0.001, 0.002])
    p.add_argument("--trials", type=int, default=30, help="finished (measured or pruned) trials in the study")
    p.add_argument("--short-iterations", type=int, default=600, help="iterations of each trial run")
    p.add_argument("--out", required=True)
    p.add_argument("--storage", default=None, help="optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study-name", default=None)
    p.add_argument("--gain", default="cr", choices=tune.GAINS)
    p.add_argument("--bandwidth-gbps", type=float, default=12.5, help="link bandwidth for --gain speedup")
    p.add_argument("--modes", nargs="+", default=["codec", "int8", "fp16"], help="compression modes to search")
    p.add_argument("--no-prune", action="store_true", help="never skip trials on the predictor's word")
    p.add_argument("--jobs", type=positive_count, default=1, help="worker processes sharing the study")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate", action="store_true", help="train each pick in full and measure its loss")
    p.add_argument("--report-only", action="store_true", help="no new trials: rebuild picks, plots and report")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [i for g in args.set for i in g]
    try:
        spec = tune.TuneSpec(base=args.config, out=args.out, qos=args.qos, thresholds=args.thresholds,
                             trials=args.trials, short_iterations=args.short_iterations, overrides=overrides,
                             storage=args.storage, study_name=args.study_name, gain=args.gain,
                             bandwidth_gbps=args.bandwidth_gbps, modes=args.modes, prune=not args.no_prune,
                             seed=args.seed)
        load_config(spec.base, overrides)  # config errors before any work
    except (ValueError, ConfigError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker_id is not None:
        tune.optimize(spec, worker=args.worker_id)
        return 0
    try:
        if not args.report_only:
            worker_cmd = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])]
            tune.run_workers(spec, max(1, args.jobs), worker_cmd)
        study = tune.open_study(spec)
        result = tune.report(spec, study)
        if args.validate and result["paths"]:
            validation = tune.validate(spec, result["paths"], jobs=max(1, args.jobs))
            result = tune.report(spec, study, validation)
    except KeyboardInterrupt:
        print("[tune] interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print((spec.out_dir / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
