"""The notebooks run top to bottom (nbclient) at a tiny size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from plot_checks import assert_plot

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


def _execute(name: str, monkeypatch, **env: str):
    monkeypatch.setenv("DLRM_COMP_NB_SIZE", "tiny")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    return nb


def _outputs(nb) -> str:
    return "\n".join(json.dumps(cell.get("outputs", [])) for cell in nb.cells if cell.cell_type == "code")


def test_notebook_quickstart_runs(tmp_path, monkeypatch):
    nb = _execute("quickstart.ipynb", monkeypatch, DLRM_COMP_NB_OUT=str(tmp_path))
    out = _outputs(nb)
    assert "image/png" in out  # the curves and per-table plots were drawn
    for name in ("off", "codec"):
        assert (tmp_path / "quickstart" / name / "summary.json").exists()
    assert "dAUC vs off" in out


def test_notebook_analysis_runs_on_given_dirs(tmp_path, monkeypatch):
    from dlrm_comp.study.fake import make_fake_run
    dirs = [make_fake_run(tmp_path / "a" / "off", "off", 0.80, None),
            make_fake_run(tmp_path / "a" / "codec", "codec", 0.799, 12.0)]
    nb = _execute("analysis.ipynb", monkeypatch, DLRM_COMP_NB_OUT=str(tmp_path / "nb"),
                  DLRM_COMP_NB_RUNS=":".join(str(d) for d in dirs))
    out = _outputs(nb)
    assert "baseline for the deltas: off" in out
    assert out.count("image/png") >= 2
    assert_plot(tmp_path / "nb" / "analysis_figures" / "auc.png")
