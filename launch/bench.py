#!/usr/bin/env python
"""Offline compression benchmark: thin CLI over dlrm_comp.bench (see dlrm_comp/bench/cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlrm_comp.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
