"""Data layer: the `Batch` every model consumes and the `BatchSource`s that produce it.

Two sources: `SyntheticCriteo` (a seeded, stateless Criteo-like generator with a hidden teacher)
and `CriteoDataset` (a memory-mapped cache of preprocessed raw Criteo TSV files).
"""
from __future__ import annotations

from dlrm_comp.data.batch import Batch
from dlrm_comp.data.source import SPLITS, BatchSource, check_split

__all__ = ["Batch", "BatchSource", "SPLITS", "check_split"]
