"""`CriteoDataset`: batches from a preprocessed Criteo cache (see `criteo_cache.preprocess_criteo`).

Splits are contiguous in file order, i.e. in time order, so no future rows leak into training:
train = the first 1 - val_fraction - test_fraction of the rows, then val, then test. (Upstream
DLRM on Kaggle cuts the file into 7 equal "days", trains on the first 6 and halves the 7th into
test then val, about val_fraction = test_fraction = 1/14; the defaults here are 0.05 / 0.05.)
Batch i of a split is rows [i*B, (i+1)*B) of that split; `num_batches` counts full batches only,
so a final partial batch is not a training batch (evaluation reads it through `rows`). Criteo is one-hot: one id per bag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_comp.data.batch import Batch
from dlrm_comp.data.criteo_cache import CriteoMeta, array_problem, preprocess_criteo
from dlrm_comp.data.criteo_parse import NUM_DENSE, CriteoFormatError
from dlrm_comp.data.source import SPLITS, check_batch_request, check_row_request, check_split

__all__ = ["CriteoDataset", "CriteoFormatError", "CriteoMeta", "preprocess_criteo"]


class CriteoDataset:
    """Implements `BatchSource` over the memory-mapped cache in `cache_dir`."""

    def __init__(self, cache_dir: str | Path, *, val_fraction: float = 0.05, test_fraction: float = 0.05):
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each in [0, 1), sum < 1")
        self.cache_dir = Path(cache_dir)
        meta_path = self.cache_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no Criteo cache in {self.cache_dir} (run preprocess_criteo first)")
        self.meta = CriteoMeta.load(meta_path)
        problem = array_problem(self.cache_dir, self.meta)
        if problem:
            raise ValueError(f"Criteo cache {self.cache_dir}: {problem}; rebuild it (preprocess_criteo, "
                             "or delete the folder and run again)")
        self.dense = np.load(self.cache_dir / "dense.npy", mmap_mode="r")
        self.sparse = np.load(self.cache_dir / "sparse.npy", mmap_mode="r")
        self.labels = np.load(self.cache_dir / "labels.npy", mmap_mode="r")
        n = self.meta.rows
        if not self.dense.shape[0] == self.sparse.shape[0] == self.labels.shape[0] == n:
            raise ValueError(f"{self.cache_dir}: cache files disagree with meta.json ({n} rows); rebuild it")
        self.cardinalities = list(self.meta.cardinalities)
        self.num_dense = NUM_DENSE
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        n_val, n_test = int(n * val_fraction), int(n * test_fraction)
        n_train = n - n_val - n_test
        self._ranges = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}

    def split_range(self, split: str) -> tuple[int, int]:
        """[start, stop) of `split` in cache (file) row order."""
        return self._ranges[check_split(split)]

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        start, stop = self.split_range(split)
        check_batch_request(split, index, batch_size, stop - start)
        return self._slice(start + index * batch_size, start + (index + 1) * batch_size)

    def rows(self, split: str, start: int, stop: int) -> Batch:
        first, last = self.split_range(split)
        check_row_request(split, start, stop, last - first)
        return self._slice(first + start, first + stop)

    def num_rows(self, split: str) -> int:
        start, stop = self.split_range(split)
        return stop - start

    def _slice(self, lo: int, hi: int) -> Batch:
        dense = torch.from_numpy(np.array(self.dense[lo:hi], dtype=np.float32))
        ids = torch.from_numpy(np.ascontiguousarray(self.sparse[lo:hi].T, dtype=np.int64))
        labels = torch.from_numpy(np.array(self.labels[lo:hi], dtype=np.float32))
        offsets = [torch.arange(hi - lo, dtype=torch.int64) for _ in self.cardinalities]
        return Batch(dense, list(ids.unbind(0)), offsets, labels)

    def num_batches(self, split: str, batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        start, stop = self.split_range(split)
        return (stop - start) // batch_size

    def describe(self) -> dict[str, Any]:
        return {"source": "criteo", "cache_dir": str(self.cache_dir), "rows": self.meta.rows,
                "split_rows": {s: self._ranges[s][1] - self._ranges[s][0] for s in SPLITS},
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "cardinalities": self.cardinalities, "num_dense": self.num_dense,
                "click_rate": self.meta.positives / max(self.meta.rows, 1), "settings": self.meta.settings,
                "skipped_lines": self.meta.skipped_lines, "first_skipped": self.meta.first_skipped,
                "sources": self.meta.sources}
