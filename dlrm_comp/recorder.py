"""Per-table compression statistics: bytes in and out, ratio, error/bound, codec time.

The reference kept only a list of ratios per table. We keep running sums per table and direction,
both for the current print interval (the `table` records of metrics.jsonl) and for the whole run
(the `compression` section of summary.json), so every figure printed is a measured one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from dlrm_comp.stopwatch import Span


@dataclass
class TableTotals:
    """Sums over the chunks one table sent in one direction."""
    chunks: int = 0
    bytes_raw: int = 0
    bytes_sent: float = 0.0
    ideal_bytes: float = 0.0
    max_err_ratio: float | None = None
    enc_s: float = 0.0
    dec_s: float = 0.0
    estimated: bool = False
    eb_rel: float | None = None
    codec: str = ""
    rows: int = 0  # rows of the chunks' slices
    distinct_rows: int = 0  # rows that travelled (one per distinct bag where dedup is on)
    dedup_bytes_saved: int = 0  # raw bytes of the rows dedup did not send (apart from the codec's saving)
    cache_hits: int | None = None  # rows the row cache served (a flag travelled instead); None: no cache
    cache_bytes_saved: int = 0  # raw bytes of those rows (apart from the codec's and dedup's savings)

    def merge(self, other: "TableTotals") -> None:
        self.chunks += other.chunks
        self.bytes_raw += other.bytes_raw
        self.bytes_sent += other.bytes_sent
        self.ideal_bytes += other.ideal_bytes
        if other.max_err_ratio is not None:
            self.max_err_ratio = max(self.max_err_ratio or 0.0, other.max_err_ratio)
        self.enc_s += other.enc_s
        self.dec_s += other.dec_s
        self.estimated = self.estimated or other.estimated
        self.rows += other.rows
        self.distinct_rows += other.distinct_rows
        self.dedup_bytes_saved += other.dedup_bytes_saved
        if other.cache_hits is not None:
            self.cache_hits = (self.cache_hits or 0) + other.cache_hits
        self.cache_bytes_saved += other.cache_bytes_saved
        if other.chunks:
            self.eb_rel, self.codec = other.eb_rel, other.codec

    @property
    def cr(self) -> float:
        return self.bytes_raw / self.bytes_sent if self.bytes_sent else math.nan

    @property
    def distinct_fraction(self) -> float | None:
        return self.distinct_rows / self.rows if self.rows else None

    @property
    def cache_hit_fraction(self) -> float | None:
        """Rows the cache served over the rows that would have travelled without it."""
        return self.cache_hits / self.distinct_rows if self.cache_hits is not None and self.distinct_rows else None


@dataclass
class CompressionRecorder:
    """Collects chunk statistics per (table, direction) for the interval and the run."""
    num_tables: int
    interval: dict[tuple[int, str], TableTotals] = field(default_factory=dict)
    total: dict[tuple[int, str], TableTotals] = field(default_factory=dict)
    window: dict[int, list[float]] = field(default_factory=dict)  # forward [raw, sent] since the last control step

    def __post_init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] = {}  # device accumulators of batched exchanges

    def record_batch(self, direction: str, tables: np.ndarray, table_index: Any, raw: int, sent: Any,
                     ideal: Any, err_ratio: Any, enc_s: "float | Span", dec_s: "float | Span",
                     labels: Callable[[], tuple[list, list[str]]], estimated: bool,
                     rows: np.ndarray | None = None, distinct: np.ndarray | None = None,
                     hits: Any = None, row_bytes: int = 0) -> None:
        """One batched exchange's chunks (``tables`` on the host, ``table_index`` the same on the
        device, ``raw`` bytes per chunk; ``sent``/``ideal``/``err_ratio`` device tensors or None):
        accumulated on the device without a host sync and folded into the per-table totals when
        they are read. ``labels()`` gives the per-table bound and codec name at that point (the
        plan's current ones). Times are the batched call's, split evenly over its chunks: seconds,
        or a stopwatch ``Span`` (device spans are read when the statistics are, never here).
        ``rows``/``distinct`` (host, per chunk): its slice's rows and the rows that travelled;
        the raw bytes of the rest are what deduplication saved. ``hits`` (per chunk, a tensor):
        rows the row cache served; ``row_bytes`` the raw bytes of one row (what each saved)."""
        import torch
        p = self._pending.get(direction)
        if p is not None and p["sent"].device != sent.device:  # moved devices: fold what is pending first
            self._settle()
            p = None
        if p is None:
            dev = sent.device
            p = self._pending[direction] = {
                "sent": torch.zeros(self.num_tables, dtype=torch.float64, device=dev),
                "ideal": torch.zeros(self.num_tables, dtype=torch.float64, device=dev),
                "err": torch.full((self.num_tables,), -1.0, dtype=torch.float64, device=dev),
                "chunks": np.zeros(self.num_tables, np.int64), "raw": np.zeros(self.num_tables, np.int64),
                "enc": np.zeros(self.num_tables),
                "dec": np.zeros(self.num_tables), "estimated": False, "spans": [],
                "rows": np.zeros(self.num_tables, np.int64), "distinct": np.zeros(self.num_tables, np.int64),
                "dedup": np.zeros(self.num_tables, np.int64), "hits": None, "row_bytes": 0}
        p["sent"].index_add_(0, table_index, sent.to(torch.float64))
        p["ideal"].index_add_(0, table_index, (ideal if ideal is not None else sent).to(torch.float64))
        if err_ratio is not None:
            p["err"].scatter_reduce_(0, table_index, err_ratio.to(torch.float64), reduce="amax")
        if hits is not None:
            if p["hits"] is None:
                p["hits"] = torch.zeros(self.num_tables, dtype=torch.float64, device=hits.device)
            p["hits"].index_add_(0, table_index.to(hits.device), hits.to(torch.float64))
            p["row_bytes"] = row_bytes
        np.add.at(p["chunks"], tables, 1)
        np.add.at(p["raw"], tables, raw)
        if rows is not None:
            np.add.at(p["rows"], tables, rows)
            np.add.at(p["distinct"], tables, distinct)
            np.add.at(p["dedup"], tables, (np.asarray(raw) * (rows - distinct)) // np.maximum(rows, 1))
        self._add_time(p, "enc", tables, enc_s)
        self._add_time(p, "dec", tables, dec_s)
        p["labels"] = labels
        p["estimated"] = p["estimated"] or estimated

    def add_decode_time(self, direction: str, tables: np.ndarray, seconds: "float | Span") -> None:
        """Receiver side of a batched exchange: its decode time, split over the chunks it decoded."""
        p = self._pending.get(direction)
        if p is not None and len(tables):
            self._add_time(p, "dec", tables, seconds)

    @staticmethod
    def _add_time(p: dict[str, Any], key: str, tables: np.ndarray, seconds: "float | Span") -> None:
        if not isinstance(seconds, (int, float)):
            if not seconds.on_host:  # a device span: read with the statistics
                p["spans"].append((key, tables, seconds))
                return
            seconds = seconds.seconds()
        if seconds and len(tables):
            np.add.at(p[key], tables, seconds / len(tables))

    @staticmethod
    def _resolve_spans(p: dict[str, Any]) -> None:
        spans, p["spans"] = p["spans"], []
        for key, tables, span in spans:
            np.add.at(p[key], tables, span.seconds() / len(tables))

    def interval_seconds(self, direction: str) -> float:
        """This process's encode + decode seconds of one direction in the open print interval
        (host sums only, no device read, before any merge): the step-time breakdown's codec part."""
        p = self._pending.get(direction)
        if p is not None:
            self._resolve_spans(p)
        pending = float(p["enc"].sum() + p["dec"].sum()) if p is not None else 0.0
        return pending + sum(t.enc_s + t.dec_s for (_, d), t in self.interval.items() if d == direction)

    def _settle(self) -> None:
        """Fold the device accumulators into the interval totals (the one read of them)."""
        for direction, p in self._pending.items():
            self._resolve_spans(p)
            sent, ideal, err = p["sent"].tolist(), p["ideal"].tolist(), p["err"].tolist()
            hits = p["hits"].tolist() if p["hits"] is not None else None
            ebs, codecs = p["labels"]()
            for t in np.flatnonzero((p["chunks"] > 0) | (p["dec"] > 0)).tolist():
                tot = self.interval.setdefault((t, direction), TableTotals())
                if not p["chunks"][t]:  # decoded here, sent by another rank: the decode time only
                    tot.dec_s += float(p["dec"][t])
                    continue
                chunks = int(p["chunks"][t])
                tot.chunks += chunks
                tot.bytes_raw += int(p["raw"][t])
                tot.bytes_sent += sent[t]
                tot.ideal_bytes += ideal[t]
                if err[t] >= 0:
                    tot.max_err_ratio = max(tot.max_err_ratio or 0.0, err[t])
                tot.enc_s += float(p["enc"][t])
                tot.dec_s += float(p["dec"][t])
                tot.estimated = tot.estimated or p["estimated"]
                tot.rows += int(p["rows"][t])
                tot.distinct_rows += int(p["distinct"][t])
                tot.dedup_bytes_saved += int(p["dedup"][t])
                if hits is not None:
                    tot.cache_hits = (tot.cache_hits or 0) + int(round(hits[t]))
                    tot.cache_bytes_saved += int(round(hits[t])) * p["row_bytes"]
                tot.eb_rel, tot.codec = ebs[t], codecs[t]
                if direction == "fwd":
                    w = self.window.setdefault(t, [0.0, 0.0])
                    w[0] += int(p["raw"][t])
                    w[1] += sent[t]
        self._pending = {}

    def take_window(self) -> dict[int, list[float]]:
        """The forward bytes per table since the last call (what a control step acts on)."""
        self._settle()
        window, self.window = self.window, {}
        return window

    def merge_interval(self, other: dict[tuple[int, str], TableTotals]) -> None:
        """Fold another rank's interval statistics into this one (rank 0 gathers them)."""
        self._settle()
        for key, totals in other.items():
            self.interval.setdefault(key, TableTotals()).merge(totals)

    def flush(self, iteration: int, log: Callable[..., None]) -> list[dict[str, Any]]:
        """Emit one `table` record per table and direction, fold the interval into the run totals."""
        self._settle()
        rows = []
        for (table, direction), t in sorted(self.interval.items()):
            row = {"table": table, "direction": direction, "eb_rel": t.eb_rel, "codec": t.codec,
                   "bytes_raw": t.bytes_raw, "bytes_sent": round(t.bytes_sent), "cr": t.cr,
                   "max_err_ratio": t.max_err_ratio, "enc_s": t.enc_s, "dec_s": t.dec_s,
                   "estimated": t.estimated, "distinct_fraction": t.distinct_fraction,
                   "dedup_bytes_saved": t.dedup_bytes_saved}
            if t.cache_hits is not None:
                row.update(cache_hit_fraction=t.cache_hit_fraction, cache_bytes_saved=t.cache_bytes_saved)
            log("table", iteration, **row)
            rows.append(row)
            self.total.setdefault((table, direction), TableTotals()).merge(t)
        self.interval = {}
        return rows

    def direction_summary(self, direction: str, cardinalities: list[int], base_bounds: list[float] | None
                          ) -> dict[str, Any] | None:
        """The summary.json fields for one direction (docs/architecture.md), from the run totals."""
        tables = {k[0]: v for k, v in self.total.items() if k[1] == direction}
        if not tables:
            return None
        raw = sum(t.bytes_raw for t in tables.values())
        sent = sum(t.bytes_sent for t in tables.values())
        ideal = sum(t.ideal_bytes for t in tables.values())
        ratios = [t.cr for t in tables.values() if t.bytes_sent > 0]
        errs = [t.max_err_ratio for t in tables.values() if t.max_err_ratio is not None]
        rows_all = sum(t.rows for t in tables.values())
        cached = [t for t in tables.values() if t.cache_hits is not None]
        distinct_cached = sum(t.distinct_rows for t in cached)
        cache = {"cache_hit_fraction": sum(t.cache_hits for t in cached) / distinct_cached if distinct_cached else None,
                 "cache_bytes_saved": sum(t.cache_bytes_saved for t in cached)} if cached else {}
        return {
            "estimated": any(t.estimated for t in tables.values()),
            "bytes_raw": raw,
            "bytes_sent": round(sent),  # whole bytes (an estimate's too, labelled by ``estimated``)
            "cr": raw / sent if sent else math.nan,
            "ideal_cr": raw / ideal if ideal else math.nan,
            "harmonic_mean_cr": len(ratios) / sum(1.0 / r for r in ratios) if ratios else math.nan,
            "max_err_ratio": max(errs) if errs else None,
            "enc_s": sum(t.enc_s for t in tables.values()),
            "dec_s": sum(t.dec_s for t in tables.values()),
            "distinct_fraction": (sum(t.distinct_rows for t in tables.values()) / rows_all) if rows_all else None,
            "dedup_bytes_saved": sum(t.dedup_bytes_saved for t in tables.values()),
            **cache,
            "per_table": [
                {"table": i, "cardinality": cardinalities[i],
                 "eb_rel_base": base_bounds[i] if base_bounds else None,
                 "eb_rel_last": t.eb_rel, "codec": t.codec, "cr": t.cr, "max_err_ratio": t.max_err_ratio,
                 "bytes_raw": t.bytes_raw, "bytes_sent": round(t.bytes_sent), "distinct_fraction": t.distinct_fraction,
                 "dedup_bytes_saved": t.dedup_bytes_saved,
                 **({"cache_hit_fraction": t.cache_hit_fraction, "cache_bytes_saved": t.cache_bytes_saved}
                    if t.cache_hits is not None else {})}
                for i, t in sorted(tables.items())
            ],
        }

    def reset(self) -> None:
        """Start afresh (a new segment of a resumed run): totals, interval, window and pending sums."""
        self.interval, self.total, self.window = {}, {}, {}
        self._pending = {}

    def take_interval(self) -> dict[tuple[int, str], TableTotals]:
        """This interval's totals (settled), cleared here: what a rank sends to rank 0."""
        self._settle()
        interval, self.interval = self.interval, {}
        return interval

    def state_dict(self) -> dict[str, Any]:
        self._settle()
        return {"total": [(k[0], k[1], asdict(v)) for k, v in self.total.items()],
                "interval": [(k[0], k[1], asdict(v)) for k, v in self.interval.items()],  # a checkpoint mid-interval
                "window": {int(k): list(v) for k, v in self.window.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = {(table, direction): TableTotals(**fields) for table, direction, fields in state.get("total", [])}
        self.interval = {(table, direction): TableTotals(**fields)
                         for table, direction, fields in state.get("interval", [])}
        self.window = {int(k): list(v) for k, v in state.get("window", {}).items()}


def format_interval_table(rows: list[dict[str, Any]], iteration: int) -> str:
    """A compact fixed-width table for the console at each print interval."""
    if not rows:
        return ""
    width = max(14, *(len(r["codec"]) for r in rows))  # the whole codec name, never cut
    head = f"[compression] iteration {iteration}\n  {'tbl':>3} {'dir':>3} {'eb_rel':>8} {'codec':<{width}} " \
           f"{'raw KiB':>9} {'sent KiB':>9} {'cr':>7} {'err/eb':>6} {'enc ms':>7} {'dec ms':>7} {'uniq':>5}"
    lines = [head]
    for r in rows:
        err = "-" if r["max_err_ratio"] is None else f"{r['max_err_ratio']:.3f}"
        eb = "-" if r["eb_rel"] is None else f"{r['eb_rel']:.2e}"
        uniq = "-" if r.get("distinct_fraction") is None else f"{r['distinct_fraction']:.2f}"
        lines.append(f"  {r['table']:>3} {r['direction']:>3} {eb:>8} {r['codec']:<{width}} "
                     f"{r['bytes_raw'] / 1024:>9.1f} {r['bytes_sent'] / 1024:>9.1f} {r['cr']:>7.2f} {err:>6} "
                     f"{r['enc_s'] * 1e3:>7.1f} {r['dec_s'] * 1e3:>7.1f} {uniq:>5}")
    raw = sum(r["bytes_raw"] for r in rows)
    sent = sum(r["bytes_sent"] for r in rows)
    saved = sum(r.get("dedup_bytes_saved") or 0 for r in rows)
    cached = [r for r in rows if r.get("cache_hit_fraction") is not None]
    hit_saved = sum(r["cache_bytes_saved"] for r in cached)
    hit_base = sum(r["cache_bytes_saved"] / r["cache_hit_fraction"] for r in cached if r["cache_hit_fraction"])
    lines.append(f"  all tables: {raw / 1024:.1f} KiB -> {sent / 1024:.1f} KiB, cr {raw / sent:.2f}"
                 + (f", {saved / 1024:.1f} KiB of repeated bags not sent" if saved else "")
                 + (f", {hit_saved / 1024:.1f} KiB of cached rows not sent (hit fraction "
                    f"{hit_saved / hit_base if hit_base else 0.0:.2f})" if cached else "")
                 + (" (estimated)" if any(r["estimated"] for r in rows) else ""))
    return "\n".join(lines)
