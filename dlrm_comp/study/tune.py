"""QoS-threshold tuner (PredTuner-style, on optuna): search per-table bound classes, the decay
schedule and constant, and the compression mode to maximise the gain (wire compression ratio or
modeled speedup) while the accuracy loss against the uncompressed run stays under each threshold.

* Every trial is a short training run (`--short-iterations`) of the base config with the trial's
  override layered on it, compared with an uncompressed short run of the same seed and data.
* Two objectives (minimise the QoS loss, maximise the gain): optuna's multi-objective study keeps
  the Pareto front; per threshold, the pick is the feasible trial of highest gain.
* Studies live in SQLite in the output directory by default (or `--storage URL`), with heartbeats:
  several workers share one study, and a killed search resumes where it stopped.
* A cheap predictor (`dlrm_comp.study.predict`) fitted on measured trials prunes configs that are
  confidently over every threshold before they are trained.
* Picks are written as ready override YAMLs (`launch/train.py --config base --config pick.yaml`);
  `--validate` trains each in full next to a full uncompressed run and measures its real loss.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from dlrm_comp.bench.report import speedup, throughput
from dlrm_comp.config import load_config
from dlrm_comp.compress.decay import DECAY_SCHEDULES
from dlrm_comp.compress.modes import ERROR_BOUNDED, FIXED_RATE
from dlrm_comp.filelock import file_lock
from dlrm_comp.study.children import ChildProcesses
from dlrm_comp.study.predict import QoSPredictor, features
from dlrm_comp.study.runs import read_summary

QOS_KINDS = {  # name: (summary final_eval key, sign: loss = sign * (trial - baseline))
    "auc_drop": ("auc", -1.0),
    "logloss_increase": ("logloss", 1.0),
    "accuracy_drop": ("accuracy", -1.0),
}
GAINS = ("cr", "speedup")
TRIAL_OVERRIDES = ["train.threads=1", "train.progress=false", "train.tensorboard=false",
                   "train.eval_every=0", "train.checkpoint_every=0", "train.keep_checkpoints=1",
                   "compress.print_tables=false"]


@dataclass
class TuneSpec:
    base: list[str]
    out: str
    qos: str = "auc_drop"
    thresholds: list[float] = field(default_factory=lambda: [0.0005, 0.001, 0.002])
    trials: int = 30
    short_iterations: int = 600
    overrides: list[str] = field(default_factory=list)  # applied to every run (short and full)
    storage: str | None = None
    study_name: str | None = None
    gain: str = "cr"
    bandwidth_gbps: float = 12.5  # link bandwidth for the modeled speedup (GB/s)
    modes: list[str] = field(default_factory=lambda: ["codec", "int8", "fp16"])
    prune: bool = True
    prune_z: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.qos not in QOS_KINDS:
            raise ValueError(f"--qos: {self.qos!r} is not one of {', '.join(QOS_KINDS)}")
        if self.gain not in GAINS:
            raise ValueError(f"--gain: {self.gain!r} is not one of {', '.join(GAINS)}")
        bad = [m for m in self.modes if m not in ERROR_BOUNDED + FIXED_RATE]
        if bad:
            raise ValueError(f"--modes: {bad} not in {', '.join(ERROR_BOUNDED + FIXED_RATE)}")
        if not self.thresholds or any(not math.isfinite(t) or t < 0 for t in self.thresholds):
            raise ValueError(f"--thresholds: one or more finite non-negative numbers, got {self.thresholds}")
        if self.trials < 1:
            raise ValueError(f"--trials: {self.trials} must be >= 1 (a study of no trials has nothing to report)")
        if self.short_iterations < 1:
            raise ValueError(f"--short-iterations: {self.short_iterations} must be >= 1")
        if not math.isfinite(self.bandwidth_gbps) or self.bandwidth_gbps <= 0:
            raise ValueError(f"--bandwidth-gbps: {self.bandwidth_gbps} must be a finite number > 0")
        self.thresholds = sorted(float(t) for t in self.thresholds)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or f"dlrm_comp_{self.qos}_{self.gain}"


# ----------------------------------------------------------------------------- search space
def table_rules(n_tables: int) -> list[str]:
    """Bound classes: one global bound, or tighten the largest / loosen the smallest tables by rank."""
    rules = ["none"]
    for top, bottom in ((0.3, 0.25), (0.15, 0.4), (0.5, 0.0)):
        k, m = max(1, round(top * n_tables)), round(bottom * n_tables)
        rule = f"rank:top={k}" + (f",bottom={m}" if m else "")
        if k + m <= n_tables and rule not in rules:
            rules.append(rule)
    if n_tables == 26:
        rules.append("kaggle_ref")
    return rules


def suggest(trial, spec: TuneSpec, n_tables: int) -> dict[str, Any]:
    """Sample one configuration (the optuna search space)."""
    p: dict[str, Any] = {"mode": trial.suggest_categorical("mode", spec.modes)}
    if p["mode"] in FIXED_RATE:
        return p
    base = trial.suggest_float("base_error_bound", 0.003, 0.2, log=True)
    rule = trial.suggest_categorical("table_preset", table_rules(n_tables))
    p.update(base_error_bound=base, table_preset=rule)
    if rule != "none":
        p["tighten_value"] = min(0.5, base * trial.suggest_float("tighten_factor", 0.1, 1.0, log=True))
        p["loosen_value"] = min(0.5, base * trial.suggest_float("loosen_factor", 1.0, 4.0, log=True))
    func = trial.suggest_categorical("decay_func", sorted(DECAY_SCHEDULES))
    p["decay_func"] = func
    if func != "none":
        p["decay_constant"] = trial.suggest_float("decay_constant", 1.0, 4.0)
        p["early_frac"] = trial.suggest_float("early_frac", 0.05, 0.5)
    return p


def override_dict(params: dict, iterations: int, name: str) -> dict:
    """The override YAML of a configuration for a run of `iterations` (early stage scaled to it)."""
    comp: dict[str, Any] = {"mode": params["mode"]}
    if params["mode"] not in FIXED_RATE:
        base = float(params["base_error_bound"])
        comp.update(base_error_bound=round(base, 6), table_preset=params.get("table_preset", "none"),
                    tighten_tables=[], loosen_tables=[],
                    tighten_value=round(float(params.get("tighten_value", base)), 6),
                    loosen_value=round(float(params.get("loosen_value", base)), 6))
        func = params.get("decay_func", "none")
        decay: dict[str, Any] = {"func": func}
        if func != "none":
            decay["constant"] = round(float(params["decay_constant"]), 4)
            decay["early_stage"] = max(1, int(round(params["early_frac"] * iterations)))
        comp["decay"] = decay
    return {"name": name, "compress": comp}


def write_override(path: Path, override: dict, comment: Sequence[str] = ()) -> Path:
    text = "".join(f"# {line}\n" for line in comment)
    text += yaml.safe_dump(override, sort_keys=False)
    text = text.replace("mode: off\n", 'mode: "off"\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- runs
def _gain(summary: dict, spec: TuneSpec) -> float:
    comp = summary.get("compression") or {}
    cr = float(comp.get("cr") or 1.0)
    if spec.gain == "cr":
        return cr
    raw = float(comp.get("bytes_raw") or 0.0)
    enc, dec = float(comp.get("enc_s") or 0.0), float(comp.get("dec_s") or 0.0)
    tc, td = (throughput(raw, enc), throughput(raw, dec)) if raw else (math.inf, math.inf)  # nothing coded: free
    return speedup(cr, tc, td, spec.bandwidth_gbps * 1e9)


def qos_loss(summary: dict, baseline: dict, qos: str) -> float:
    key, sign = QOS_KINDS[qos]
    return sign * (float(summary["final_eval"][key]) - float(baseline["final_eval"][key]))


def train_in_process(configs: Sequence[str | Path], overrides: Sequence[str], out_dir: Path) -> dict:
    from dlrm_comp.train.loop import Trainer
    cfg = load_config([str(c) for c in configs], list(overrides))
    summary = Trainer(cfg, out_dir, overwrite=True).run()  # a retried trial starts afresh
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # trials are never resumed; keep disk small
    return summary


def short_baseline(spec: TuneSpec) -> dict:
    """The uncompressed short run every trial is compared with (computed once, shared by workers)."""
    run_dir = spec.out_dir / "baseline_short"
    with file_lock(spec.out_dir / ".baseline.lock"):
        summary = read_summary(run_dir)
        if summary is None:
            summary = train_in_process(spec.base, [*TRIAL_OVERRIDES, *spec.overrides, "compress.mode=off",
                                                   f"train.iterations={spec.short_iterations}"], run_dir)
    return summary


# ----------------------------------------------------------------------------- study
def open_study(spec: TuneSpec, sampler_seed: int | None = None):
    import warnings

    import optuna
    from optuna.storages import RDBStorage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:  # optuna >= 4.9
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        retry = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback
        retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    url = spec.storage_url
    if url.startswith("sqlite") or url.startswith("mysql") or url.startswith("postgresql"):
        storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                             heartbeat_interval=10, grace_period=30, **retry)
    else:
        storage = url
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=10, multivariate=True,
                                         constant_liar=True)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=["minimize", "maximize"])
    study.set_metric_names([spec.qos, spec.gain])
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", {k: v for k, v in asdict(spec).items() if k not in ("out", "storage")})
    return study


def _measured(study) -> list:
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def fit_predictor(study, cards: Sequence[int], spec: TuneSpec) -> QoSPredictor:
    done = _measured(study)
    X = [features(t.user_attrs["params"], cards, spec.short_iterations) for t in done if "params" in t.user_attrs]
    y = [t.values[0] for t in done if "params" in t.user_attrs]
    return QoSPredictor().fit(X, y)


def make_objective(spec: TuneSpec, baseline: dict, log: Callable[[str], None] = print):
    import optuna
    cards = list(baseline["data"]["cardinalities"])
    limit = max(spec.thresholds)

    def objective(trial) -> tuple[float, float]:
        params = suggest(trial, spec, len(cards))
        if "early_frac" in params:
            params["early_stage"] = max(1, int(round(params["early_frac"] * spec.short_iterations)))
        trial.set_user_attr("params", params)
        x = features(params, cards, spec.short_iterations)
        predictor = fit_predictor(trial.study, cards, spec) if spec.prune else None
        if predictor is not None:
            prune, pred = predictor.should_prune(x, limit, z=spec.prune_z)
            if pred is not None:
                trial.set_user_attr("predicted_qos", pred)
                trial.set_user_attr("predictor_sigma", predictor.sigma)
            if prune:
                log(f"[tune] trial {trial.number}: pruned by the predictor ({spec.qos} ~ {pred:.5f} "
                    f"+- {predictor.sigma:.5f} > {limit})")
                raise optuna.TrialPruned()
        run_dir = spec.out_dir / "trials" / f"trial_{trial.number:04d}"
        override = write_override(run_dir / "override.yaml",
                                  override_dict(params, spec.short_iterations, f"trial_{trial.number}"))
        t0 = time.perf_counter()
        summary = train_in_process([*spec.base, override],
                                   [*TRIAL_OVERRIDES, *spec.overrides, f"train.iterations={spec.short_iterations}"],
                                   run_dir)
        loss, gain = qos_loss(summary, baseline, spec.qos), _gain(summary, spec)
        comp = summary.get("compression") or {}
        trial.set_user_attr("cr", float(comp.get("cr") or 1.0))
        trial.set_user_attr("harmonic_mean_cr", float(comp.get("harmonic_mean_cr") or 1.0))
        trial.set_user_attr("auc", float(summary["final_eval"]["auc"]))
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log(f"[tune] trial {trial.number}: {params['mode']} {spec.qos}={loss:+.5f} {spec.gain}={gain:.2f} "
            f"({time.perf_counter() - t0:.1f}s)")
        return loss, gain

    return objective


def count_finished(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def optimize(spec: TuneSpec, worker: int = 0, log: Callable[[str], None] = print) -> None:
    """One worker: run trials until the study holds `spec.trials` finished (complete or pruned) ones."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    baseline = short_baseline(spec)
    study = open_study(spec, sampler_seed=spec.seed + worker)
    if count_finished(study) >= spec.trials:
        return
    study.optimize(make_objective(spec, baseline, log), n_trials=spec.trials, catch=(FloatingPointError,),
                   callbacks=[MaxTrialsCallback(spec.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])


def run_workers(spec: TuneSpec, jobs: int, worker_cmd: Sequence[str], log: Callable[[str], None] = print) -> None:
    """`jobs` processes share the study: this one plus `jobs - 1` subprocesses running `worker_cmd`."""
    short_baseline(spec)  # once, before the workers race for it
    with ChildProcesses() as workers:  # a killed search takes its workers down; the study keeps every trial
        for w in range(1, jobs):
            workers.start([*worker_cmd, "--worker-id", str(w)], spec.out_dir / f"worker{w}.log")
        optimize(spec, worker=0, log=log)
        workers.wait()


# ----------------------------------------------------------------------------- results
def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (lower QoS loss, higher gain)."""
    front = []
    for i, (q, g) in enumerate(points):
        if not any((q2 <= q and g2 >= g) and (q2 < q or g2 > g or j < i) for j, (q2, g2) in enumerate(points)
                   if j != i):  # equal points: the first one stands for them
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def collect(study) -> list[dict]:
    from optuna.trial import TrialState
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "qos": t.values[0] if t.values else None, "gain": t.values[1] if t.values else None,
                     "predicted_qos": t.user_attrs.get("predicted_qos"), "params": t.user_attrs.get("params", {}),
                     "cr": t.user_attrs.get("cr"), "seconds": t.user_attrs.get("seconds")})
    return rows


def choose(rows: Sequence[dict], thresholds: Sequence[float]) -> dict[float, dict | None]:
    """Per threshold: the measured trial of highest gain whose QoS loss is within it (lower loss breaks ties)."""
    done = [r for r in rows if r["state"] == "complete"]
    picks = {}
    for thr in thresholds:
        ok = [r for r in done if r["qos"] <= thr]
        picks[thr] = max(ok, key=lambda r: (r["gain"], -r["qos"])) if ok else None
    return picks


def full_iterations(spec: TuneSpec) -> int:
    return load_config(spec.base, list(spec.overrides)).train.iterations


def export_picks(spec: TuneSpec, picks: dict[float, dict | None]) -> dict[float, Path]:
    iters = full_iterations(spec)
    out = {}
    for thr, row in picks.items():
        if row is None:
            continue
        name = f"tuned_{spec.qos}_{thr:g}"
        path = spec.out_dir / "picks" / f"{name}.yaml"
        write_override(path, override_dict(row["params"], iters, name), comment=[
            f"Tuned by launch/tune.py: best {spec.gain} with {spec.qos} <= {thr:g} (trial {row['number']}).",
            f"Short run ({spec.short_iterations} iterations, a prediction of the full run): "
            f"{spec.qos} {row['qos']:+.5f}, {spec.gain} {row['gain']:.2f}.",
            f"Early stage scaled to the full run's {iters} iterations. Use: "
            f"launch/train.py --config {' --config '.join(spec.base)} --config {path.name}"])
        out[thr] = path
    return out


def validate(spec: TuneSpec, pick_paths: dict[float, Path], jobs: int | None = None,
             log: Callable[[str], None] = print) -> dict[float, dict]:
    """Full runs of each pick and of the uncompressed baseline (resumable), measured QoS per threshold."""
    from dlrm_comp.study.ablate import Variant, ensure_baseline, run_variants
    vdir = spec.out_dir / "validate"
    variants = [Variant(name=p.stem, configs=[p]) for p in dict.fromkeys(pick_paths.values())]
    variants, base_name = ensure_baseline(spec.base, variants, vdir, spec.overrides)
    run_variants(spec.base, variants, vdir / "runs", jobs, spec.overrides, log=log)
    base = read_summary(vdir / "runs" / base_name)
    out = {}
    for thr, path in pick_paths.items():
        s = read_summary(vdir / "runs" / path.stem)
        if s is None or base is None:
            out[thr] = {"pick": path.stem, "status": "failed"}
            continue
        loss = qos_loss(s, base, spec.qos)
        out[thr] = {"pick": path.stem, "status": "ok", "qos": loss, "gain": _gain(s, spec),
                    "cr": float((s.get("compression") or {}).get("cr") or 1.0), "met": loss <= thr,
                    "auc": s["final_eval"]["auc"], "auc_off": base["final_eval"]["auc"]}
    (spec.out_dir / "validation.json").write_text(json.dumps({str(k): v for k, v in out.items()}, indent=2) + "\n")
    return out


def report(spec: TuneSpec, study, validation: dict[float, dict] | None = None) -> dict:
    """picks/*.yaml, trials.csv, pareto.json, plots and report.md from the study as it stands."""
    from dlrm_comp.study import plots_tune
    rows = collect(study)
    complete = [r for r in rows if r["state"] == "complete"]
    front_idx = pareto([(r["qos"], r["gain"]) for r in complete])
    front = [complete[i] for i in front_idx]
    picks = choose(rows, spec.thresholds)
    paths = export_picks(spec, picks)
    if validation is None and (spec.out_dir / "validation.json").exists():
        validation = {float(k): v for k, v in json.loads((spec.out_dir / "validation.json").read_text()).items()}
    plot_dir = spec.out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    if plots_tune.plot_qos_vs_gain(rows, front, picks, validation or {}, spec, plot_dir / "qos_vs_gain.png"):
        made["qos_vs_gain"] = "plots/qos_vs_gain.png"
    if plots_tune.plot_history(rows, spec, plot_dir / "history.png"):
        made["history"] = "plots/history.png"
    cards = None
    base_short = read_summary(spec.out_dir / "baseline_short")
    if base_short:
        cards = base_short["data"]["cardinalities"]
        pred = fit_predictor(study, cards, spec)
        if plots_tune.plot_predictor(pred, spec, plot_dir / "predictor.png"):
            made["predictor"] = "plots/predictor.png"
    with open(spec.out_dir / "trials.csv", "w") as fh:
        fh.write("number,state,mode,qos,gain,predicted_qos,seconds,params\n")
        for r in rows:
            fh.write(f"{r['number']},{r['state']},{r['params'].get('mode', '')},{_n(r['qos'])},{_n(r['gain'])},"
                     f"{_n(r['predicted_qos'])},{_n(r['seconds'])},\"{json.dumps(r['params']).replace(chr(34), chr(39))}\"\n")
    (spec.out_dir / "pareto.json").write_text(json.dumps(
        {"front": front, "picks": {str(k): v for k, v in picks.items()},
         "pick_files": {str(k): str(v) for k, v in paths.items()}}, indent=2, default=str) + "\n")
    _write_report(spec, rows, front, picks, paths, validation or {}, made, base_short)
    return {"rows": rows, "front": front, "picks": picks, "paths": paths, "validation": validation}


def _n(v) -> str:
    return "" if v is None else f"{v:.6g}"


def _describe(params: dict) -> str:
    if params.get("mode") in FIXED_RATE:
        return f"{params['mode']}"
    s = f"{params['mode']} eb {params['base_error_bound']:.4f} {params.get('table_preset', 'none')}"
    if params.get("table_preset", "none") != "none":
        s += f" (tight {params['tighten_value']:.4f}, loose {params['loosen_value']:.4f})"
    s += f", decay {params.get('decay_func', 'none')}"
    if params.get("decay_func", "none") != "none":
        s += f" C={params['decay_constant']:.2f} E={params['early_frac']:.2f}xT"
    return s


def _write_report(spec, rows, front, picks, paths, validation, plots_made, base_short) -> None:
    n_done = sum(r["state"] == "complete" for r in rows)
    n_pruned = sum(r["state"] == "pruned" for r in rows)
    full = full_iterations(spec)
    L = [f"# Tuning report: maximise {spec.gain} subject to {spec.qos} <= threshold", "",
         f"Base: {', '.join(f'`{b}`' for b in spec.base)}"
         + (f"; overrides `{' '.join(spec.overrides)}`" if spec.overrides else "")
         + f". Study `{spec.name}` in `{spec.storage_url}`.",
         f"Trials: {n_done} measured, {n_pruned} pruned by the predictor (of {spec.trials} requested). "
         f"Each trial is a short run of {spec.short_iterations} iterations; the full run has {full}.", ""]
    if base_short:
        key = QOS_KINDS[spec.qos][0]
        L.append(f"Uncompressed short run: {key} {base_short['final_eval'][key]:.5f}.")
        L.append("")
    L += ["**Which figures are which.** *Short-run* figures are measured on the short trial runs and serve as the "
          "prediction of the full run. *Predicted* figures (the `predicted_qos` column, pruning decisions) come from "
          "the ridge predictor over per-table bounds, without training. *Validated* figures are measured on full "
          "runs against a full uncompressed run of the same seed and data.", "",
          "## Picks per threshold", "",
          f"| threshold | pick | config | short-run {spec.qos} | short-run {spec.gain} | "
          f"validated {spec.qos} | validated {spec.gain} | met |",
          "|---:|---|---|---:|---:|---:|---:|---|"]
    for thr in spec.thresholds:
        r = picks.get(thr)
        v = validation.get(thr) or {}
        if r is None:
            L.append(f"| {thr:g} | none feasible | - | - | - | - | - | - |")
            continue
        vq = f"{v['qos']:+.5f}" if v.get("status") == "ok" else "-"
        vg = f"{v['gain']:.2f}" if v.get("status") == "ok" else "-"
        met = ("yes" if v["met"] else "NO") if v.get("status") == "ok" else "not validated"
        L.append(f"| {thr:g} | `picks/{paths[thr].name}` (trial {r['number']}) | {_describe(r['params'])} | "
                 f"{r['qos']:+.5f} | {r['gain']:.2f} | {vq} | {vg} | {met} |")
    L += ["", "## Pareto front (short runs)", "", f"| trial | config | {spec.qos} | {spec.gain} |", "|---:|---|---:|---:|"]
    for r in front:
        L.append(f"| {r['number']} | {_describe(r['params'])} | {r['qos']:+.5f} | {r['gain']:.2f} |")
    L.append("")
    captions = {"qos_vs_gain": f"{spec.qos} vs {spec.gain}: every trial, the Pareto front, thresholds, picks "
                               "and validated full runs",
                "history": "Search history", "predictor": "Predictor: leave-one-out prediction vs measured"}
    for key, rel in plots_made.items():
        L += [f"### {captions[key]}", "", f"![{key}]({rel})", ""]
    L += ["## Use a pick", "", "```bash",
          f"python launch/train.py {' '.join(f'--config {b}' for b in spec.base)} --config {spec.out_dir / 'picks' / '<pick>.yaml'}",
          "```", ""]
    (spec.out_dir / "report.md").write_text("\n".join(L))
