#!/usr/bin/env python
"""Train DLRM with the embedding exchange compressed in the loop. See `--help` and README.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlrm_comp.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
