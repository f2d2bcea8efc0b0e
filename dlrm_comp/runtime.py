"""Process-wide runtime settings that the entry points apply explicitly (never at import), and
``to_device``: a small host tensor onto the device without a blocking copy.

``keep_large_allocations``: glibc returns every allocation above its mmap threshold (128 KiB by
default, adapted upwards up to 32 MiB) to the kernel on free, so a step that allocates a few
MB-sized tensors pays fresh page faults on each of them, every step. Measured here on a
Terabyte-shaped step (26 x 65,536 float32): an elementwise subtract-then-multiply took 5.6 ms with
the default and 0.32 ms with the threshold raised; PyTorch's CPU docs recommend jemalloc or
tcmalloc for the same reason. Raising the mmap and trim thresholds keeps freed blocks in the
heap for reuse. A no-op where glibc's ``mallopt`` is not available.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIMIT = 1 << 30  # bytes: blocks up to 1 GiB stay in the heap


def keep_large_allocations() -> bool:
    """Raise glibc's mmap/trim thresholds; True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))


def to_device(t, device):
    """A small host tensor (indices, sizes, statistics) onto ``device`` without blocking the
    host: pinned, then a non-blocking copy on CUDA; the tensor itself elsewhere."""
    import torch
    device = torch.device(device)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
