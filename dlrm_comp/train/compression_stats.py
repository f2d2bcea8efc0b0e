"""The compression statistics a run reports: each print interval's `table` records (every rank
saw only its own tables: rank 0 gathers them, with the size-exchange and slot-padding bytes) and
summary.json's `compression` section. A run resumed with other modes (``--resume-allow
compress.mode``) is a new segment: its totals start afresh, the earlier segments' are kept
beside them (``segments``), and the section says the run is ``mixed``."""
from __future__ import annotations

from typing import Any, Callable

from dlrm_comp.config import CompressConfig
from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.plan import CompressionPlan
from dlrm_comp.recorder import CompressionRecorder, format_interval_table


class CompressionStats:
    def __init__(self, num_tables: int, world_size: int, rank: int, modes: tuple[str, str] = ("off", "off")):
        self.recorder = CompressionRecorder(num_tables)
        self.world_size, self.rank = world_size, rank
        self.modes = tuple(modes)  # (forward, backward) modes these totals are of
        self.segments: list[dict[str, Any]] = []  # earlier segments of a resumed run whose modes changed
        self.segment_start = 0
        self.bytes_meta = 0  # size-exchange bytes of all ranks (rank 0 sums them at each interval)
        self.bytes_pad = 0  # slot padding of all ranks (dist.size_exchange=slots)
        self._meta_seen = self._pad_seen = 0

    def interval(self, exchange: Exchange | None, iteration: int, log: Callable[..., None],
                 echo: Callable[[str], None] | None) -> None:
        """Write the interval's `table` records (rank 0); ``echo`` prints them as a table."""
        meta = (exchange.bytes_meta if exchange is not None else 0) - self._meta_seen
        self._meta_seen += meta
        pad = (exchange.bytes_pad if exchange is not None else 0) - self._pad_seen
        self._pad_seen += pad
        if self.world_size > 1:
            import torch.distributed as dist
            gathered = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object((self.recorder.take_interval(), meta, pad), gathered, dst=0)
            if self.rank != 0:
                return
            for part, m, p in gathered:
                self.recorder.merge_interval(part)
                self.bytes_meta += m
                self.bytes_pad += p
        else:
            self.bytes_meta += meta
            self.bytes_pad += pad
        rows = self.recorder.flush(iteration, log)
        if rows and echo is not None:
            echo(format_interval_table(rows, iteration))

    def section(self, cfg: CompressConfig, plan: CompressionPlan, cardinalities: list[int],
                base_bounds: list[float]) -> dict[str, Any]:
        """summary.json's `compression` section. A run resumed with other modes (``--resume-allow
compress.mode``) is a new segment: its totals start afresh, the earlier segments' are kept
beside them (``segments``), and the section says the run is ``mixed``."""
        fwd = self.recorder.direction_summary("fwd", cardinalities, base_bounds)
        section: dict[str, Any] = {"mode": cfg.mode, "codec": _codec_name(plan.fwd), "world_size": self.world_size,
                                   "destinations": self.world_size if self.world_size > 1 else cfg.chunks,
                                   "decay": {"func": cfg.decay.func, "constant": cfg.decay.constant,
                                             "early_stage": cfg.decay.early_stage},
                                   "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                                   "dedup": {"mode": cfg.dedup, "max_fraction": cfg.dedup_max_fraction,
                                             "tables": [t for t, on in enumerate(plan.dedup) if on]}}
        if fwd is not None:
            section.update(fwd)
            if plan.fwd.fixed_rate:
                section["max_err_ratio"] = None
        bwd = self.recorder.direction_summary("bwd", cardinalities, None)
        if bwd is not None:
            bwd.update({"mode": cfg.backward.mode, "codec": _codec_name(plan.bwd),
                        "error_bound": cfg.backward.error_bound})
            if plan.bwd.fixed_rate:
                bwd["max_err_ratio"] = None
            section["backward"] = bwd
        directions = [d for d in (fwd, bwd) if d is not None]
        if directions:  # beside the payload ratio: every byte that crossed, size exchange and padding included
            wire = sum(d["bytes_sent"] for d in directions) + self.bytes_meta + self.bytes_pad
            section["bytes_wire"] = wire
            section["cr_wire"] = sum(d["bytes_raw"] for d in directions) / wire if wire else None
        if self.segments:
            section["mixed"] = True
            section["segments"] = [*self.segments, {"from_iteration": self.segment_start, "mode": self.modes[0],
                                                    "backward_mode": self.modes[1]}]
        return section

    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict(), "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                "modes": list(self.modes), "segments": self.segments, "segment_start": self.segment_start}

    def load_state_dict(self, state: dict[str, Any], iteration: int = 0) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        self.bytes_meta = state.get("bytes_meta", 0)
        self.bytes_pad = state.get("bytes_pad", 0)
        self.segments = list(state.get("segments", []))
        self.segment_start = state.get("segment_start", 0)
        before = tuple(state.get("modes", self.modes))
        if before != self.modes:  # resumed with other modes: close the segment those totals belong to
            self.segments.append(self._closed_segment(before, iteration))
            self.recorder.reset()
            self.bytes_meta = self.bytes_pad = 0
            self.segment_start = iteration

    def _closed_segment(self, modes: tuple[str, str], iteration: int) -> dict[str, Any]:
        """What the earlier modes sent, as its own figures (never mixed into the new totals)."""
        tables = [0] * self.recorder.num_tables
        segment: dict[str, Any] = {"from_iteration": self.segment_start, "to_iteration": iteration,
                                   "mode": modes[0], "backward_mode": modes[1],
                                   "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad}
        for direction in ("fwd", "bwd"):
            summary = self.recorder.direction_summary(direction, tables, None)
            if summary is not None:
                segment[direction] = {k: summary[k] for k in ("bytes_raw", "bytes_sent", "cr", "max_err_ratio",
                                                              "estimated")}
        return segment


def _codec_name(plan) -> str:
    """A direction's codec as the summary names it (its first table's; empty when off)."""
    return "" if plan.mode == "off" else plan.codec_name(0)
