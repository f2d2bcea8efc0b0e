"""Offline compression benchmark (the reference's "Part 1" pipeline): dump pooled embedding outputs
during a short training, quantize them, pad them to emulate larger messages, encode with every
lossless stage, Btune's pick, SZ3 and the fixed-rate baselines, and report ratios, throughputs,
the modeled speedup and plots. CLI: ``launch/bench.py`` (``python -m dlrm_comp.bench.cli``)."""
from __future__ import annotations

from dlrm_comp.bench.dumps import DumpExtension, DumpFormatError, list_dumps, load_dump, read_meta, write_meta

__all__ = ["DumpExtension", "DumpFormatError", "list_dumps", "load_dump", "read_meta", "write_meta"]
