"""``launch/bench.py`` subcommands: dump, quantize, pad, encode, report, all.

    python launch/bench.py all --config configs/debug.yaml --out DIR [--set key=value ...]
    python launch/bench.py dump --config configs/debug.yaml --out DIR/dumps --every 100 --iterations 300
    python launch/bench.py quantize --dumps DIR/dumps --out DIR/codes --bounds 1e-2 3e-2 [--width auto|2] [--dedup]
                                    [--decay step --decay-constant 2 --early-stage 640] [--batch B --dim D]
    python launch/bench.py pad --codes DIR/codes --out DIR/padded --factor 16
    python launch/bench.py encode --codes DIR/codes [--padded DIR/padded/codes] [--dedup DIR/dedup] --out DIR/encode
    python launch/bench.py report --results DIR/encode --out DIR/report --bandwidths 12.5 25 100

Errors in arguments or inputs exit with status 2 and a message.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dlrm_comp.bench.dumps import DumpFormatError, run_dump
from dlrm_comp.bench.pipeline import encode_codes, pad_dir, quantize_dir, read_codes_index, write_rows
from dlrm_comp.bench.report import make_report
from dlrm_comp.compress.decay import DecaySchedule

DEFAULT_BOUNDS = (1e-2, 3e-2, 5e-2)


def _add_quant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bounds", type=float, nargs="+", default=list(DEFAULT_BOUNDS), help="relative error bounds")
    p.add_argument("--width", choices=("auto", "2"), default="auto",
                   help="width of the codes files: auto (uint8 up to 8 bits, else uint16) or 2 (uint16)")
    p.add_argument("--decay", default=None, help="decay schedule applied by the dump's iteration (linear, log, step, ...)")
    p.add_argument("--decay-constant", type=float, default=2.0)
    p.add_argument("--early-stage", type=int, default=65536)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", required=True, help="YAML config (repeatable, later over earlier)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--every", type=int, default=100, help="dump every K iterations")
    p.add_argument("--iterations", type=int, default=300, help="training iterations for the dump run")


def _add_encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tune-bandwidth", type=float, default=12.5, help="GB/s used in Btune's score")
    p.add_argument("--tune-tradeoff", type=float, default=0.5)
    p.add_argument("--no-floats", action="store_true", help="skip SZ3 and the fixed-rate baselines")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench.py", description="offline compression benchmark")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dump", help="short training writing EMB_{table}_iter_{k}.bin + meta.json")
    _add_train(p)
    p.add_argument("--out", required=True)
    p = sub.add_parser("quantize", help="codes at each bound")
    p.add_argument("--dumps", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, help="rows per dump (where there is no meta.json)")
    p.add_argument("--dim", type=int, help="embedding dim (where there is no meta.json)")
    p.add_argument("--dedup", action="store_true", help="only each dump's distinct bags (bag deduplication)")
    _add_quant(p)
    p = sub.add_parser("pad", help="concatenate copies to emulate larger messages")
    p.add_argument("--codes", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--factor", type=int, default=16)
    p = sub.add_parser("encode", help="every encoder on every code file")
    p.add_argument("--codes", required=True)
    p.add_argument("--padded", help="codes directory of the pad step")
    p.add_argument("--dedup", help="codes directory of `quantize --dedup` (distinct bags, side by side)")
    p.add_argument("--out", required=True)
    _add_encode(p)
    p = sub.add_parser("report", help="CSV/JSON, speedups, hybrid choice, plots, report.md")
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bandwidths", type=float, nargs="+", default=[12.5, 25.0, 100.0], help="GB/s")
    p = sub.add_parser("all", help="dump, quantize (all rows and distinct bags), pad, encode, report into --out")
    _add_train(p)
    p.add_argument("--out", required=True)
    _add_quant(p)
    p.add_argument("--factor", type=int, default=16)
    _add_encode(p)
    p.add_argument("--bandwidths", type=float, nargs="+", default=[12.5, 25.0, 100.0], help="GB/s")
    return ap


def _decay(args) -> DecaySchedule | None:
    if not args.decay:
        return None
    decay = DecaySchedule(func=args.decay, constant=args.decay_constant, early_stage=args.early_stage)
    decay.validate("decay")
    return decay


def _encode(args, codes: Path, padded: Path | None, out: Path, progress: bool, dedup: Path | None = None) -> int:
    kw = dict(tune_bandwidth_gbs=args.tune_bandwidth, tune_tradeoff=args.tune_tradeoff,
              floats=not args.no_floats, progress=progress)
    rows = encode_codes(read_codes_index(codes)["entries"], codes, "real", **kw)
    if padded is not None:
        rows += encode_codes(read_codes_index(padded)["entries"], padded, "padded", **kw)
    if dedup is not None:
        rows += encode_codes(read_codes_index(dedup)["entries"], dedup, "dedup", **kw)
    write_rows(rows, out)
    return len(rows)


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    progress = not args.quiet
    t0 = time.perf_counter()
    info: dict = {"cmd": args.cmd}
    if args.cmd == "dump":
        run_dump(args.config, args.overrides, Path(args.out), args.every, args.iterations)
    elif args.cmd == "quantize":
        info["files"] = len(quantize_dir(Path(args.dumps), Path(args.out), args.bounds, args.width, _decay(args),
                                         args.batch, args.dim, progress, dedup=args.dedup))
    elif args.cmd == "pad":
        info["files"] = len(pad_dir(Path(args.codes), Path(args.out), args.factor, progress))
    elif args.cmd == "encode":
        info["rows"] = _encode(args, Path(args.codes), Path(args.padded) if args.padded else None, Path(args.out),
                               progress, Path(args.dedup) if args.dedup else None)
    elif args.cmd == "report":
        make_report(Path(args.results), Path(args.out), args.bandwidths)
    else:
        out = Path(args.out)
        run_dump(args.config, args.overrides, out / "dumps", args.every, args.iterations)
        quantize_dir(out / "dumps", out / "codes", args.bounds, args.width, _decay(args), progress=progress)
        pad_dir(out / "codes", out / "padded", args.factor, progress)
        quantize_dir(out / "dumps", out / "dedup", args.bounds, args.width, _decay(args), progress=progress, dedup=True)
        info["rows"] = _encode(args, out / "codes", out / "padded" / "codes", out / "encode", progress, out / "dedup")
        make_report(out / "encode", out / "report", args.bandwidths)
        info["report"] = str(out / "report" / "report.md")
    info["wall_s"] = round(time.perf_counter() - t0, 2)
    return info


def main(argv: list[str] | None = None) -> int:
    try:
        info = run(argv)
    except (DumpFormatError, ValueError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
