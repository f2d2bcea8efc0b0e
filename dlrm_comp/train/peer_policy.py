"""``compress.peers=auto``: per class of peer and direction, compress only where it pays.

The classes are this rank's node (``local``, the rank itself included) and the other nodes
(``remote``). At each print interval, for each routed direction (a byte-message mode) and each
class, the speedup model of the benchmarks and Btune,

    speedup = 1 / (1/CR + B (1/Tc + 1/Td)),

says what compressing buys over sending the rows raw: B the class's link throughput, Tc and Td the
codec's encode and decode throughput and CR its ratio (all in fp32 bytes). The class is compressed
where the speedup exceeds 1. The first decision has no margin; later ones switch with hysteresis
(``HYSTERESIS``): compression goes on above 1.05 and stays on until the speedup falls below
1/1.05, so noise in the measurements around 1 does not flip the route at every interval, and a
kept decision is at most 5% slower than the other choice.

Inputs:
- CR, Tc, Td per direction from the routed codec's own counts over the interval (its inner
  codec's bytes in and out and seconds, not the recorder's: those mix in the raw messages and
  dedup's saving, which the raw alternative keeps too). The run's first step is not counted (the
  codec's first calls compile and allocate). A direction whose classes all travelled raw keeps
  its last figures: nothing was coded to measure; a direction never measured keeps compressing.
- B per class from ``distributed/link_probe.py`` (see there why a probe, and why a slope),
  measured at a process's first decision and at the start of every later round of measurements
  (``RoundSchedule``: ``PROBE_EVERY`` decisions apart, the gap doubling while the routes hold,
  up to 8 times that). One process
  (the loopback) or one rank per node has no link inside its node: B is infinite, the speedup
  0, and the class travels raw; the loopback counts as one node.

Every rank's counts are gathered into one matrix and the probe's times reduced to their maximum,
so every rank computes the same decision from the same numbers: CR from the summed bytes (the
wire's ratio), Tc and Td from the slowest rank (an exchange waits for it). Before the first
decision everything is compressed, as ``compress.peers=all`` does, so the codec is measured.
Decisions, the last figures and the first-decision flag are checkpointed: a resumed run routes
as the run it continues.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from dlrm_comp.compress.codecs.peers import RouteCounts
from dlrm_comp.distributed import link_probe

HYSTERESIS = 1.05
# A modeled speedup this far from 1 needs no trial of all raw; closer, the measured exchange decides
# (the fixed-rate route is tried either way). On the link benchmark at 1 Gbit/s (Kaggle shape) the
# forward's model said 1.57-1.76x while its compressed exchange took 11-12 ms a step against 5.2 for
# the raw one hidden behind the bottom MLP.
CLEAR = 2.0
PROBE_EVERY = 8  # decisions per link probe (a probe costs tens of ms of transfers: 1-3% of a short interval)
MAX_GAP = 8  # x PROBE_EVERY: the longest gap between two rounds once the choice keeps holding
FIELDS = ("calls", "enc_raw", "enc_sent", "enc_s", "dec_raw", "dec_s", "raw_local", "sent_local", "raw_remote",
          "sent_remote", "message_bytes")


@dataclass(frozen=True)
class CodecFigures:
    """One direction's codec: ratio and encode/decode throughput (fp32 bytes per second)."""
    cr: float
    tc: float
    td: float


def modeled_speedup(figures: CodecFigures, link: float) -> float:
    """The model's speedup of compressing over raw rows on a link of ``link`` bytes/s (inf: no link, 0)."""
    if math.isinf(link):
        return 0.0
    return 1.0 / (1.0 / figures.cr + link * (1.0 / figures.tc + 1.0 / figures.td))


def decide(speedup: float, compressing: bool | None) -> bool:
    """Whether to compress: above 1 at the first decision (``compressing`` None), then with hysteresis."""
    if compressing is None:
        return speedup > 1.0
    return speedup >= 1.0 / HYSTERESIS if compressing else speedup > HYSTERESIS


