"""The contract between data and training: batches as a pure function of (split, index, size)."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dlrm_comp.data.batch import Batch

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> str:
    """Reject an unknown split early, naming the accepted ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted splits: {', '.join(SPLITS)}")
    return split


def check_batch_request(split: str, index: int, batch_size: int, num_rows: int | None) -> None:
    """Shared argument checks: a bounded split only serves whole batches inside it."""
    check_split(split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if index < 0:
        raise IndexError(f"batch index must be >= 0, got {index}")
    if num_rows is not None and (index + 1) * batch_size > num_rows:
        raise IndexError(f"{split} batch {index} of size {batch_size} needs rows up to {(index + 1) * batch_size}, "
                         f"but the split has {num_rows} rows ({num_rows // batch_size} full batches)")


def check_row_request(split: str, start: int, stop: int, num_rows: int | None) -> None:
    """Shared checks for `rows`: a non-empty range inside the split."""
    check_split(split)
    if not 0 <= start < stop:
        raise IndexError(f"{split} rows [{start}, {stop}) is not a non-empty range starting at >= 0")
    if num_rows is not None and stop > num_rows:
        raise IndexError(f"{split} rows [{start}, {stop}) go past the split's {num_rows} rows")


@runtime_checkable
class BatchSource(Protocol):
    """Where batches come from. Stateless by contract: no hidden iterator, so a resumed run or
    another rank asking for the same (split, index, batch_size) gets identical tensors."""

    cardinalities: list[int]
    num_dense: int

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Rows [index * batch_size, (index + 1) * batch_size) of `split`."""
        ...

    def num_batches(self, split: str, batch_size: int) -> int | None:
        """Full batches in `split`; None for an unbounded stream (synthetic train)."""
        ...

    def num_rows(self, split: str) -> int | None:
        """Rows in `split`; None for an unbounded stream. Evaluation reads every one of them."""
        ...

    def rows(self, split: str, start: int, stop: int) -> Batch:
        """Rows [start, stop) of `split`: any range inside it, so a partial last batch can be read."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about the data for the run summary."""
        ...
