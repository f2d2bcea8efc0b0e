"""Regenerate quickstart.ipynb and analysis.ipynb from the cell sources below (outputs stripped).

    .venv/bin/python notebooks/build_notebooks.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os
from pathlib import Path

# Parameters (environment variables, so tests can run this notebook at a tiny size):
#   DLRM_COMP_NB_SIZE = small (default, about a minute on 2 cores) | tiny (seconds; used by the tests)
#   DLRM_COMP_NB_OUT  = where run directories go (default: runs/notebooks/ at the repository root)
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "configs" / "debug.yaml").exists())
SIZE = os.environ.get("DLRM_COMP_NB_SIZE", "small")
OUT = Path(os.environ.get("DLRM_COMP_NB_OUT", ROOT / "runs" / "notebooks"))
BASE = [ROOT / "configs" / "debug.yaml"]
SIZES = {
    "small": ["train.iterations=1000", "train.eval_every=200", "train.print_every=100", "train.checkpoint_every=0",
              "compress.decay.early_stage=300"],
    "tiny": ["data.profile=tiny", "model.emb_dim=4", "model.bottom_mlp=13-8-4", "model.top_mlp=8-1",
             "train.iterations=40", "train.eval_every=10", "train.print_every=10", "train.checkpoint_every=0",
             "data.num_val_samples=1024", "data.eval_batch_size=512", "data.batch_size=32",
             "compress.table_preset=rank:top=2,bottom=3", "compress.decay.early_stage=20"],
}
COMMON = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "compress.print_tables=false"]
print(f"repository {ROOT}, size {SIZE}, runs under {OUT}")
'''

QUICK = [
    new_markdown_cell(
        "# dlrm_comp quickstart\n\n"
        "Train the debug config (synthetic Criteo-like data with a hidden teacher) twice, **without** and "
        "**with** in-loop compression of the embedding outputs, then compare validation AUC, the running "
        "compression ratio, and the per-table error bounds. At the default size this takes about a minute "
        "on 2 CPU cores."),
    new_code_cell(SETUP),
    new_markdown_cell("## Train: uncompressed and compressed (`codec`: error-bounded quantizer + lossless stage)"),
    new_code_cell('''\
from dlrm_comp.config import load_config
from dlrm_comp.train.loop import Trainer

summaries = {}
for name, mode in [("off", "off"), ("codec", "codec")]:
    cfg = load_config(BASE, [*SIZES[SIZE], *COMMON, f"compress.mode={mode}", f"name={name}"], env={})
    summaries[name] = Trainer(cfg, OUT / "quickstart" / name).run()
    s = summaries[name]
    print(f"{name:6s} AUC {s['final_eval']['auc']:.4f}  logloss {s['final_eval']['logloss']:.4f}  "
          f"wire ratio {(s.get('compression') or {}).get('cr', 1.0):.2f}x")
'''),
    new_markdown_cell("## Compare: the same table the ablation runner writes"),
    new_code_cell('''\
from IPython.display import Markdown, display
from dlrm_comp.study.report import build_table, to_markdown
from dlrm_comp.study.runs import load_run

runs = [load_run(OUT / "quickstart" / name, name=name) for name in ("off", "codec")]
rows = build_table(runs, baseline="off")
display(Markdown(to_markdown(rows)))
'''),
    new_markdown_cell("## Curves: validation AUC and running-average compression ratio"),
    new_code_cell('''\
%matplotlib inline
import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for run in runs:
    xs, ys = zip(*run.metric("auc"))
    ax1.plot(xs, ys, "o-", label=run.name)
    if run.cr_curve:
        xs, ys = zip(*run.cr_curve)
        ax2.plot(xs, ys, "o-", label=f"{run.name} (running average)")
        xs, ys = zip(*run.interval_cr)
        ax2.plot(xs, ys, ".:", alpha=0.6, label=f"{run.name} (each interval)")
ax1.set(xlabel="iteration", ylabel="validation AUC", title="AUC vs iteration")
ax2.set(xlabel="iteration", ylabel="compression ratio (x)", title="wire ratio vs iteration", ylim=(0, None))
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()
'''),
    new_markdown_cell("## Per-table bounds\n\nBase bound per table (tightened for the largest tables, loosened "
                      "for small ones) and the decay schedule that scales them early in training."),
    new_code_cell('''\
import numpy as np

codec = runs[1]
cfg = load_config(BASE, [*SIZES[SIZE], *COMMON, "compress.mode=codec"], env={})
tables = [t["table"] for t in codec.per_table]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
x = np.arange(len(tables))
ax1.bar(x, [t["eb_rel_base"] for t in codec.per_table], color="tab:blue", label="eb_rel (base)")
ax1.set(xticks=x, xticklabels=tables, xlabel="table", ylabel="relative error bound")
ax1b = ax1.twinx()
ax1b.plot(x, [t["cr"] for t in codec.per_table], "k.-", label="ratio")
ax1b.set_ylabel("compression ratio (x)")
ax1.set_title("per-table bound and ratio")
ax1.legend(loc="upper left"); ax1b.legend(loc="upper right")
d = cfg.compress.decay
ts = np.arange(cfg.train.iterations)
ax2.plot(ts, [d.multiplier(int(t)) for t in ts])
ax2.set(xlabel="iteration", ylabel="bound multiplier", title=f"decay '{d.func}', C={d.constant:g}, E={d.early_stage}")
ax2.grid(alpha=0.3)
plt.tight_layout()
plt.show()
'''),
    new_markdown_cell("Next: `launch/ablate.py` for sweeps over `configs/ablations/*.yaml`, `launch/tune.py` for "
                      "the QoS-threshold search, and `analysis.ipynb` to compare any run directories."),
]

ANALYSIS = [
    new_markdown_cell(
        "# Analyse run directories\n\n"
        "Load any run directories (`metrics.jsonl`, `summary.json`), compare their final metrics against an "
        "uncompressed baseline, and plot the curves. Point `DLRM_COMP_NB_RUNS` at directories "
        "(separated by `" + ":" + "`), or at an ablation output (`<sweep>/runs/*`); by default every run under "
        "`runs/` is used, and on a fresh set-up two small runs are trained first."),
    new_code_cell(SETUP + '''
runs_env = os.environ.get("DLRM_COMP_NB_RUNS", "")
if runs_env:
    RUN_DIRS = [Path(p) for p in runs_env.split(os.pathsep) if p]
else:
    RUN_DIRS = sorted({p.parent for p in (ROOT / "runs").glob("**/summary.json")
                       if "trials" not in p.parts and "baseline_short" not in p.parts})[:12]
print(len(RUN_DIRS), "run directories")
'''),
    new_code_cell('''\
if not RUN_DIRS:  # fresh set-up: make two runs to look at
    from dlrm_comp.config import load_config
    from dlrm_comp.train.loop import Trainer
    for name, mode in [("off", "off"), ("codec", "codec")]:
        cfg = load_config(BASE, [*SIZES[SIZE], *COMMON, f"compress.mode={mode}", f"name={name}"], env={})
        Trainer(cfg, OUT / "analysis" / name).run()
        RUN_DIRS.append(OUT / "analysis" / name)
'''),
    new_markdown_cell("## Load and compare"),
    new_code_cell('''\
from IPython.display import Markdown, display
from dlrm_comp.study.report import build_table, to_markdown
from dlrm_comp.study.runs import load_run

runs = [load_run(d) for d in RUN_DIRS]
names = [r.name for r in runs]
for i, r in enumerate(runs):  # unique labels: the run name, or the directory name when names repeat
    if names.count(r.name) > 1:
        r.name = f"{r.name} ({r.path.name})"
baseline = next((r.name for r in runs if r.mode == "off"), None)
rows = build_table(runs, baseline=baseline)
print(f"baseline for the deltas: {baseline}")
display(Markdown(to_markdown(rows)))
'''),
    new_markdown_cell("## Curves"),
    new_code_cell('''\
%matplotlib inline
import matplotlib.pyplot as plt

fig, axes = plt.subplots(2, 2, figsize=(13, 8))
for run in runs:
    for ax, key in ((axes[0, 0], "auc"), (axes[0, 1], "logloss")):
        pts = run.metric(key)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", ms=3, label=run.name)
    if run.train_curve:
        xs = [it for it, _ in run.train_curve]
        axes[1, 0].plot(xs, [rec["loss"] for _, rec in run.train_curve], label=run.name)
    if run.cr_curve:
        xs, ys = zip(*run.cr_curve)
        axes[1, 1].plot(xs, ys, "o-", ms=3, label=run.name)
for ax, (title, ylabel) in zip(axes.flat, [("validation AUC", "AUC"), ("validation logloss", "logloss"),
                                           ("training loss (interval mean)", "loss"),
                                           ("running-average compression ratio", "ratio (x)")]):
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
plt.tight_layout()
plt.show()
'''),
    new_markdown_cell("## Per-table ratios and the ablation figures\n\nThe same figures `launch/ablate.py` writes "
                      "(AUC with a zoomed inset of the end, running ratio, per-table bars), saved next to the runs."),
    new_code_cell('''\
from IPython.display import Image
from dlrm_comp.study import plots

fig_dir = OUT / "analysis_figures"
fig_dir.mkdir(parents=True, exist_ok=True)
for maker, fname in ((lambda p: plots.plot_metric_curves(runs, p, "auc"), "auc.png"),
                     (lambda p: plots.plot_per_table_cr(runs, p), "per_table.png")):
    path = maker(fig_dir / fname)
    if path is not None:
        display(Image(filename=str(path)))
'''),
]


def build() -> None:
    for name, cells in (("quickstart.ipynb", QUICK), ("analysis.ipynb", ANALYSIS)):
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()
