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
        self.wire = [0, 0]  # [raw, sent] bytes of every direction of all ranks, exact ones included
        self._seen = [0, 0, 0, 0]  # the exchange's meta, pad, raw and sent already counted

    def interval(self, exchange: Exchange | None, iteration: int, log: Callable[..., None],
                 echo: Callable[[str], None] | None) -> None:
        """Write the interval's `table` records (rank 0); ``echo`` prints them as a table."""
        delta = self._unfolded(exchange)
        self._seen = [a + b for a, b in zip(self._seen, delta)]
        parts = self._gather((self.recorder.take_interval(), delta))
        if parts is None:
            return
        for part, (meta, pad, raw, sent) in parts:
            self.recorder.merge_interval(part)
            self.bytes_meta += meta
            self.bytes_pad += pad
            self.wire[0] += raw
            self.wire[1] += sent
        rows = self.recorder.flush(iteration, log)
        if rows and echo is not None:
            echo(format_interval_table(rows, iteration))

    def _unfolded(self, exchange: Exchange | None) -> list[int]:
        """The exchange's meta, pad, raw and sent bytes since the last interval (this rank's)."""
        now = [getattr(exchange, k, 0) if exchange is not None else 0
               for k in ("bytes_meta", "bytes_pad", "wire_raw", "wire_sent")]
        return [a - b for a, b in zip(now, self._seen)]

    def _gather(self, item) -> list | None:
        """Every rank's ``item`` on rank 0 (None on the others)."""
        if self.world_size == 1:
            return [item]
        import torch.distributed as dist
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(item, gathered, dst=0)
        return gathered if self.rank == 0 else None

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
        # beside the payload ratio: every byte handed to the transport in both directions (exact
        # ones and a simulated reconstruction included), the size exchange and slot padding too
        wire = self.wire[1] + self.bytes_meta + self.bytes_pad
        section["bytes_wire"] = wire
        section["cr_wire"] = self.wire[0] / wire if wire else None
        if self.segments:
            section["mixed"] = True
            section["segments"] = [*self.segments, {"from_iteration": self.segment_start, "mode": self.modes[0],
                                                    "backward_mode": self.modes[1]}]
        return section

    def state_dict(self, exchange: Exchange | None = None) -> dict[str, Any]:
        """``unfolded``: this rank's counts since the last interval, folded in at the next one
        after a resume (a checkpoint mid-interval loses none)."""
        return {"recorder": self.recorder.state_dict(), "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                "wire": list(self.wire), "unfolded": self._unfolded(exchange), "modes": list(self.modes),
                "segments": self.segments, "segment_start": self.segment_start}

    def load_state_dict(self, state: dict[str, Any], iteration: int = 0) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        self.bytes_meta = state.get("bytes_meta", 0)
        self.bytes_pad = state.get("bytes_pad", 0)
        self.wire = list(state.get("wire", [0, 0]))
        self._seen = [-n for n in state.get("unfolded", [0, 0, 0, 0])]  # the resumed exchange counts from 0
        self.segments = list(state.get("segments", []))
        self.segment_start = state.get("segment_start", 0)
        before = tuple(state.get("modes", self.modes))
        if before != self.modes:  # resumed with other modes: close the segment those totals belong to
            self.segments.append(self._closed_segment(before, iteration))
            self.recorder.reset()
            self.bytes_meta = self.bytes_pad = 0
            self.wire, self._seen = [0, 0], [0, 0, 0, 0]
            self.segment_start = iteration

    def _closed_segment(self, modes: tuple[str, str], iteration: int) -> dict[str, Any]:
        """What the earlier modes sent, as its own figures (never mixed into the new totals): the
        run totals and every rank's interval not yet printed (each checkpoint holds its own)."""
        parts = self._gather((self.recorder.take_interval(), [-n for n in self._seen]))
        for part, (meta, pad, raw, sent) in parts or []:
            self.recorder.merge_interval(part)
            self.bytes_meta, self.bytes_pad = self.bytes_meta + meta, self.bytes_pad + pad
            self.wire = [self.wire[0] + raw, self.wire[1] + sent]
        self.recorder.flush(iteration, lambda *a, **k: None)
        tables = [0] * self.recorder.num_tables
        segment: dict[str, Any] = {"from_iteration": self.segment_start, "to_iteration": iteration,
                                   "mode": modes[0], "backward_mode": modes[1],
                                   "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                                   "bytes_wire": self.wire[1] + self.bytes_meta + self.bytes_pad}
        for direction in ("fwd", "bwd"):
            summary = self.recorder.direction_summary(direction, tables, None)
            if summary is not None:
                segment[direction] = {k: summary[k] for k in ("bytes_raw", "bytes_sent", "cr", "max_err_ratio",
                                                              "estimated")}
        return segment


def _codec_name(plan) -> str:
    """A direction's codec as the summary names it (its first table's; empty when off)."""
    return "" if plan.mode == "off" else plan.codec_name(0)
