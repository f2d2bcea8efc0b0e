"""`launch/train.py`: parse the contract of DESIGN.md 3b, validate, train, print the final AUC.

Exit status 2 for any configuration error, before any work starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlrm_comp.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="PATH",
                        help="YAML config; repeat to layer (later files override earlier ones)")
    parser.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. --set train.iterations=200 compress.mode=codec")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [item for group in args.set for item in group]
    try:
        cfg = load_config(args.config, overrides)
        from dlrm_comp.distributed.env import abort_on_error, init_distributed, shutdown
        from dlrm_comp.train.builders import resolve_device
        from dlrm_comp.train.loop import Trainer
        env = init_distributed(cfg.dist.backend, resolve_device(cfg.train.device), cfg.dist.timeout_s)
        out = Path(args.out) if args.out else Path("runs") / cfg.name
        trainer = Trainer(cfg, out, resume=args.resume, env=env)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run()
    except BaseException:
        abort_on_error(env)  # mpiexec: take every rank down with this one's error
        raise
    shutdown(env)
    if env.rank == 0:
        final = summary["final_eval"]
        bayes = summary.get("bayes_auc")
        extra = f" (bayes_auc {bayes:.4f})" if bayes is not None else ""
        print(f"run directory: {out}")
        print(f"final AUC {final['auc']:.4f}{extra}  logloss {final['logloss']:.4f}  accuracy {final['accuracy']:.4f}")
        comp = summary.get("compression")
        if comp and comp.get("bytes_sent"):
            note = " (estimated from code entropy)" if comp.get("estimated") else ""
            err = comp.get("max_err_ratio")
            err_text = f", max error/bound {err:.3f}" if err is not None else ""
            print(f"compression {comp['mode']}: wire ratio {comp['cr']:.2f}x{note} "
                  f"({comp['bytes_raw'] / 2**20:.1f} MiB -> {comp['bytes_sent'] / 2**20:.2f} MiB), "
                  f"harmonic mean over tables {comp['harmonic_mean_cr']:.2f}x{err_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
