"""The one timing harness for codecs: best-of-n wall time, and a lossless stage's measurement.

Every place that times a codec (the Btune port and the lossless selector, the offline benchmark
pipeline, the default-selection script, benchmarks/) uses these, so their figures mean the same:
the fastest of several calls (the least disturbed by the machine), the first call included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dlrm_comp.compress.lossless.base import LosslessCodec
from dlrm_comp.stopwatch import Stopwatch

Timer = Callable[[], float]


def best_time(fn: Callable[[], Any], reps: int = 3, min_s: float = 0.0, max_reps: int = 50,
              timer: Timer | None = None, device: Any = "cpu") -> tuple[Any, float]:
    """(first result, fewest seconds of one call) over at least ``reps`` calls, more (up to
    ``max_reps``) until ``min_s`` seconds have been spent. Timed by the stopwatch of ``device``
    (synchronised on a GPU, so the figure is the device's work), or by ``timer`` when given."""
    watch = Stopwatch(device)
    out, best, total, n = None, float("inf"), 0.0, 0
    while n < max(1, reps) or (total < min_s and n < max_reps):
        if timer is None:
            got, dt = watch.time(fn)
        else:
            t0 = timer()
            got = fn()
            dt = timer() - t0
        if n == 0:
            out = got
        best, total, n = min(best, dt), total + dt, n + 1
    return out, best


@dataclass
class Measurement:
    """A lossless stage on one sample (what the tuner scores)."""

    nbytes: int  # uncompressed bytes of the sample
    csize: int  # compressed bytes
    ctime: float  # seconds to compress the sample
    dtime: float  # seconds to decompress it

    @property
    def cratio(self) -> float:
        return self.nbytes / self.csize if self.csize else float("inf")


def measure_codec(codec: LosslessCodec, sample: bytes, typesize: int, reps: int = 3, verify: bool = True,
                  timer: Timer | None = None) -> Measurement:
    """Best-of-``reps`` compress and decompress times of ``codec`` on ``sample`` (round trip
    checked unless ``verify`` is off)."""
    comp, ct = best_time(lambda: codec.compress(sample, typesize), reps, timer=timer)
    back, dt = best_time(lambda: codec.decompress(comp, len(sample)), reps, timer=timer)
    if verify and back != sample:
        raise AssertionError(f"{codec!r} does not round-trip")
    return Measurement(len(sample), len(comp), ct, dt)
