#!/usr/bin/env python
"""Measured training speed across a real bandwidth-limited link, compressed against uncompressed.

Two network namespaces joined by a veth pair, shaped by `tbf` on both ends (optionally behind a
`netem` delay), are a real link of a chosen rate between two processes on this machine. For
each config and rate, every mode trains the same iterations across it, one after another on
the same link (`--ranks-per-node N` ranks per namespace, a namespace standing for a node:
torchrun --nnodes=2, rendezvous on the first namespace's address, gloo on the veth; ranks of one
namespace talk over its loopback), and is set against `off` (always run, first): step time and its
breakdown, measured speedup, the modeled speedup (the run's own wire ratios and codec
throughput at the measured link rate) and the ideal one (a free codec), wire ratio per
direction, AUC after the same iterations, the communication-free limit (`off`'s step over its
compute phase, same run) and the fraction of it each mode reaches, and the bytes `tc` counted on
the veth against the bytes the run accounts for. `--repeat N` makes N passes over the modes at
each rate, one after another (every pass in the same order, each against its own `off`), and
adds the medians over the passes with every pass's values (`across_repeats`): a step on this kind
of machine moves 5-10% between runs, more than some differences worth stating. `--rates reference` is the rate at which `off`'s all-to-all comes
closest to 60% of the step (the reference's regime), found by measuring `off` at up to three
rates, or given with `--reference-rate`. Prints one JSON object; writes `results.json`,
`report.md` and `link_breakdown.png` under `--out`. Needs root and iproute2; elsewhere it prints
{"skipped": "<reason>"} and exits 0. The namespaces are deleted on every exit path.

    python benchmarks/link.py --rates reference 1gbit   # headline: kaggle, the headline modes (HEADLINE)
    python benchmarks/link.py --configs debug --rates 1gbit --modes off codec --iterations 40
    python benchmarks/link.py --ranks-per-node 2 --rates 1gbit   # 2 nodes x 2 ranks
    python benchmarks/link.py --rates 360mbit --modes off fp16 --repeat 3   # medians of 3 passes
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.bench.link_report import across_repeats, compare, markdown, plot  # noqa: E402
from dlrm_comp.bench.link_run import (CONFIGS, INTERVALS, RunFailed, default_modes, modes, probe_rate,  # noqa: E402
                                      read_run, run_training)
from dlrm_comp.bench.link_search import find_reference_rate  # noqa: E402
from dlrm_comp.bench.netns import VethLink, parse_rate, unavailable  # noqa: E402

ITERATIONS = {"debug": 400, "kaggle": 300}  # per mode: the headline (2 rates x 11 modes) takes ~40 minutes
SEARCH_ITERATIONS = {"debug": 200, "kaggle": 50}


def rate_arg(text: str) -> str:
    if text == "reference":
        return text
    try:
        parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'reference'") from None
    return text.strip().lower()


def fixed_rate_arg(text: str) -> str:
    try:
        parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lower()


def iterations_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2 * INTERVALS:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {2 * INTERVALS} "
                                         f"({INTERVALS} print intervals of >= 2 steps)")
    return value


def count_arg(what: str):
    """An argparse type: an integer >= 1, the error naming ``what`` it counts."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1 ({what})")
        return value
    return parse


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0 (milliseconds)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["kaggle"], choices=sorted(CONFIGS))
    parser.add_argument("--rates", nargs="+", default=["reference"], type=rate_arg,
                        help="tc rates (e.g. 150mbit 1gbit 10gbit) or 'reference'")
    parser.add_argument("--modes", nargs="+", default=None, choices=list(modes()),
                        help="default: every mode (the compress.peers=inter_node ones with --ranks-per-node > 1)")
    parser.add_argument("--iterations", type=iterations_arg, default=None,
                        help=f"training steps per mode (default per config: {ITERATIONS})")
    parser.add_argument("--reference-rate", type=fixed_rate_arg, default=None,
                        help="use this rate for 'reference' instead of searching for it")
    parser.add_argument("--delay-ms", type=non_negative, default=0.0, help="netem delay on each end")
    parser.add_argument("--ranks-per-node", type=count_arg("ranks in each namespace"), default=1,
                        help="ranks in each namespace (loopback inside a node, the shaped veth between nodes)")
    parser.add_argument("--repeat", type=count_arg("passes over the modes"), default=1,
                        help="passes over the modes at each rate (medians and each pass reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "link")
    parser.add_argument("--keep-runs", action="store_true", help="keep each mode's run directory")
    return parser


class Log:
    """One line per mode on stderr, where stderr is a terminal."""

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"[link {time.monotonic() - self.t0:6.0f}s] {text}", file=sys.stderr, flush=True)


