#!/usr/bin/env python
"""Ablation sweep: train each variant (an override layered on the base config), then write the
table (CSV + markdown), plots and `report.md`. Re-running the same command resumes a killed sweep.

  python launch/ablate.py --base configs/debug.yaml --variants configs/ablations/*.yaml --out runs/ablate
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlrm_comp.checks import positive_count  # noqa: E402
from dlrm_comp.config import ConfigError  # noqa: E402
from dlrm_comp.study.ablate import ablate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launch/ablate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", action="append", required=True, metavar="YAML",
                   help="base config; repeat to layer several")
    p.add_argument("--variants", nargs="+", required=True, metavar="YAML",
                   help="one override file per variant (its `name:` names the variant); "
                        "an uncompressed variant (compress.mode=off) is added when none is given")
    p.add_argument("--out", required=True, help="sweep directory (runs/<variant>/, table.csv, table.md, plots/, report.md)")
    p.add_argument("--jobs", type=positive_count, default=None,
                   help="concurrent runs (default: cores, at most one per variant)")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every variant, e.g. --set train.iterations=1000 train.eval_every=250")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, plots and report")
    args = p.parse_args(argv)
    overrides = [item for group in args.set for item in group]
    try:
        result = ablate(args.base, args.variants, args.out, jobs=args.jobs, overrides=overrides,
                        report_only=args.report_only)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[ablate] interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print((Path(args.out) / "table.md").read_text())
    print(f"[ablate] report: {result['report']}  ({result['wall_s']:.0f} s)")
    if result["failed"]:
        print(f"[ablate] failed variants: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
