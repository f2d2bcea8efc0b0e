"""The reference rate: the link rate at which the uncompressed step's breakdown comes closest to
the reference's (the all-to-all, forward plus backward, about 60% of the step).

This CPU computes far slower than the reference's GPUs, so its regime is emulated by the link,
not reproduced by the hardware. Found by measurement: the first guess assumes the all-to-all
time scales as 1/rate and the rest of the step stays; later guesses interpolate (secant in log
rate) between the two latest measurements. Rates are rounded to two significant digits.
"""
from __future__ import annotations

import math
from typing import Callable

from dlrm_comp.bench.netns import format_rate, parse_rate

TARGET = 0.6  # forward + backward all-to-all share of the step (31.3% + 31.3% in the reference)
TOLERANCE = 0.04
LOWEST, HIGHEST = 20e6, 10e9


def a2a_share(row: dict) -> float:
    b = row["breakdown"]
    return (b["fwd_a2a_s"] + b["bwd_a2a_s"]) / row["step_s"]


def round_rate(bits_per_s: float) -> str:
    """Two significant digits in tc's units: 137e6 -> '140mbit'."""
    bits = min(max(bits_per_s, LOWEST), HIGHEST)
    digits = 10 ** (math.floor(math.log10(bits)) - 1)
    return format_rate(round(bits / digits) * digits)


def next_rate(tries: list[dict], target: float = TARGET) -> float:
    """The next rate to measure (bits/s) from the measurements so far (``rate``, ``a2a_share``)."""
    last = tries[-1]
    r1, s1 = parse_rate(last["rate"]), last["a2a_share"]
    if len(tries) >= 2 and abs(tries[-2]["a2a_share"] - s1) > 1e-3:
        r0, s0 = parse_rate(tries[-2]["rate"]), tries[-2]["a2a_share"]
        log_r = math.log(r1) + (target - s1) * (math.log(r0) - math.log(r1)) / (s0 - s1)
        guess = math.exp(log_r)
    else:  # a2a ~ 1/rate, the rest fixed: a' / (a' + c) = target
        s1 = min(max(s1, 1e-3), 1 - 1e-3)
        guess = r1 * (s1 / (1 - s1)) * (1 - target) / target
    return min(max(guess, r1 / 4), r1 * 4)  # at most a factor 4 per step


def find_reference_rate(measure_off: Callable[[str], dict], start: str = "150mbit", tries_max: int = 3,
                        target: float = TARGET, tolerance: float = TOLERANCE) -> tuple[str, list[dict]]:
    """Measure ``off`` at up to ``tries_max`` rates; returns the rate whose all-to-all share came
    closest to ``target`` and every measurement made (``measure_off(rate)`` -> a result row)."""
    tries: list[dict] = []
    rate = start
    for _ in range(tries_max):
        row = measure_off(rate)
        b = row["breakdown"]
        tries.append({"rate": rate, "step_s": row["step_s"], "a2a_share": a2a_share(row),
                      "allreduce_share": b["allreduce_s"] / row["step_s"], "breakdown": b})
        if abs(tries[-1]["a2a_share"] - target) <= tolerance:
            break
        rate = round_rate(next_rate(tries, target))
        if any(t["rate"] == rate for t in tries):
            break
    best = min(tries, key=lambda t: abs(t["a2a_share"] - target))
    return best["rate"], tries
