"""The one stopwatch: times work on a device the way that device runs it.

On the host, ``perf_counter`` readings. On a CUDA device, events recorded on the current stream:
recording never waits for the device, and a span is read only when ``seconds`` is asked for (the
end event is waited on then), so a training step can be timed without a host sync and the spans
resolved at a print interval. ``time(fn)`` is the benchmark form: it synchronises before and after,
so the figure is the device's work, not the launch. The exchange (codec time), the step-time
breakdown and the benchmarks' ``best_time`` all use this class.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch


class Stopwatch:
    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.name = "cuda_events" if self.cuda else "perf_counter"

    def now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a: Any, b: Any) -> float:
        """Seconds from mark ``a`` to mark ``b`` (on CUDA: waits for ``b`` to complete)."""
        if not self.cuda:
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1e3

    def span(self, a: Any) -> "Span":
        """The span from mark ``a`` to now, to read later."""
        return Span(self, a, self.now())

    def settle(self) -> None:
        """Wait for the device's queued work (a no-op on the host)."""
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """(fn(), seconds of the device's work for it): synchronised before and after."""
        self.settle()
        t0 = time.perf_counter()
        out = fn()
        self.settle()
        return out, time.perf_counter() - t0


class Span:
    """Two marks of one stopwatch; ``seconds()`` reads them (host spans are exact at once)."""

    __slots__ = ("watch", "a", "b")

    def __init__(self, watch: Stopwatch, a: Any, b: Any):
        self.watch, self.a, self.b = watch, a, b

    @property
    def on_host(self) -> bool:
        return not self.watch.cuda

    def seconds(self) -> float:
        return self.watch.seconds(self.a, self.b)
