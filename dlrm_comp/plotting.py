"""Figures without pyplot's process-wide state: no backend switch at import, no global figure
registry to close. ``Figure.savefig`` renders PNGs with Agg on any machine."""
from __future__ import annotations

from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, on a figure nobody else holds."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)
