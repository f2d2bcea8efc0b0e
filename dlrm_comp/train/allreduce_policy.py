"""``dist.allreduce_compression=auto``: the dense allreduce's setting, chosen by measurement.

Which setting is fastest depends on the link and the machine: on the link benchmark's 1 Gbit/s
link PowerSGD's three chained collectives took 7.0 ms of allreduce a step against 2.6 ms for the
plain one, at 360 Mbit/s it was the fastest. No model predicts the latency of the chained
collectives and their callbacks, so the candidates (``CANDIDATES``: the plain allreduce, the
16-bit cast and PowerSGD) are measured as they run: at each print interval, like
``compress.peers=auto`` (``train/peer_policy.py``, whose trial and hysteresis rules this shares),
one candidate without a measurement travels for one interval as a trial (a candidate's measure is
the mean of every interval it ran in the round, ``file_mean``); once every candidate
that can run has one, the fastest wins, switching away from the last chosen setting only when it
is more than ``HYSTERESIS`` (5%) faster (``keep_or_switch``), in either direction. At the start
of every later round (``RoundSchedule``: ``RETRIAL_EVERY`` decisions after the last one began,
the cadence of ``compress.peers=auto``'s link probes, the gap doubling after every round that
kept the choice, up to 8 times, and back after one that changed it) the measurements are dropped,
the interval just run becoming the first of the new round, and the others are tried again: a
link's rate or the codec's share of the step may have moved.

The measure (``AllreduceCompression.measure``): per step, the breakdown's ``allreduce_s`` plus
``compute_s``, every rank's mean (the breakdown's reduction), broadcast from rank 0 so every rank
decides from the same bits. ``allreduce_s`` alone misses what a setting costs before its first
collective: the hook runs on the backward's thread when the dense bucket is ready (PowerSGD's
error feedback, its P = MQ products; the casts), inside ``compute_s``. The whole step would take
that in too, but also the embedding exchange and the codec (``fwd_a2a_s``, ``bwd_a2a_s``,
``codec_s``), which no allreduce setting changes and which ``compress.peers=auto`` moves in the
same intervals by its own trials: with the whole step, a route trial of the exchange would be
credited to the allreduce candidate that happened to travel with it. The hysteresis is then 5%
of the dense part of the step, not of its allreduce phase alone: a switch must buy a step-level
gain, so noise never makes ``auto`` slower than ``off``.

What a candidate needs before it is measured: the run's first interval is warm-up (first
allocations, DDP's bucket rebuild) and measures nothing; PowerSGD is tried only from
``dist.powersgd_start_iter`` on (an interval starting before it would run torch's plain allreduce
under PowerSGD's name). Until the first decision the plain allreduce (``off``) travels.

The decision state (last chosen setting, what travels, the measurements, the decision count) is
checkpointed with the hook (``AllreduceCompression.state_dict``): given the same measurements, a
resumed run decides as the uninterrupted one.
"""
from __future__ import annotations

from typing import Any

from dlrm_comp.train.peer_policy import (HYSTERESIS, PROBE_EVERY, RoundSchedule, file_mean, first_unmeasured,
                                         keep_or_switch)

CANDIDATES = ("off", "fp16", "powersgd")  # in trial order; fp16: the 16-bit cast (bf16 halves the bytes alike)
RETRIAL_EVERY = PROBE_EVERY  # decisions between two rounds of trials (doubling while the choice holds)


class AllreducePolicy:
    """The decisions of one run and the measurements they were taken from (no communication:
    the caller hands every rank the same measurement)."""

    def __init__(self, candidates=CANDIDATES, powersgd_start: int = 0):
        self.candidates = list(candidates)
        self.powersgd_start = powersgd_start  # PowerSGD's first compressed iteration
        self.chosen = self.candidates[0]  # the incumbent: the last decided setting (`off` until a decision)
        self.setting = self.chosen  # what the hook runs in the open interval (a trial or the chosen one)
        self.since = 0  # the iteration the open interval began at
        self.seconds: dict[str, float] = {}  # candidate -> the measure, seconds per step (its intervals' mean)
        self.samples: dict[str, int] = {}  # candidate -> intervals in that mean (this round)
        self.allreduce_s: dict[str, float] = {}  # candidate -> its allreduce phase alone (for the record)
        self.decisions = 0
        self.rounds = RoundSchedule(RETRIAL_EVERY)

    def ready(self, candidate: str, iteration: int) -> bool:
        """Whether an interval from ``iteration`` on runs ``candidate`` as itself on every step."""
        return candidate != "powersgd" or iteration >= self.powersgd_start

    def interval(self, iteration: int, measured: tuple[float, float] | None) -> dict[str, Any]:
        """File ``measured`` (the measure and the allreduce phase, seconds per step, of the
        interval that ends at ``iteration``) under the setting that ran in it, decide what runs
        next, and return the decision's record."""
        retrial = self.rounds.due(self.decisions)
        if retrial:  # the interval just run is the first of the new round's measurements
            self.rounds.begin(self.decisions, self.chosen)
            self.seconds, self.allreduce_s, self.samples = {}, {}, {}
        filed = None
        if measured is not None and self.since > 0 and self.ready(self.setting, self.since):
            filed = self.setting
            file_mean(self.seconds, self.samples, filed, float(measured[0]))
            self.allreduce_s[filed] = float(measured[1])  # the record's: the last interval's phase
        self.decisions += 1
        trial = first_unmeasured([c for c in self.candidates if self.ready(c, iteration)], self.seconds)
        if trial is None:
            self.chosen = keep_or_switch(self.seconds, self.chosen)
            self.rounds.end(self.chosen)
        self.setting = trial or self.chosen
        self.since = iteration
        return {"setting": self.setting, "trial": trial is not None, "chosen": self.chosen, "measured": filed,
                "retrial": retrial, "seconds": dict(self.seconds), "allreduce_s": dict(self.allreduce_s),
                "hysteresis": HYSTERESIS, "round_gap": self.rounds.gap}

    @staticmethod
    def line(iteration: int, record: dict[str, Any], candidates) -> str:
        seconds = record["seconds"]
        figures = ", ".join(f"{c} {seconds[c] * 1e3:.2f} ms" if c in seconds else f"{c} -" for c in candidates)
        what = f"{record['setting']} (trial)" if record["trial"] else record["setting"]
        return f"[allreduce] iteration {iteration}: {what}; measured per step (allreduce + compute): {figures}"

    def state_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "setting": self.setting, "since": self.since, "seconds": dict(self.seconds),
                "samples": dict(self.samples), "allreduce_s": dict(self.allreduce_s), "decisions": self.decisions,
                "rounds": self.rounds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A saved candidate this run no longer has is dropped (it starts from ``off`` then)."""
        known = set(self.candidates)
        self.chosen = state.get("chosen") if state.get("chosen") in known else self.candidates[0]
        self.setting = state.get("setting") if state.get("setting") in known else self.chosen
        self.since = int(state.get("since", 0))
        self.seconds = {c: float(v) for c, v in state.get("seconds", {}).items() if c in known}
        saved = state.get("samples", {})  # a checkpoint from before the means: one interval each
        self.samples = {c: int(saved.get(c, 1)) for c in self.seconds}
        self.allreduce_s = {c: float(v) for c, v in state.get("allreduce_s", {}).items() if c in known}
        self.decisions = int(state.get("decisions", 0))
        self.rounds.load_state_dict(state.get("rounds"), self.decisions)
