"""Ablation sweeps: each variant is an override layered on a base config, trained with the same seed
and data as every other variant, several at once when cores allow, then one table + plots + report.

Resumable: a variant whose `summary.json` exists is not run again; one killed mid-run continues
from its newest checkpoint (`--resume`); one still running under another sweep is waited for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from dlrm_comp.config import ConfigError, load_config, yaml_load
from dlrm_comp.study import plots
from dlrm_comp.study.children import ChildProcesses
from dlrm_comp.study.report import build_table, to_markdown, write_csv, write_report
from dlrm_comp.study.runs import RunData, load_run

OFF_YAML = "# Added by the ablation runner: the uncompressed baseline every delta is measured against.\n" \
           "name: off\ncompress:\n  mode: \"off\"\n"
PER_JOB_OVERRIDES = ["train.threads=1", "train.progress=false"]


@dataclass
class Variant:
    name: str
    configs: list[Path] = field(default_factory=list)  # layered after the base configs
    overrides: list[str] = field(default_factory=list)  # --set items of this variant only

    def to_dict(self) -> dict:
        return {"name": self.name, "configs": [str(p) for p in self.configs], "overrides": list(self.overrides)}


@dataclass
class JobResult:
    name: str
    status: str  # done | skipped | failed | waited
    returncode: int | None = None
    seconds: float = 0.0
    log: Path | None = None


def variant_from_file(path: str | Path) -> Variant:
    path = Path(path)
    try:
        raw = yaml_load(path.read_text()) or {}
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"--variants {path}: not readable YAML: {exc}") from None
    name = raw.get("name") if isinstance(raw, dict) else None
    return Variant(name=str(name or path.stem), configs=[path])


def discover_variants(paths: Sequence[str | Path]) -> list[Variant]:
    """One variant per YAML (its `name:` or file stem); duplicate names get a numeric suffix."""
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for p in paths:
        v = variant_from_file(p)
        if v.name in seen:
            seen[v.name] += 1
            v.name = f"{v.name}_{seen[v.name]}"
        else:
            seen[v.name] = 0
        variants.append(v)
    return variants


def resolve(base: Sequence[str | Path], variant: Variant, overrides: Sequence[str] = ()):
    """The variant's resolved config (validates it before any run starts)."""
    try:
        return load_config([*base, *variant.configs], [*PER_JOB_OVERRIDES, *overrides, *variant.overrides])
    except ConfigError as exc:
        raise ConfigError(f"variant {variant.name!r}: {exc}") from None


def ensure_baseline(base: Sequence[str | Path], variants: list[Variant], out_dir: Path,
                    overrides: Sequence[str] = ()) -> tuple[list[Variant], str]:
    """Put the uncompressed variant first, adding `compress.mode=off` when no variant is uncompressed."""
    for v in variants:
        if resolve(base, v, overrides).compress.mode == "off":
            return [v] + [w for w in variants if w is not v], v.name
    gen = out_dir / "variants"
    gen.mkdir(parents=True, exist_ok=True)
    path = gen / "off.yaml"
    path.write_text(OFF_YAML)
    name = "off"
    while any(v.name == name for v in variants):
        name += "_base"
    return [Variant(name=name, configs=[path])] + variants, name


def train_command(base: Sequence[str | Path], variant: Variant, run_dir: Path, overrides: Sequence[str] = (),
                  resume: bool = False, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "dlrm_comp.cli.train"]
    for cfg in [*base, *variant.configs]:
        cmd += ["--config", str(cfg)]
    cmd += ["--set", *PER_JOB_OVERRIDES, *overrides, *variant.overrides, "--out", str(run_dir)]
    # no checkpoint: a run killed before its first one may have left records, which a fresh run
    # refuses to mix with its own; the sweep owns the folder, so it starts afresh
    cmd.append("--resume" if resume else "--overwrite")
    return cmd


def has_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(p.is_file() and not p.name.endswith(".tmp") for p in ck.iterdir())


def _alive_elsewhere(run_dir: Path) -> int | None:
    """pid of a live training process (from an earlier, killed sweep) still writing `run_dir`."""
    pid_file = run_dir / ".ablate.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if str(run_dir) not in cmdline:
            return None
    except OSError:
        pass
    return pid


def default_jobs(n_variants: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_variants))


