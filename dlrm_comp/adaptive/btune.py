"""A Python port of Btune's genetic tuner over ``blosc2.compress2`` (Btune's public docs and source), improved.

Btune (the blosc2-btune plugin) tunes blosc2's compression parameters chunk by chunk: a *hard
readapt* tries every codec x filter x split mode (state CODEC_FILTER), then thread counts (THREADS),
then moves the compression level (CLEVEL); it then *waits* a few chunks with the winner, does *soft
readapts* (small clevel moves), and after a number of softs another hard readapt; after the last hard
it stops (repeat mode STOP) or goes on with softs only (REPEAT_SOFT) or everything (REPEAT_ALL). A
candidate replaces the incumbent ("Winner") when it improves the compression ratio and the score, the
time to move one chunk: COMP ``ctime + csize/bw``, DECOMP ``csize/bw + dtime``, BALANCED all three.

Kept from the original: the states, readapts, waits, repeat modes, ``tradeoff`` in [0, 1] (0 = speed
only, 1 = ratio only) choosing the codec set (>= 2/3: ZSTD, ZLIB; else LZ4, + BLOSCLZ from 1/3, +
LZ4HC for DECOMP), clevel starting at 8, the environment variables ``BTUNE_TRADEOFF``,
``BTUNE_PERF_MODE`` and ``BTUNE_TRACE`` (which override the arguments, as in the original), and the
trace table with the original's columns.

Improved (each was a known defect or gap of the original):

* **block size and BYTEDELTA** are part of the hard readapt (the wrong block size turns ZSTD +
  BITSHUFFLE from 6.3x into 4.0x on codes, docs/architecture.md, reference facts);
* **trials on a sample** of the data (``sample_bytes``, a few evenly spaced slices), not on the
  live chunk;
* **the incumbent is re-measured** during waits and at the start of each readapt; its figures are
  the median of its measurements, so one lucky timing does not keep a loser in place;
* **the link bandwidth** enters the score (``bandwidth_gbs``, GB/s = 1e9 bytes/s), not a fixed 20;
* **winner thresholds are floats** (the original's ``1/3`` and ``2/3`` were integer divisions, i.e.
  0): a candidate wins when its merit ``cr_coef**tradeoff * score_coef**(1 - tradeoff)`` exceeds
  ``1 + min_gain`` (default 1%) and neither ratio nor score drops below the floor of the tradeoff's
  region (the original's three-region table, as floors);
* a small **population**: the CLEVEL state climbs the levels of the best ``population`` codec/filter
  settings of the hard readapt, not only the winner's (cheap, and it is what keeps the pick close to
  an exhaustive grid, see benchmarks/btune_vs_grid.py);
* optional **non-blosc2 candidates** (zlib, the model-based 'ans' coder) take part in CODEC_FILTER.

Timing is injectable (``trial=``), so tests run deterministic fake measurements.

API for the adaptive controller::

    res = tune(codes, typesize=1, bandwidth_gbs=12.5, perf_mode="BALANCED", tradeoff=0.5)
    res.codec          # a LosslessCodec (Blosc2Codec or an extra) ready for CodecBackend(lossless=...)
    res.score, res.cratio, res.trials, res.unique_trials, res.trace
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import statistics
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, TextIO

import numpy as np

from dlrm_comp.checks import choice
from dlrm_comp.compress.lossless import LosslessCodec, LosslessSpec, SymbolModelStore, build_lossless, get_lossless
from dlrm_comp.compress.lossless.blosc2_codec import CODECS, FILTERS
from dlrm_comp.compress.timing import Measurement, measure_codec

PERF_MODES = ("COMP", "DECOMP", "BALANCED")
REPEAT_MODES = ("STOP", "REPEAT_SOFT", "REPEAT_ALL")
STATES = ("CODEC_FILTER", "THREADS", "CLEVEL", "WAITING", "STOP")
SPLITS = ("ALWAYS_SPLIT", "NEVER_SPLIT")
DEFAULT_BLOCKSIZES = (0, 4096, 16384, 65536)
TRACE_COLUMNS = ("Codec", "Filter", "Split", "C.Level", "Blocksize", "Shufflesize", "C.Threads", "D.Threads",
                 "Score", "C.Ratio", "Btune State", "Readapt", "Winner")


def _tradeoff(key: str, value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"{key}: must be a number in [0, 1] (0 = speed only, 1 = ratio only), got {value!r}")
    return t


def codecs_for(tradeoff: float, perf_mode: str) -> tuple[str, ...]:
    """Btune's codec set for a tradeoff (with float thirds, not the original's integer ones)."""
    if tradeoff >= 2 / 3:
        return ("ZSTD", "ZLIB")
    out = ["LZ4"]
    if tradeoff >= 1 / 3:
        out.append("BLOSCLZ")
    if perf_mode == "DECOMP":
        out.append("LZ4HC")
    return tuple(out)


# --------------------------------------------------------------------------------------------- space
@dataclass(frozen=True)
class Candidate:
    """One point of the search space. ``extra`` names a non-blosc2 codec (then the blosc2 fields
    other than the thread counts are unused)."""

    codec: str = "ZSTD"
    filter: str = "NOFILTER"
    splitmode: str = "NEVER_SPLIT"
    clevel: int = 8
    blocksize: int = 0
    nthreads: int = 1
    dthreads: int = 1
    extra: str | None = None
    extra_params: tuple[tuple[str, Any], ...] = ()

    @property
    def family(self) -> tuple:
        """Everything but clevel and threads: what CODEC_FILTER chooses."""
        return (self.extra, self.extra_params) if self.extra else (self.codec, self.filter, self.splitmode, self.blocksize)

    def to_codec(self, store: SymbolModelStore | None = None) -> LosslessCodec:
        """The codec (``store``: the model store of an 'ans' candidate)."""
        if self.extra:
            return build_lossless(LosslessSpec(self.extra, self.extra_params), store)
        return get_lossless("blosc2", codec=self.codec, clevel=self.clevel, filter=self.filter,
                            blocksize=self.blocksize, splitmode=self.splitmode, nthreads=self.nthreads,
                            dthreads=self.dthreads)

    def label(self) -> str:
        if self.extra:
            return f"{self.extra}({','.join(f'{k}={v}' for k, v in self.extra_params)})"
        return f"{self.codec}/{self.filter}/{self.splitmode[:-6]}/L{self.clevel}/bs{self.blocksize}/t{self.nthreads}.{self.dthreads}"


@dataclass(frozen=True)
class SearchSpace:
    codecs: tuple[str, ...] = CODECS
    filters: tuple[str, ...] = FILTERS
    splitmodes: tuple[str, ...] = SPLITS
    clevels: tuple[int, ...] = tuple(range(1, 10))
    blocksizes: tuple[int, ...] = DEFAULT_BLOCKSIZES
    threads: tuple[int, ...] = (1,)
    dthreads: tuple[int, ...] = (1,)
    extras: tuple[Candidate, ...] = ()

    def __post_init__(self) -> None:
        for c in self.codecs:
            choice("btune.codecs", c, CODECS, upper=True)
        for f in self.filters:
            choice("btune.filters", f, FILTERS, upper=True)
        for s in self.splitmodes:
            choice("btune.splitmodes", s, SPLITS, upper=True)
        if not self.codecs or not self.filters or not self.splitmodes or not self.clevels or not self.blocksizes:
            raise ValueError("btune.space: codecs, filters, splitmodes, clevels and blocksizes must be non-empty")
        if any(not 0 <= int(c) <= 9 for c in self.clevels):
            raise ValueError(f"btune.clevels: each must be 0..9, got {self.clevels}")
        if any(t < 1 for t in self.threads + self.dthreads) or not self.threads or not self.dthreads:
            raise ValueError(f"btune.threads: thread counts must be >= 1, got {self.threads} / {self.dthreads}")

    @classmethod
    def for_tradeoff(cls, tradeoff: float, perf_mode: str, max_threads: int = 1, **kw: Any) -> "SearchSpace":
        threads = tuple(range(1, max(1, int(max_threads)) + 1))
        return cls(codecs=codecs_for(tradeoff, perf_mode), threads=threads, dthreads=threads, **kw)

    def families(self) -> list[Candidate]:
        base = [Candidate(c, f, s, 8, b) for c, f, s, b in
                itertools.product(self.codecs, self.filters, self.splitmodes, self.blocksizes)]
        return base + list(self.extras)

    def grid(self) -> list[Candidate]:
        """Every point (the exhaustive baseline the tuner is measured against)."""
        out = [Candidate(c, f, s, lv, b, t, d) for c, f, s, lv, b, t, d in itertools.product(
            self.codecs, self.filters, self.splitmodes, self.clevels, self.blocksizes, self.threads, self.dthreads)]
        return out + [replace(e, nthreads=1, dthreads=1) for e in self.extras]


def extra_candidates(names: Iterable[str] = ("zlib",), ans_table: int | None = None) -> tuple[Candidate, ...]:
    """Non-blosc2 candidates: 'zlib' (auto and Huffman-only, level 1) and 'ans' (needs a model for
    ``ans_table`` in the store the tuner is given)."""
    out: list[Candidate] = []
    for n in names:
        if n == "zlib":
            out += [Candidate(extra="zlib", extra_params=(("level", 1), ("strategy", s))) for s in ("auto", "huffman")]
        elif n == "ans":
            if ans_table is None:
                raise ValueError("btune.extras: 'ans' needs ans_table (the table whose model to use)")
            out.append(Candidate(extra="ans", extra_params=(("table", int(ans_table)),)))
        else:
            raise ValueError(f"btune.extras: {n!r} is not one of zlib, ans")
    return tuple(out)


# --------------------------------------------------------------------------------------------- trials
TrialFn = Callable[[Candidate, bytes, int], Measurement]


def measure_trial(cand: Candidate, sample: bytes, typesize: int, reps: int = 3,
                  timer: Callable[[], float] | None = None, verify: bool = True,
                  store: SymbolModelStore | None = None) -> Measurement:
    """Compress/decompress ``sample`` with ``cand``: best of ``reps`` timings (round trip checked)."""
    return measure_codec(cand.to_codec(store), sample, typesize, reps, verify, timer)


def make_sample(data: bytes, sample_bytes: int, typesize: int, parts: int = 4) -> bytes:
    """Up to ``sample_bytes`` of ``data``: ``parts`` evenly spaced slices aligned to ``typesize``."""
    if sample_bytes <= 0 or len(data) <= sample_bytes:
        return bytes(data)
    part = max(typesize, (sample_bytes // parts) // typesize * typesize)
    step = (len(data) - part) / max(1, parts - 1)
    out = bytearray()
    for i in range(parts):
        s = int(i * step) // typesize * typesize
        out += data[s:s + part]
    return bytes(out)


# --------------------------------------------------------------------------------------------- config
@dataclass
class BtuneConfig:
    tradeoff: float = 0.5
    perf_mode: str = "BALANCED"
    bandwidth_gbs: float = 20.0       # GB/s (1e9 bytes/s) of the link the data crosses
    nwaits: int = 1                   # chunks with the winner (incumbent re-measured) before a soft readapt
    nsofts: int = 2                   # soft readapts before the next hard one
    nhards: int = 1                   # hard readapts before the repeat mode applies
    repeat_mode: str = "STOP"
    min_gain: float = 0.01            # a winner must improve the merit by more than this (never 0)
    population: int = 4               # codec/filter settings whose clevel is climbed
    clevel_start: int = 8
    patience: int = 2                 # clevel steps without progress a hard climb tolerates
    max_trials: int = 2000            # hard cap on measurements (REPEAT_* never stop on their own)
    trace: bool = False

    def __post_init__(self) -> None:
        self.tradeoff = _tradeoff("btune.tradeoff", self.tradeoff)
        self.perf_mode = choice("btune.perf_mode", self.perf_mode, PERF_MODES, upper=True)
        self.repeat_mode = choice("btune.repeat_mode", self.repeat_mode, REPEAT_MODES, upper=True)
        if not (isinstance(self.bandwidth_gbs, (int, float)) and math.isfinite(self.bandwidth_gbs)
                and self.bandwidth_gbs > 0):
            raise ValueError(f"btune.bandwidth_gbs: must be a positive number of GB/s, got {self.bandwidth_gbs!r}")
        for key in ("nwaits", "nsofts", "nhards", "population", "max_trials", "patience"):
            v = getattr(self, key)
            lo = 1 if key in ("nhards", "population", "max_trials") else 0
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"btune.{key}: must be an integer >= {lo}, got {v!r}")
        if not 0.0 < float(self.min_gain) < 1.0:
            raise ValueError(f"btune.min_gain: must be in (0, 1), got {self.min_gain!r}")
        if not 0 <= int(self.clevel_start) <= 9:
            raise ValueError(f"btune.clevel_start: must be 0..9, got {self.clevel_start!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **kw: Any) -> "BtuneConfig":
        """The arguments, overridden by BTUNE_TRADEOFF / BTUNE_PERF_MODE / BTUNE_TRACE when set."""
        env = os.environ if environ is None else environ
        if env.get("BTUNE_TRADEOFF", "") != "":
            kw["tradeoff"] = _tradeoff("BTUNE_TRADEOFF", env["BTUNE_TRADEOFF"])
        if env.get("BTUNE_PERF_MODE", "") != "":
            kw["perf_mode"] = choice("BTUNE_PERF_MODE", env["BTUNE_PERF_MODE"], PERF_MODES, upper=True)
        if env.get("BTUNE_TRACE", "") not in ("", "0"):
            kw["trace"] = True
        return cls(**kw)

    @property
    def floors(self) -> tuple[float, float]:
        """(min ratio coefficient, min score coefficient) a winner may fall to, by tradeoff region."""
        if self.tradeoff <= 1 / 3:
            return 0.5, 1.0       # speed: may give up ratio (down to half), never speed
        if self.tradeoff <= 2 / 3:
            return 0.8, 0.5
        return 1.0, 0.1           # ratio: may give up speed (down to a tenth), never ratio


@dataclass
class TraceRow:
    cand: Candidate
    score: float
    cratio: float
    state: str
    readapt: str
    winner: bool
    typesize: int

    def as_dict(self) -> dict[str, Any]:
        c = self.cand
        return {
            "Codec": c.extra or c.codec, "Filter": "-" if c.extra else c.filter,
            "Split": "-" if c.extra else ("1" if c.splitmode == "ALWAYS_SPLIT" else "0"),
            "C.Level": "-" if c.extra else c.clevel, "Blocksize": "-" if c.extra else c.blocksize,
            "Shufflesize": self.typesize, "C.Threads": c.nthreads, "D.Threads": c.dthreads,
            "Score": self.score, "C.Ratio": self.cratio, "Btune State": self.state, "Readapt": self.readapt,
            "Winner": "W" if self.winner else "-",
        }


def format_trace_header() -> str:
    return ("|    Codec   | Filter     | Split | C.Level | Blocksize | Shufflesize | C.Threads | D.Threads |"
            "   Score    |  C.Ratio   |   Btune State   | Readapt | Winner")


def format_trace_row(row: TraceRow) -> str:
    d = row.as_dict()
    return (f"| {d['Codec']:>10} | {d['Filter']:>10} | {d['Split']:>5} | {d['C.Level']!s:>7} | {d['Blocksize']!s:>9} | "
            f"{d['Shufflesize']:>11} | {d['C.Threads']:>9} | {d['D.Threads']:>9} | {row.score * 1e3:>8.4f}ms | "
            f"{row.cratio:>9.3f}x | {row.state:>15} | {row.readapt:>7} | {d['Winner']}")


@dataclass
class TunerResult:
    candidate: Candidate
    codec: LosslessCodec
    score: float           # seconds to move the sample (by perf_mode), lower is better
    cratio: float          # sample bytes / compressed bytes (vs the codes, not fp32)
    merit: float           # cratio**tradeoff / score**(1 - tradeoff), higher is better
    trials: int            # measurements made (re-measurements included)
    unique_trials: int     # distinct candidates measured
    grid_size: int         # points of the exhaustive grid over the same space
    trace: list[dict[str, Any]]
    config: BtuneConfig
    measurements: dict[Candidate, Measurement] = field(repr=False, default_factory=dict)

    @property
    def fraction_of_grid(self) -> float:
        return self.unique_trials / self.grid_size if self.grid_size else float("nan")

    @property
    def spec(self) -> LosslessSpec:
        return self.codec.spec


# --------------------------------------------------------------------------------------------- engine
class Btune:
    """The state machine. ``run(data, typesize)`` drives it to STOP (or ``max_trials``)."""

    def __init__(self, config: BtuneConfig | None = None, space: SearchSpace | None = None,
                 trial: TrialFn | None = None, sample_bytes: int = 65536, out: TextIO | None = None,
                 store: SymbolModelStore | None = None) -> None:
        self.config = config or BtuneConfig()
        self.space = space or SearchSpace.for_tradeoff(self.config.tradeoff, self.config.perf_mode)
        self.store = store  # the model store 'ans' candidates code with
        self.trial = trial or functools.partial(measure_trial, store=store)
        self.sample_bytes = int(sample_bytes)
        self.out = out
        self._meas: dict[Candidate, list[Measurement]] = {}
        self.trials = 0
        self.trace: list[TraceRow] = []
        self.best: Candidate | None = None

    # scoring ------------------------------------------------------------------------------
    def score(self, m: Measurement) -> float:
        xfer = m.csize / (self.config.bandwidth_gbs * 1e9)
        mode = self.config.perf_mode
        if mode == "COMP":
            return m.ctime + xfer
        if mode == "DECOMP":
            return xfer + m.dtime
        return m.ctime + xfer + m.dtime

    def merit(self, m: Measurement) -> float:
        t = self.config.tradeoff
        s = max(self.score(m), 1e-12)
        return m.cratio ** t / s ** (1.0 - t)

    def summary(self, cand: Candidate) -> Measurement:
        """The median of a candidate's measurements (re-measured incumbents have several)."""
        ms = self._meas[cand]
        if len(ms) == 1:
            return ms[0]
        return Measurement(ms[0].nbytes, ms[0].csize, statistics.median(m.ctime for m in ms),
                           statistics.median(m.dtime for m in ms))

    def has_improved(self, new: Measurement, best: Measurement) -> bool:
        cr_coef = new.cratio / best.cratio
        sc_coef = self.score(best) / max(self.score(new), 1e-15)
        t = self.config.tradeoff
        gain = cr_coef ** t * sc_coef ** (1.0 - t)
        cr_floor, sc_floor = self.config.floors
        return gain > 1.0 + self.config.min_gain and cr_coef >= cr_floor and sc_coef >= sc_floor

    # trials -------------------------------------------------------------------------------
    def _budget_left(self) -> bool:
        return self.trials < self.config.max_trials

    def _try(self, cand: Candidate, state: str, readapt: str) -> bool:
        """Measure ``cand`` and make it the incumbent if it wins; True when it won."""
        m = self.trial(cand, self._sample, self._typesize)
        self.trials += 1
        self._meas.setdefault(cand, []).append(m)
        if cand == self.best:
            won = False
        elif self.best is None:
            won = True
        else:
            won = self.has_improved(self.summary(cand), self.summary(self.best))
        if won:
            self.best = cand
        row = TraceRow(cand, self.score(m), m.cratio, state, readapt, won, self._typesize)
        self.trace.append(row)
        if self.config.trace:
            print(format_trace_row(row), file=self.out or sys.stdout)
        return won

    def _remeasure(self, state: str, readapt: str) -> None:
        if self.best is not None and self._budget_left():
            self._try(self.best, state, readapt)

    # states -------------------------------------------------------------------------------
    def _codec_filter(self) -> None:
        lv = self.config.clevel_start if self.config.clevel_start in self.space.clevels else max(self.space.clevels)
        for fam in self.space.families():
            if not self._budget_left():
                return
            cand = fam if fam.extra else replace(fam, clevel=lv)
            if fam.blocksize and fam.blocksize >= len(self._sample) and fam.blocksize != min(
                    (b for b in self.space.blocksizes if b >= len(self._sample)), default=0):
                continue  # blocks past the sample size behave alike: try the smallest such only
            self._try(cand, "CODEC_FILTER", "HARD")

    def _threads(self) -> None:
        if self.best is None or self.best.extra:
            return
        base = self.best
        for t in self.space.threads:
            if t != base.nthreads and self._budget_left():
                self._try(replace(base, nthreads=t), "THREADS", "HARD")
        if self.config.perf_mode != "COMP":
            base = self.best
            for t in self.space.dthreads:
                if t != base.dthreads and self._budget_left():
                    self._try(replace(base, dthreads=t), "THREADS", "HARD")

    def _climb(self, start: Candidate, readapt: str, max_steps: int, patience: int = 0) -> None:
        """Move clevel one step at a time from ``start`` (both directions) while the moves pay off; a
        hard climb tolerates ``patience`` steps without progress (merit is rarely monotone in clevel)."""
        levels = sorted(self.space.clevels)
        if start.extra or start.clevel not in levels:
            return
        i0 = levels.index(start.clevel)
        for direction in ((1, -1) if self.config.tradeoff >= 0.5 else (-1, 1)):
            i, steps, misses = i0, 0, 0
            best_here = self.merit(self.summary(start)) if start in self._meas else 0.0
            while 0 <= i + direction < len(levels) and steps < max_steps and self._budget_left():
                i += direction
                steps += 1
                cand = replace(start, clevel=levels[i])
                if cand in self._meas and readapt == "HARD":
                    m = self.merit(self.summary(cand))
                else:
                    self._try(cand, "CLEVEL", readapt)
                    m = self.merit(self.summary(cand))
                if m > best_here:
                    best_here, misses = m, 0
                else:
                    misses += 1
                    if misses > patience:
                        break

    def _clevel_hard(self) -> None:
        fams: dict[tuple, Candidate] = {}
        for cand in self._meas:
            if cand.extra:
                continue
            k = cand.family
            if k not in fams or self.merit(self.summary(cand)) > self.merit(self.summary(fams[k])):
                fams[k] = cand
        ranked = sorted(fams.values(), key=lambda c: -self.merit(self.summary(c)))
        starts = ranked[: self.config.population]
        if self.best is not None and not self.best.extra and self.best not in starts:
            starts = [self.best] + starts[:-1]
        for s in starts:
            # population members run at the incumbent's thread counts
            if self.best is not None and not self.best.extra:
                s = replace(s, nthreads=self.best.nthreads, dthreads=self.best.dthreads)
            self._climb(s, "HARD", max_steps=9, patience=self.config.patience)

    def _soft(self) -> None:
        self._remeasure("CLEVEL", "SOFT")
        if self.best is not None:
            self._climb(self.best, "SOFT", max_steps=1)

    def _wait(self) -> None:
        for _ in range(self.config.nwaits):
            self._remeasure("WAITING", "WAIT")

    def _hard(self) -> None:
        self._remeasure("CODEC_FILTER", "HARD")
        self._codec_filter()
        self._threads()
        self._clevel_hard()

    # driver -------------------------------------------------------------------------------
    def run(self, data: bytes | np.ndarray, typesize: int | None = None) -> TunerResult:
        if isinstance(data, np.ndarray):
            typesize = typesize or data.dtype.itemsize
            data = np.ascontiguousarray(data).tobytes()
        if typesize is None or int(typesize) not in (1, 2, 4, 8):
            raise ValueError(f"btune.typesize: the code width in bytes, one of 1, 2, 4, 8; got {typesize!r}")
        if len(data) == 0:
            raise ValueError("btune: nothing to tune on (empty data)")
        self._typesize = int(typesize)
        self._sample = make_sample(bytes(data), self.sample_bytes, self._typesize)
        if self.config.trace:
            print(format_trace_header(), file=self.out or sys.stdout)
        hards = 0
        while self._budget_left():
            self._hard()
            hards += 1
            for _ in range(self.config.nsofts):
                if not self._budget_left():
                    break
                self._wait()
                self._soft()
            if hards >= self.config.nhards:
                if self.config.repeat_mode == "STOP":
                    break
                if self.config.repeat_mode == "REPEAT_SOFT":
                    while self._budget_left():
                        self._wait()
                        self._soft()
                    break
                hards = 0  # REPEAT_ALL: start over (bounded by max_trials)
        if self.config.trace:
            print(f"| Btune stopped after {self.trials} trials ({len(self._meas)} distinct); winner "
                  f"{self.best.label() if self.best else None}", file=self.out or sys.stdout)
        assert self.best is not None
        m = self.summary(self.best)
        return TunerResult(self.best, self.best.to_codec(self.store), self.score(m), m.cratio, self.merit(m), self.trials,
                           len(self._meas), len(self.space.grid()), [r.as_dict() for r in self.trace], self.config,
                           {c: self.summary(c) for c in self._meas})


