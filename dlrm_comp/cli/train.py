"""`launch/train.py`: parse the CLI contract of docs/architecture.md, validate, train, print the final AUC.

Exit status 2 for any configuration error (a bad key or value, an unusable --out, data files that
cannot be read, a checkpoint that belongs to another run), before any work starts. SIGTERM or
SIGINT: the current step finishes, a checkpoint is saved and the exit status is 128 + the signal.
A diverging run (the loss or the parameters non-finite) stops with one line naming train.lr and
exit status 3, its last checkpoint kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from dlrm_comp.config import ConfigError, load_config

DIVERGED = 3  # exit status of a run whose loss went non-finite
# where a run directory can never live (pseudo file systems)
_FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="PATH",
                        help="YAML config; repeat to layer (later files override earlier ones)")
    parser.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. --set train.iterations=200 compress.mode=codec")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    parser.add_argument("--resume-allow", action="append", nargs="+", default=[], metavar="KEY",
                        help="with --resume: accept a config key that differs from the checkpoint's")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --out that holds another run (its checkpoints and logs are removed)")
    return parser


def check_out_dir(out: Path) -> None:
    """--out must be (or become) a writable directory: refuse a file, a path under a file, /proc."""
    resolved = out.resolve()
    for root in _FORBIDDEN_ROOTS:
        if resolved == root or root in resolved.parents:
            raise ConfigError(f"--out {out}: {root} is not a place for a run directory; choose a path on disk")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory; choose another --out")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, so no directory can be made under it")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out}: not a writable directory ({exc.strerror})") from None


def _remove_if_empty(out: Path | None) -> None:
    """An --out made for a run refused before any work is not left behind (another rank may
    have written into it: then it stays)."""
    if out is not None:
        try:
            out.rmdir()
        except OSError:
            pass


def _tell_launcher(message: str) -> None:
    """Under torchrun, hand the rank's message to the launcher's error file: torchrun exits 1
    whatever the rank's status and prints its own traceback last, with this message as the root
    cause at its end (in place of a link to its docs)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as handle:
                json.dump({"message": message, "timestamp": int(time.time())}, handle)
        except OSError:
            pass


def _fail(message: str, env, code: int) -> int:
    """Print (and flush) first: under mpiexec, MPI_Abort would otherwise race the message away."""
    print(message, file=sys.stderr, flush=True)
    _tell_launcher(f"{message} (exit status {code})")
    sys.stdout.flush()
    if env is not None:
        from dlrm_comp.distributed.env import abort_on_error
        abort_on_error(env, code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [item for group in args.set for item in group]
    allow = [key for group in args.resume_allow for key in group]
    env = None
    made = None  # the --out this call created: removed again if the run stops before any work
    try:
        cfg = load_config(args.config, overrides)
        if allow and not args.resume:
            raise ConfigError("--resume-allow: only meaningful with --resume")
        if args.resume and args.overwrite:
            raise ConfigError("--overwrite and --resume: choose one (continue the run, or discard it)")
        from dlrm_comp.train.identity import check_allow_keys
        check_allow_keys(allow)
        out = Path(args.out) if args.out else Path("runs") / cfg.name
        if args.resume and not out.is_dir():
            raise ConfigError(f"--resume: {out} does not exist, so there is no run to continue; check --out "
                              "(or the config's name), or start a new run without --resume")
        made = None if out.exists() else out
        check_out_dir(out)
        from dlrm_comp.distributed.env import init_distributed, shutdown
        from dlrm_comp.train.builders import resolve_device
        from dlrm_comp.train.loop import Trainer
        env = init_distributed(cfg.dist.backend, resolve_device(cfg.train.device), cfg.dist.timeout_s)
        trainer = Trainer(cfg, out, resume=args.resume, env=env, overwrite=args.overwrite, resume_allow=allow)
    except ConfigError as exc:
        _remove_if_empty(made)
        return _fail(f"config error: {exc}", env, 2)
    from dlrm_comp.train.loop import Diverged
    from dlrm_comp.train.signals import RunStopped
    try:
        summary = trainer.run()
    except ConfigError as exc:  # run-directory and resume checks run first thing in run()
        return _fail(f"config error: {exc}", env, 2)
    except Diverged as exc:
        return _fail(f"error: {exc}", env, DIVERGED)
    except RunStopped as stop:
        if env.rank == 0:
            print(f"stopped: {stop}", file=sys.stderr, flush=True)
        _tell_launcher(f"stopped: {stop} (exit status {stop.exit_status})")
        shutdown(env)
        return stop.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, while the first one's checkpoint was being written
        return _fail("interrupted", env, 130)
    except BaseException:
        return _fail(traceback.format_exc().rstrip(), env, 1)  # mpiexec: every rank goes down with this one
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
            if comp.get("mixed"):  # a resumed run whose modes changed: these figures are the last segment's
                note += (f" since iteration {comp['segments'][-1]['from_iteration']} (earlier: "
                         + ", ".join(f"{s['mode']} to {s['to_iteration']}" for s in comp["segments"][:-1])
                         + "; summary.json 'segments')")
            print(f"compression {comp['mode']}: wire ratio {comp['cr']:.2f}x{note} "
                  f"({comp['bytes_raw'] / 2**20:.1f} MiB -> {comp['bytes_sent'] / 2**20:.2f} MiB), "
                  f"harmonic mean over tables {comp['harmonic_mean_cr']:.2f}x{err_text}")
            if comp.get("bytes_meta") or comp.get("bytes_pad"):
                print(f"on the wire, both directions with the size exchange and slot padding: "
                      f"{comp['cr_wire']:.2f}x ({comp['bytes_wire'] / 2**20:.2f} MiB)")
            if comp.get("dedup_bytes_saved"):
                print(f"bag dedup on {len(comp['dedup']['tables'])} tables: {comp['distinct_fraction']:.2f} of rows "
                      f"distinct, {comp['dedup_bytes_saved'] / 2**20:.1f} MiB of rows not sent (before the codec)")
            if comp.get("row_cache"):
                hit = comp.get("cache_hit_fraction")
                print(f"row cache ({comp['row_cache']['rows']} rows per table and destination, "
                      f"{comp['row_cache']['memory_bytes'] / 2**20:.1f} MiB here): "
                      f"{hit or 0.0:.2f} of distinct rows served, "
                      f"{(comp.get('cache_bytes_saved') or 0) / 2**20:.1f} MiB of rows not sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
