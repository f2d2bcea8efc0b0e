"""The compression statistics a run reports: each print interval's `table` records (every rank
saw only its own tables: rank 0 gathers them, with the size-exchange and slot-padding bytes) and
summary.json's `compression` section."""
from __future__ import annotations

from typing import Any, Callable

from dlrm_comp.config import CompressConfig
from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.plan import CompressionPlan
from dlrm_comp.recorder import CompressionRecorder, format_interval_table


class CompressionStats:
    def __init__(self, num_tables: int, world_size: int, rank: int):
        self.recorder = CompressionRecorder(num_tables)
        self.world_size, self.rank = world_size, rank
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
        """summary.json's `compression` section."""
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
        return section

    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict(), "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        self.bytes_meta = state.get("bytes_meta", 0)
        self.bytes_pad = state.get("bytes_pad", 0)


def _codec_name(plan) -> str:
    """A direction's codec as the summary names it (its first table's; empty when off)."""
    return "" if plan.mode == "off" else plan.codec_name(0)