def tune(codes: bytes | np.ndarray, typesize: int | None = None, bandwidth_gbs: float = 20.0,
         perf_mode: str = "BALANCED", tradeoff: float = 0.5, *, space: SearchSpace | None = None,
         extras: Iterable[str] = (), ans_table: int | None = None, max_threads: int = 1,
         sample_bytes: int = 65536, trial: TrialFn | None = None, out: TextIO | None = None,
         use_env: bool = True, store: SymbolModelStore | None = None, **config: Any) -> TunerResult:
    """Tune the lossless stage for ``codes``. Environment variables BTUNE_TRADEOFF, BTUNE_PERF_MODE
    and BTUNE_TRACE override the arguments (``use_env=False`` ignores them). ``space`` defaults to
    Btune's codec set for the tradeoff, every filter, both split modes, clevels 1-9, block sizes
    DEFAULT_BLOCKSIZES and 1..max_threads threads, plus ``extras`` ('zlib', 'ans': its models in ``store``)."""
    kw = dict(tradeoff=tradeoff, perf_mode=perf_mode, bandwidth_gbs=bandwidth_gbs, **config)
    cfg = BtuneConfig.from_env(**kw) if use_env else BtuneConfig(**kw)
    if space is None:
        space = SearchSpace.for_tradeoff(cfg.tradeoff, cfg.perf_mode, max_threads,
                                         extras=extra_candidates(extras, ans_table))
    elif extras:
        space = replace(space, extras=space.extras + extra_candidates(extras, ans_table))
    return Btune(cfg, space, trial, sample_bytes, out, store).run(codes, typesize)


__all__ = [
    "Btune", "BtuneConfig", "Candidate", "Measurement", "PERF_MODES", "REPEAT_MODES", "STATES", "SearchSpace",
    "TRACE_COLUMNS", "TunerResult", "codecs_for", "extra_candidates", "format_trace_header", "format_trace_row",
    "make_sample", "measure_trial", "tune",
]
