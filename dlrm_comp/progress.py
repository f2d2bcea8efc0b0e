"""Progress bars that stay out of log files: a bar redraws itself with carriage returns, which a
terminal overwrites but a redirected stderr (a batch job's log) keeps, thousands of frames a run."""
from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, drawn only when `enabled` and stderr is a terminal (disabled otherwise:
    it then iterates and counts without writing)."""
    return tqdm(iterable, disable=not (enabled and _stderr_is_tty()), **kwargs)


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