def negative_values(argv: list[str]) -> None:
    """argparse reads ``--rates -5mbit`` as an unknown option and says only that a value is
    missing: name the value and what a rate is instead (exit 2)."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--rates", "--reference-rate", "--delay-ms") and value[:1] == "-" and value[1:2].isdigit():
            build_parser().error(f"argument {flag}: {value!r} is negative; "
                                 + ("a rate is a positive number with a unit, e.g. 150mbit or 1gbit"
                                    if flag != "--delay-ms" else "a delay is a finite number >= 0 (milliseconds)"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    negative_values(argv)
    args = build_parser().parse_args(argv)
    reason = unavailable()
    if reason:
        print(json.dumps({"skipped": reason}))
        return 0
    asked = args.modes or default_modes(args.ranks_per_node)
    chosen = ["off"] + [m for m in dict.fromkeys(asked) if m != "off"]
    log = Log()
    args.out.mkdir(parents=True, exist_ok=True)
    payload: dict = {"benchmark": "link", "reference_rate": None, "reference_rates": {}, "delay_ms": args.delay_ms,
                     "ranks_per_node": args.ranks_per_node, "modes": chosen, "repeat": args.repeat, "results": []}
    with VethLink() as link:
        payload["link"] = {"namespaces": list(link.ns), "devices": list(link.dev), "addresses": list(link.addr)}

        def measure(config: str, mode: str, rate: str, iterations: int, tag: str) -> dict:
            run = run_training(link, config, mode, iterations, args.out / "runs" / tag / config / rate / mode,
                               ranks_per_node=args.ranks_per_node)
            row = read_run(run, config, mode)
            if not args.keep_runs:
                shutil.rmtree(run / "checkpoints", ignore_errors=True)
            return row

        for config in args.configs:
            iterations = args.iterations or ITERATIONS[config]
            rates = list(dict.fromkeys(args.rates))
            if "reference" in rates:
                ref, search = args.reference_rate, None
                if ref is None:
                    def off_at(rate: str) -> dict:
                        link.set_rate(rate, args.delay_ms)
                        row = measure(config, "off", rate, min(SEARCH_ITERATIONS[config], iterations), "search")
                        log(f"{config} search: off at {rate}: step {row['step_s'] * 1e3:.1f} ms")
                        return row
                    ref, search = find_reference_rate(off_at)
                    payload.setdefault("reference_search", []).extend({"config": config, **t} for t in search)
                payload["reference_rates"][config] = ref
                payload["reference_rate"] = payload["reference_rate"] or ref
                rates = list(dict.fromkeys(ref if r == "reference" else r for r in rates))
            for rate in rates:
                link.set_rate(rate, args.delay_ms)
                measured = probe_rate(link)
                for repeat in range(args.repeat):
                    tag = "modes" if args.repeat == 1 else f"modes/pass{repeat + 1}"
                    rows = []
                    for mode in chosen:
                        row = measure(config, mode, rate, iterations, tag)
                        row.update(rate=rate, link_rate_measured_mbit=measured, repeat=repeat)
                        rows.append(row)
                        log(f"{config} @ {rate} pass {repeat + 1}/{args.repeat} {mode}: step {row['step_s'] * 1e3:.1f} "
                            f"ms, vs off {rows[0]['step_s'] / row['step_s']:.2f}x, AUC {row['auc']:.4f}")
                    compare(rows)
                    payload["results"].extend(rows)
    payload["across_repeats"] = across_repeats(payload["results"])
    png = plot(payload["results"], args.out / "link_breakdown.png")
    payload["plot"] = str(png)
    (args.out / "report.md").write_text(markdown(payload, png))
    payload["report"] = str(args.out / "report.md")
    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RunFailed as exc:
        print(f"link benchmark: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
