"""Every Triton launch of the package goes through ``launch``: one place that fixes the launch
options the arithmetic depends on, and counts launches for the tests.

``enable_fp_fusion=False``: Triton contracts ``a*b + c`` into an FMA by default (one rounding
instead of two), which would break bit-identity with the torch path and the CPU loops; the
interpreter never fuses, so this option is what makes the interpreted tests speak for the GPU.
"""
from __future__ import annotations

import contextlib


class Counter:
    def __init__(self):
        self.n = 0


_counters: list[Counter] = []


def launch(kernel, grid, *args, **kwargs) -> None:
    for c in _counters:
        c.n += 1
    kernel[grid](*args, enable_fp_fusion=False, **kwargs)


@contextlib.contextmanager
def count():
    """``with count() as c: ...``; then ``c.n`` is the number of Triton launches inside."""
    c = Counter()
    _counters.append(c)
    try:
        yield c
    finally:
        _counters.remove(c)