def first_unmeasured(candidates, seconds: dict[str, float]) -> str | None:
    """The first of ``candidates`` with no measurement in ``seconds`` yet: the next trial (None: all measured)."""
    return next((c for c in candidates if c not in seconds), None)


def file_mean(seconds: dict[str, float], samples: dict[str, int], key: str, value: float) -> None:
    """File ``value`` (seconds per step of one interval) under ``key`` as the mean of every interval
    ``key`` ran in this round. With the last interval alone, the route or setting that keeps
    travelling is measured again at every interval while the others keep their one trial, so a
    single slow interval of the machine (5-10% on the link benchmark) switched it away."""
    n = samples.get(key, 0) if key in seconds else 0
    seconds[key] = (seconds[key] * n + value) / (n + 1) if n else float(value)
    samples[key] = n + 1


class RoundSchedule:
    """When the next round of measurements begins (a link probe, the routes' and settings' trials
    again). Rounds used to begin every ``every`` decisions whatever they found; a round costs a
    probe and an interval of each losing candidate (on the link benchmark's 300 steps, half the
    intervals of ``auto``), so the gap now doubles after every round that kept the choice, up to
    ``MAX_GAP`` x ``every``, and returns to ``every`` after a round that changed it: a run whose
    link and codec hold still spends ever less of its time on trials, one whose conditions move
    is re-measured as often as before. The run's first round (decision 0) is not a kept choice."""

    def __init__(self, every: int):
        self.every = every
        self.gap = every
        self.start = 0  # the decision the last round began at
        self.before = None  # the choice when the open round began (None: no round open, or the first)

    def due(self, decisions: int) -> bool:
        return decisions > 0 and decisions - self.start >= self.gap

    def begin(self, decisions: int, choice) -> None:
        self.start, self.before = decisions, choice

    def end(self, choice) -> None:
        """The round's trials are over and ``choice`` was made: lengthen or reset the gap."""
        if self.before is None:
            return
        self.gap = min(self.gap * 2, MAX_GAP * self.every) if choice == self.before else self.every
        self.before = None

    def state_dict(self) -> dict[str, Any]:
        return {"gap": self.gap, "start": self.start, "before": self.before}

    def load_state_dict(self, state: dict[str, Any] | None, decisions: int) -> None:
        """A checkpoint from before the schedule began its rounds at every ``every``-th decision."""
        if state is None:
            self.gap, self.start, self.before = self.every, decisions - decisions % self.every, None
        else:
            self.gap, self.start, self.before = int(state["gap"]), int(state["start"]), state.get("before")


def keep_or_switch(seconds: dict[str, float], incumbent: str) -> str:
    """The measured fastest of ``seconds`` (setting -> seconds per step) where it beats the
    ``incumbent`` by more than ``HYSTERESIS``, else the incumbent: a switch either way needs a
    5% gain, so noise around a tie does not flip the choice at every interval. The trials of
    ``compress.peers=auto`` (raw against the model's route) and of ``dist.allreduce_compression=auto``
    (``train/allreduce_policy.py``) both decide by it."""
    best = min(seconds, key=seconds.__getitem__)
    if incumbent not in seconds:
        return best
    return best if best != incumbent and seconds[best] * HYSTERESIS < seconds[incumbent] else incumbent


def rank_row(counts: RouteCounts, local: list[bool]) -> list[float]:
    """One rank's counts of one direction, in ``FIELDS`` order (what every rank gathers)."""
    here = np.asarray(local)
    message = counts.raw.sum() / (counts.calls * len(local)) if counts.calls else 0.0
    return [counts.calls, counts.enc_raw, counts.enc_sent, counts.enc_s, counts.dec_raw, counts.dec_s,
            counts.raw[here].sum(), counts.sent[here].sum(), counts.raw[~here].sum(), counts.sent[~here].sum(),
            message]