def run_variants(base: Sequence[str | Path], variants: Sequence[Variant], runs_dir: Path, jobs: int | None = None,
                 overrides: Sequence[str] = (), log: Callable[[str], None] = print,
                 python: str = sys.executable, poll_s: float = 0.5) -> dict[str, JobResult]:
    """Train every variant not yet done into `runs_dir/<name>`, `jobs` processes at a time (one thread each)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs or default_jobs(len(variants))
    results: dict[str, JobResult] = {}
    pending: list[Variant] = []
    for v in variants:
        run_dir = (runs_dir / v.name).resolve()
        if (run_dir / "summary.json").exists():
            results[v.name] = JobResult(v.name, "skipped")
            log(f"[ablate] {v.name}: summary.json exists, skipped")
        else:
            pending.append(v)
    running: dict[str, tuple[subprocess.Popen | int, float, Path]] = {}
    try:
        with ChildProcesses() as children:  # a killed sweep takes its children down (their checkpoints stay)
            while pending or running:
                while pending and len(running) < jobs:
                    v = pending.pop(0)
                    run_dir = (runs_dir / v.name).resolve()
                    run_dir.mkdir(parents=True, exist_ok=True)
                    other = _alive_elsewhere(run_dir)
                    if other is not None:
                        log(f"[ablate] {v.name}: still running as pid {other} (an earlier sweep); waiting for it")
                        running[v.name] = (other, time.perf_counter(), run_dir / "train.log")
                        continue
                    resume = has_checkpoint(run_dir)
                    cmd = train_command(base, v, run_dir, overrides, resume=resume, python=python)
                    log_path = run_dir / "train.log"
                    proc = children.start(cmd, log_path)
                    (run_dir / ".ablate.pid").write_text(str(proc.pid))
                    running[v.name] = (proc, time.perf_counter(), log_path)
                    log(f"[ablate] {v.name}: {'resuming from checkpoint' if resume else 'started'} (pid {proc.pid})")
                time.sleep(poll_s)
                for name in list(running):
                    proc, t0, log_path = running[name]
                    if isinstance(proc, int):  # a process of an earlier sweep: wait until it is gone
                        try:
                            os.kill(proc, 0)
                            continue
                        except ProcessLookupError:
                            pass
                        done = (runs_dir / name / "summary.json").exists()
                        results[name] = JobResult(name, "waited" if done else "failed", None,
                                                  time.perf_counter() - t0, log_path)
                        del running[name]
                        if not done:  # it died without finishing: run it here (resumes from its checkpoint)
                            pending.append(next(v for v in variants if v.name == name))
                            del results[name]
                        continue
                    rc = proc.poll()
                    if rc is None:
                        continue
                    dt = time.perf_counter() - t0
                    del running[name]
                    (runs_dir / name / ".ablate.pid").unlink(missing_ok=True)
                    ok = rc == 0 and (runs_dir / name / "summary.json").exists()
                    results[name] = JobResult(name, "done" if ok else "failed", rc, dt, log_path)
                    tail = "" if ok else f"; see {log_path}: " + " | ".join(_tail(log_path, 3))
                    log(f"[ablate] {name}: {'done' if ok else f'FAILED (exit {rc})'} in {dt:.1f}s{tail}")
    except BaseException:  # the children are gone now: so are their pid files
        for name, (proc, _, _) in running.items():
            if not isinstance(proc, int):
                (runs_dir / name / ".ablate.pid").unlink(missing_ok=True)
        raise
    return results


def _tail(path: Path, n: int) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()][-n:]
    except OSError:
        return []


def summarize(runs: Sequence[RunData], out_dir: Path, baseline: str, title: str = "Ablation",
              header: Sequence[str] = (), notes: Sequence[str] = ()) -> list[dict]:
    """Table (CSV + markdown), plots and `report.md` from the runs (complete or not)."""
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    rows = build_table(runs, baseline)
    write_csv(rows, out_dir / "table.csv")
    (out_dir / "table.md").write_text(to_markdown(rows))
    made: dict[str, str] = {}
    for key, fn in (("auc", lambda p: plots.plot_metric_curves(runs, p, "auc")),
                    ("cr", lambda p: plots.plot_cr_curves(runs, p)),
                    ("per_table", lambda p: plots.plot_per_table_cr(runs, p)),
                    ("step", lambda p: plots.plot_step_ratio(rows, p))):
        path = plot_dir / f"{key}.png"
        if fn(path) is not None:
            made[key] = str(path.relative_to(out_dir))
    notes = list(notes) + [
        f"Deltas and the step-time ratio are against `{baseline}` (same base config, seed and data, "
        "`compress.mode=off`).",
        "Ratios are wire figures: fp32 bytes that would have crossed / payload bytes sent, headers included; "
        "`(est.)` marks modes whose bytes are estimated from code entropy (`simulate`).",
        "Step times come from concurrent one-thread processes on a shared CPU: compare their ratios, "
        "not absolute values.",
    ]
    missing = [r["variant"] for r in rows if r["status"] != "ok"]
    if missing:
        notes.append(f"Missing (failed or not run): {', '.join(missing)}.")
    write_report(out_dir / "report.md", title, rows, made, notes, header)
    return rows


def ablate(base: Sequence[str | Path], variant_paths: Sequence[str | Path], out_dir: str | Path,
           jobs: int | None = None, overrides: Sequence[str] = (), report_only: bool = False,
           log: Callable[[str], None] = print) -> dict:
    """The whole sweep: validate all variants, run the missing ones, write table, plots and report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = [Path(b) for b in base]
    variants = discover_variants(variant_paths)
    variants, baseline = ensure_baseline(base, variants, out_dir, overrides)
    for v in variants:  # every config error before any work
        resolve(base, v, overrides)
    (out_dir / "sweep.json").write_text(json.dumps({
        "base": [str(b) for b in base], "overrides": list(overrides), "baseline": baseline,
        "variants": [v.to_dict() for v in variants]}, indent=2) + "\n")
    t0 = time.perf_counter()
    results = {} if report_only else run_variants(base, variants, out_dir / "runs", jobs, overrides, log=log)
    wall = time.perf_counter() - t0
    runs = [load_run(out_dir / "runs" / v.name, name=v.name) for v in variants]
    header = [f"Base: {', '.join(f'`{b}`' for b in base)}"
              + (f"; overrides for every variant: `{' '.join(overrides)}`" if overrides else ""),
              f"Variants: {len(variants)} ({', '.join(v.name for v in variants)}); "
              f"this invocation ran {sum(r.status == 'done' for r in results.values())} "
              f"and skipped {sum(r.status in ('skipped', 'waited') for r in results.values())} in {wall:.0f} s "
              f"with {jobs or default_jobs(len(variants))} concurrent job(s)."]
    rows = summarize(runs, out_dir, baseline, "Ablation report", header)
    failed = [n for n, r in results.items() if r.status == "failed"]
    return {"rows": rows, "results": results, "wall_s": wall, "failed": failed, "baseline": baseline,
            "report": out_dir / "report.md"}
