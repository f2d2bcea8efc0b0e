"""`SyntheticCriteo`: a Criteo-shaped click stream with a known Bayes-optimal AUC.

Rows are a pure function of (seed, split, row number): train is an unbounded stream, val and test
are fixed sets of `num_val_samples` / `num_test_samples` rows from their own hash streams (so no
row is shared between splits). Labels ~ Bernoulli(teacher probability), see `teacher.py`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dlrm_comp.data.batch import Batch
from dlrm_comp.data.features import DenseProfile, FeatureSampler, Items
from dlrm_comp.data.source import check_batch_request, check_row_request, check_split
from dlrm_comp.data.teacher import Teacher, TeacherConfig
from dlrm_comp.data.zipf import ZipfTables
from dlrm_comp.metrics import roc_auc

PROFILES: dict[str, list[int]] = {
    # Criteo Kaggle display advertising challenge, 26 categorical columns
    "kaggle": [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
               5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572],
    # Criteo Terabyte with upstream's max index range of 10M
    "terabyte": [9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10, 2208,
                 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36],
    # small and fast, for tests and debugging
    "tiny": [4096, 2048, 1000, 500, 100, 40, 10, 4],
    # Kaggle's tables with per-table exponents that reproduce real Criteo's repeated ids (below)
    "criteo_like": [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572],
}

# Distinct ids per 128-row chunk, per table, on the first 10,000 rows of the real Criteo Kaggle
# training file (measured; see the bag-deduplication issue). A profile listed here gets per-table
# Zipf exponents solved so that its chunks hold these fractions (`zipf.fit_exponents`), at the
# run's own (capped) cardinalities; `data.zipf_exponent` applies to the other profiles.
DISTINCT_FRACTIONS: dict[str, tuple[int, list[float]]] = {
    "criteo_like": (128, [0.15, 0.48, 0.83, 0.76, 0.08, 0.05, 0.92, 0.11, 0.02, 0.68, 0.87, 0.82, 0.84, 0.08, 0.86,
                          0.81, 0.07, 0.71, 0.20, 0.03, 0.82, 0.04, 0.08, 0.62, 0.12, 0.45]),
}


def profile_exponents(profile: str, cardinalities: list[int], default: float) -> float | list[float]:
    """The Zipf exponent(s) of a profile: fitted per table where it names distinct fractions."""
    if profile not in DISTINCT_FRACTIONS:
        return default
    from dlrm_comp.data.zipf import fit_exponents
    rows, fractions = DISTINCT_FRACTIONS[profile]
    return fit_exponents(cardinalities, fractions, rows)

_STREAMS = {"train": 0, "val": 1, "test": 2}
_CALIBRATION_STREAM = 3
DEFAULT_SIGNAL_STRENGTH = 1.7  # Bayes AUC ~0.84 on tiny and on kaggle capped at 10k rows


def resolve_cardinalities(profile: str, custom: list[int] | None, max_ind_range: int) -> list[int]:
    """Table sizes of a named profile (or `custom` for profile "custom"), capped at max_ind_range > 0."""
    accepted = ", ".join([*PROFILES, "custom"])
    if profile == "custom":
        if not custom:
            raise ValueError("profile 'custom' needs a non-empty list of cardinalities")
        cards = [int(c) for c in custom]
    elif profile in PROFILES:
        if custom:
            raise ValueError(f"cardinalities are only used with profile 'custom', not {profile!r}")
        cards = list(PROFILES[profile])
    else:
        raise ValueError(f"unknown synthetic profile {profile!r}; accepted profiles: {accepted}")
    if any(c < 1 for c in cards):
        raise ValueError(f"every cardinality must be >= 1, got {cards}")
    if max_ind_range < 0:
        raise ValueError(f"max_ind_range must be >= 0 (0: no cap), got {max_ind_range}")
    return [min(c, max_ind_range) for c in cards] if max_ind_range > 0 else cards


class SyntheticCriteo:
    """Implements `BatchSource`. Cheap to construct (a calibration sample of ~32k rows)."""

    def __init__(self, cardinalities: list[int], *, num_dense: int = 13, seed: int = 0,
                 zipf_exponent: float | list[float] = 1.1,
                 pooling_factor: int = 1, click_rate: float = 0.25, num_val_samples: int = 16384,
                 num_test_samples: int = 16384, signal_strength: float = DEFAULT_SIGNAL_STRENGTH,
                 teacher: TeacherConfig | None = None):
        if not cardinalities:
            raise ValueError("SyntheticCriteo needs at least one table")
        if num_dense < 1:
            raise ValueError(f"num_dense must be >= 1, got {num_dense}")
        if not 0.0 < click_rate < 1.0:
            raise ValueError(f"click_rate must be in (0, 1), got {click_rate}")
        if num_val_samples < 1 or num_test_samples < 1:
            raise ValueError("num_val_samples and num_test_samples must be >= 1")
        if signal_strength < 0:
            raise ValueError(f"signal_strength must be >= 0, got {signal_strength}")
        self.cardinalities = [int(c) for c in cardinalities]
        self.num_dense, self.seed = int(num_dense), int(seed)
        self.zipf_exponent = [float(e) for e in zipf_exponent] if isinstance(zipf_exponent, (list, tuple)) \
            else float(zipf_exponent)
        self.pooling_factor, self.click_rate = int(pooling_factor), click_rate
        self.num_samples = {"train": None, "val": int(num_val_samples), "test": int(num_test_samples)}
        structure = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED]))
        self.zipf = ZipfTables.create(self.cardinalities, self.zipf_exponent, structure)
        self.sampler = FeatureSampler(self.zipf, DenseProfile.create(self.num_dense, structure),
                                      self.pooling_factor, self.seed)
        self.teacher = Teacher(len(self.cardinalities), self.num_dense, (1 + self.pooling_factor) / 2,
                               teacher or TeacherConfig(), self.seed, structure)
        rows = np.arange(self.teacher.cfg.calibration_rows, dtype=np.int64)
        items, dense = self._inputs(_CALIBRATION_STREAM, rows)
        self.teacher.calibrate(items, dense, signal_strength, click_rate)
        self._bayes_auc: dict[str, float] = {}

    # ------------------------------------------------------------------ BatchSource
    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        check_batch_request(split, index, batch_size, self.num_samples[check_split(split)])
        return self._batch_of(split, np.arange(index * batch_size, (index + 1) * batch_size, dtype=np.int64))

    def rows(self, split: str, start: int, stop: int) -> Batch:
        check_row_request(split, start, stop, self.num_samples[check_split(split)])
        return self._batch_of(split, np.arange(start, stop, dtype=np.int64))

    def num_rows(self, split: str) -> int | None:
        return self.num_samples[check_split(split)]

    def _batch_of(self, split: str, rows: np.ndarray) -> Batch:
        items, dense, probs = self._rows(split, rows)
        labels = self.sampler.label_uniforms(_STREAMS[split], rows) < probs
        indices, offsets = self._bags(items)
        return Batch(torch.from_numpy(dense), indices, offsets, torch.from_numpy(labels.astype(np.float32)))

    def num_batches(self, split: str, batch_size: int) -> int | None:
        check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.num_samples[split]
        return None if n is None else n // batch_size

    def describe(self) -> dict[str, Any]:
        return {"source": "synthetic", "cardinalities": self.cardinalities, "num_dense": self.num_dense,
                "seed": self.seed, "zipf_exponent": self.zipf_exponent, "pooling_factor": self.pooling_factor,
                "click_rate": self.click_rate, "num_val_samples": self.num_samples["val"],
                "num_test_samples": self.num_samples["test"], "teacher": self.teacher.describe(),
                "bayes_auc_val": round(self.bayes_auc("val"), 6)}

    # ------------------------------------------------------------------ ground truth
    def click_probabilities(self, split: str, index: int, batch_size: int) -> np.ndarray:
        """The teacher's true click probabilities for the rows of `batch(split, index, batch_size)`."""
        check_batch_request(split, index, batch_size, self.num_samples[check_split(split)])
        rows = np.arange(index * batch_size, (index + 1) * batch_size, dtype=np.int64)
        return self._rows(split, rows)[2]

    def bayes_auc(self, split: str = "val") -> float:
        """AUC of the true probabilities against the drawn labels (train: its first num_val rows)."""
        check_split(split)
        if split not in self._bayes_auc:
            n = self.num_samples[split] or self.num_samples["val"]
            probs, labels = [], []
            for start in range(0, n, 8192):
                rows = np.arange(start, min(n, start + 8192), dtype=np.int64)
                p = self._rows(split, rows)[2]
                probs.append(p)
                labels.append(self.sampler.label_uniforms(_STREAMS[split], rows) < p)
            y = np.concatenate(labels)
            self._bayes_auc[split] = roc_auc(y, np.concatenate(probs))
        return self._bayes_auc[split]

    # ------------------------------------------------------------------ internals
    def _inputs(self, stream: int, rows: np.ndarray) -> tuple[Items, np.ndarray]:
        return self.sampler.items(stream, rows), self.sampler.dense(stream, rows)

    def _rows(self, split: str, rows: np.ndarray) -> tuple[Items, np.ndarray, np.ndarray]:
        items, dense = self._inputs(_STREAMS[split], rows)
        logits = self.teacher.logits(items, dense)
        return items, dense, 1.0 / (1.0 + np.exp(-logits))

    def _bags(self, items: Items) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b, t = items.bag_sizes.shape
        if items.one_hot:
            per_table = torch.from_numpy(np.ascontiguousarray(items.ids.reshape(b, t).T))
            return list(per_table.unbind(0)), [torch.arange(b, dtype=torch.int64) for _ in range(t)]
        counts = items.bag_sizes.sum(axis=0).tolist()
        indices = list(torch.from_numpy(items.ids).split(counts))
        starts = np.cumsum(items.bag_sizes, axis=0) - items.bag_sizes
        offsets = list(torch.from_numpy(np.ascontiguousarray(starts.T)).unbind(0))
        return indices, offsets