def figures_of(rows: np.ndarray) -> CodecFigures | None:
    """The gathered rows ``[W, FIELDS]`` of one direction -> its codec figures (None: none measured)."""
    col = {f: rows[:, i] for i, f in enumerate(FIELDS)}
    enc = (col["enc_raw"] > 0) & (col["enc_s"] > 0)
    dec = (col["dec_raw"] > 0) & (col["dec_s"] > 0)
    if not enc.any() or not dec.any() or col["enc_sent"].sum() <= 0:
        return None
    return CodecFigures(cr=float(col["enc_raw"].sum() / col["enc_sent"].sum()),
                        tc=float((col["enc_raw"][enc] / col["enc_s"][enc]).min()),
                        td=float((col["dec_raw"][dec] / col["dec_s"][dec]).min()))


class PeerPolicy:
    """The decisions of one run and what they were taken from; routes the exchange by them."""

    def __init__(self, directions: list[str], nodes: list[str] | None, rank: int, destinations: int,
                 fixed: str | None = None):
        self.directions = list(directions)  # the routed ones: byte-message modes
        self.fixed = fixed  # compress.peers_fixed: the fixed-rate mode a direction may travel whole in (a route)
        self.nodes, self.rank = nodes, rank  # nodes None: one process (the loopback, one node)
        self.local = [True] * destinations if nodes is None else [n == nodes[rank] for n in nodes]
        remote = nodes is not None and len(set(nodes)) > 1
        self.classes = ["local", "remote"] if remote else ["local"]
        self.compress = {d: {c: True for c in self.classes} for d in self.directions}  # as `all` until decided
        self.decided = {d: False for d in self.directions}  # the first decision has no margin
        self.figures: dict[str, CodecFigures | None] = {d: None for d in self.directions}
        self.steps = 0  # steps this process ran (the first one's counts are dropped)
        self.probe_sent = {c: 0 for c in link_probe.CLASSES}  # bytes this process's probes sent, per class
        self.link: dict[str, float | None] | None = None  # B per class, probed at the first decision
        self.decisions = 0  # taken by this process (it probes when a round begins)
        self.rounds = RoundSchedule(PROBE_EVERY)  # this process's, as its decisions: a resumed one probes first
        self.route = {d: self._key(self.compress[d]) for d in self.directions}  # what travels now
        self.seconds: dict[str, dict[str, float]] = {d: {} for d in self.directions}  # route -> exchange s/step
        self.samples: dict[str, dict[str, int]] = {d: {} for d in self.directions}  # route -> intervals in its mean
        self.intervals = 0  # intervals this process ran (its first holds the codec's warm-up)

    def _key(self, on: dict[str, bool]) -> str:
        """A route's name: the compressed classes (``raw``: none)."""
        return "+".join(c for c in self.classes if on[c]) or "raw"

    def mask(self, direction: str) -> list[bool]:
        """Per destination: whether it gets raw rows in ``direction`` (the route that travels; a
        fixed-rate route names no class, so its mask is all raw, overridden by ``apply``)."""
        on = self.route[direction].split("+")
        return [("local" if here else "remote") not in on for here in self.local]

    def _measured_route(self, d: str, model: dict[str, bool], speedup: dict[str, float],
                        linked: bool = True) -> tuple[str, bool]:
        """The route of direction ``d`` for the next interval, and whether it is a trial. The
        measured exchange time per step (the direction's all-to-all phase, codec included, every
        rank's mean) decides between the model's route, all raw and, with
        ``compress.peers_fixed`` and a link to send over (``linked``), the whole direction in
        that fixed-rate mode, trying whichever has no measurement yet for one interval. All raw
        is not tried where the model's route is clearly faster (every compressed class at CLEAR
        or more); the fixed-rate route always is: the model leaves out what overlaps, and a
        cheap 16-bit exchange hidden behind the bottom MLP can beat a codec that sends 5x fewer
        bytes but spends the CPU to do it. Without a fixed-rate route a clear model, or one that
        says all raw, is taken as it is."""
        key = self._key(model)
        fixed = self.fixed if linked else None
        clear = key != "raw" and all(speedup.get(c, math.inf) >= CLEAR for c in self.classes if model[c])
        if fixed is None and (clear or key == "raw"):
            return key, False
        candidates = [r for r in dict.fromkeys((None if clear else "raw", key, fixed)) if r is not None]
        trial = first_unmeasured(candidates, self.seconds[d])
        if trial is not None:
            return trial, True
        measured = {r: self.seconds[d][r] for r in candidates}
        return keep_or_switch(measured, self.route[d] if self.route[d] in measured else key), False

    def apply(self, exchange) -> None:
        for d in self.directions:
            exchange.route(d, self.mask(d), fixed=self.fixed is not None and self.route[d] == self.fixed)

    def before_step(self, exchange) -> None:
        self.steps += 1
        if self.steps == 2:  # the first step's codec calls compile and allocate: not what the codec costs
            self._take(exchange)

    def _take(self, exchange) -> dict[str, RouteCounts]:
        counts = {}
        for d in self.directions:
            codec = exchange.routed(d)
            counts[d] = codec.take_counts() if codec is not None else RouteCounts.empty(len(self.local))
        return counts

    def _gather(self, exchange, mine: np.ndarray) -> np.ndarray:
        """Every rank's rows ``[W, directions, FIELDS]``, the same on every rank."""
        transport = exchange.transport
        if not hasattr(transport, "group"):
            return mine[None]
        t = torch.from_numpy(mine).to(transport.device)
        parts = [torch.empty_like(t) for _ in range(transport.world_size)]
        dist.all_gather(parts, t, group=transport.group)
        return torch.stack(parts).cpu().numpy()

    def interval(self, iteration: int, exchange, log: Callable[..., None], echo: Callable[[str], None],
                 exchange_s: dict[str, float] | None = None) -> None:
        """Measure, decide and route; rank 0 logs a `peers` record and prints one line.
        ``exchange_s``: the interval's exchange seconds per step and direction (all-to-all phase,
        codec included; the same on every rank), which measure the route that travelled."""
        self.intervals += 1
        if exchange_s is not None and self.intervals > 1:  # the first interval holds the codec's warm-up
            for d in self.directions:
                file_mean(self.seconds[d], self.samples[d], self.route[d], float(exchange_s[d]))
        counts = self._take(exchange)
        if self.steps < 2:  # only the first step so far (an interval of one step): nothing to measure by
            counts = {d: RouteCounts.empty(len(self.local)) for d in self.directions}
        mine = np.asarray([rank_row(counts[d], self.local) for d in self.directions], dtype=np.float64)
        rows = self._gather(exchange, mine)
        message = float(rows[..., FIELDS.index("message_bytes")].max())
        size = link_probe.probe_size(message)
        fresh = self.link is None or self.rounds.due(self.decisions)
        if fresh:  # a link's rate holds still; the codec's figures are what each interval refreshes
            self.link = self.measure_link(iteration, exchange.transport, size)
            if self.decisions:  # and the routes' exchange times are measured again as they travel
                self.rounds.begin(self.decisions, dict(self.route))
                self.seconds = {d: {} for d in self.directions}
                self.samples = {d: {} for d in self.directions}
        self.decisions += 1
        link = self.link
        linked = any(link[c] is not None and math.isfinite(link[c]) for c in self.classes)  # a link to send over
        probed = fresh and linked
        record: dict[str, Any] = {"hysteresis": HYSTERESIS, "probe_bytes": size if probed else None,
                                  "link_Bps": {c: link[c] for c in self.classes}}
        trials = False
        for i, d in enumerate(self.directions):
            measured = figures_of(rows[:, i])
            if measured is not None:
                self.figures[d] = measured
            figures = self.figures[d]
            speedup = {}
            for c in self.classes:
                if figures is None:  # never measured: keep compressing, to measure
                    continue
                speedup[c] = modeled_speedup(figures, link[c])
                self.compress[d][c] = decide(speedup[c], self.compress[d][c] if self.decided[d] else None)
            trial = False
            if exchange_s is not None and figures is not None:
                self.route[d], trial = self._measured_route(d, self.compress[d], speedup, linked)
            else:
                self.route[d] = self._key(self.compress[d])
            trials = trials or trial
            col = {f: rows[:, i, j].sum() for j, f in enumerate(FIELDS)}
            travels = self.route[d].split("+")
            record[d] = {**(asdict(figures) if figures is not None else {"cr": None, "tc": None, "td": None}),
                         "measured": measured is not None, "speedup": speedup, "model": dict(self.compress[d]),
                         "compress": {c: c in travels for c in self.classes}, "route": self.route[d], "trial": trial,
                         "exchange_s": dict(self.seconds[d]),
                         "bytes_raw": {c: int(col[f"raw_{c}"]) for c in self.classes},
                         "bytes_sent": {c: int(col[f"sent_{c}"]) for c in self.classes}}
            self.decided[d] = figures is not None
        if not trials:
            self.rounds.end(dict(self.route))
        record["round_gap"] = self.rounds.gap
        self.apply(exchange)
        if self.rank == 0:
            log("peers", iteration, **record)
            echo(self.line(iteration, record))

    def measure_link(self, iteration: int, transport, size: int) -> dict[str, float | None]:
        """B per class (bytes/s; inf: no link). The tests' seam for measurements of their choosing."""
        return link_probe.probe_link(transport, self.nodes, size, sent=self.probe_sent)

    def line(self, iteration: int, record: dict[str, Any]) -> str:
        def rate(v):
            return "no link" if v is None or math.isinf(v) else f"{v / 1e6:.3g} MB/s"
        parts = []
        for d in self.directions:
            r = record[d]
            routes = " ".join(f"{c}={'codec' if r['compress'][c] else r['route'] if r['route'] == self.fixed else 'raw'}"
                              + (f" ({r['speedup'][c]:.2f}x)" if c in r["speedup"] else "") for c in self.classes)
            figs = "" if r["cr"] is None else f" [cr {r['cr']:.1f}, enc {rate(r['tc'])}, dec {rate(r['td'])}]"
            parts.append(f"{d} {routes}{' (trial)' if r['trial'] else ''}{figs}")
        links = ", ".join(f"{c} {rate(record['link_Bps'][c])}" for c in self.classes)
        return f"[peers] iteration {iteration}: {'; '.join(parts)}; link {links}"

    def state_dict(self) -> dict[str, Any]:
        return {"compress": {d: dict(v) for d, v in self.compress.items()}, "decided": dict(self.decided),
                "route": dict(self.route), "seconds": {d: dict(v) for d, v in self.seconds.items()},
                "samples": {d: dict(v) for d, v in self.samples.items()},
                "figures": {d: asdict(f) if f is not None else None for d, f in self.figures.items()}}

    def load_state_dict(self, state: dict[str, Any], exchange) -> None:
        """The saved decisions, routed from the first resumed step (a class the run no longer has is dropped)."""
        for d, on in state.get("compress", {}).items():
            if d in self.compress:
                self.compress[d].update({c: bool(v) for c, v in on.items() if c in self.compress[d]})
        self.decided.update({d: bool(v) for d, v in state.get("decided", {}).items() if d in self.decided})
        for d in self.directions:
            self.route[d] = state.get("route", {}).get(d, self._key(self.compress[d]))
            self.seconds[d] = {k: float(v) for k, v in state.get("seconds", {}).get(d, {}).items()}
            saved = state.get("samples", {}).get(d, {})  # a checkpoint from before the means: one interval each
            self.samples[d] = {k: int(saved.get(k, 1)) for k in self.seconds[d]}
        for d, f in state.get("figures", {}).items():
            if d in self.figures and f is not None:
                self.figures[d] = CodecFigures(**f)
        if exchange is not None:
            self.apply(exchange)
