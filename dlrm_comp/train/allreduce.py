"""The dense allreduce, compressed by PyTorch's own DDP communication hooks.

Once the embedding exchange is compressed 10-50x, DDP's allreduce of the dense gradients is most
of what crosses the wire. ``dist.allreduce_compression`` registers one of torch's hooks on the
data-parallel head (``ddp_comm_hooks``: no hand-written allreduce), on both backends (TorchRec's
dense part is the same DDP head): ``fp16`` and ``bf16`` cast each gradient bucket to 16 bits for
the allreduce and back (half the bytes; no state, so a resumed run continues exactly);
``powersgd`` sends each gradient matrix as two rank-``dist.powersgd_rank`` factors from
``dist.powersgd_start_iter`` on, with error feedback and warm start, its state checkpointed
(``powersgd.py`` says how a resume stays exact); ``auto`` chooses among these by measurement,
re-deciding at print intervals (``allreduce_policy.py``). One hook is registered, once, for every
setting: it dispatches each bucket to the setting of the step, which ``auto`` switches between
steps. The dense head keeps DDP's default buckets (several on the Kaggle shape: each bucket's
allreduce overlaps the rest of the backward) under every setting but ``powersgd``, one bucket
(``powersgd.bucket_kwargs``; how PowerSGD runs on several buckets under ``auto``:
``powersgd.py``). Each rank counts the bytes it hands to the allreduce before and after
(summary.json's ``allreduce``: rank 0's; under ``auto`` per setting too).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from dlrm_comp.train.extension import TrainingExtension


class AllreduceCompression(TrainingExtension):
    name = "allreduce"

    def __init__(self, mode: str, powersgd_rank: int = 1, powersgd_start_iter: int = 0, seed: int = 0):
        from dlrm_comp.train.allreduce_policy import CANDIDATES
        self.mode = mode
        self.candidates = CANDIDATES if mode == "auto" else (mode,)
        self.settings = {"mode": mode} if "powersgd" not in self.candidates else \
            {"mode": mode, "rank": powersgd_rank, "start_iter": powersgd_start_iter}
        self.setting = self.candidates[0]  # what the hook runs this step (auto: its policy's, switched between steps)
        self.policy = None  # auto's decisions (built at bind, when PowerSGD's start is known)
        self.seed = seed
        # per setting: steps run, bytes handed to the hook and bytes it handed to the wire
        self.by_setting = {c: {"steps": 0, "bytes_raw": 0, "bytes_sent": 0} for c in self.candidates}
        self.powersgd = None
        self.trainer = None
        self._saved: dict[str, Any] | None = None  # a checkpoint's PowerSGD state, until bind
        self._policy_state: dict[str, Any] | None = None  # a checkpoint's auto decisions, until bind

    def bind(self, trainer) -> None:
        """Register the one hook on the DDP head before its first backward (PowerSGD among the
        settings: restore its state and settle DDP's buckets too)."""
        self.trainer = trainer
        head = trainer.parallel.head
        group = head.process_group  # DDP's: its collectives apart from the embeddings' (TorchRec's are on WORLD)
        sends = {c: self._powersgd(trainer, head, group) if c == "powersgd" else self._plain(c, group)
                 for c in self.candidates}
        if self.mode == "auto":
            from dlrm_comp.train.allreduce_policy import AllreducePolicy
            self.policy = AllreducePolicy(self.candidates, self.powersgd.state.start_powerSGD_iter)
            if self._policy_state is not None:
                self.policy.load_state_dict(self._policy_state)
            self.setting = self.policy.setting

        def dispatch(state, bucket):
            psgd = self.powersgd
            if psgd is not None and psgd.settling:  # the settle pass: a plain allreduce, not counted
                return psgd(bucket)
            setting = self.setting
            if psgd is not None and setting != "powersgd":
                psgd.idle(bucket)  # PowerSGD's residual back into the bucket, its iterations counted
            buffer = bucket.buffer()
            counts = self.by_setting[setting]
            counts["bytes_raw"] += buffer.numel() * buffer.element_size()
            counts["steps"] += int(bucket.is_last())

            def sent(nbytes: int) -> None:  # PowerSGD's later buckets: from a completion callback
                counts["bytes_sent"] += nbytes
            return sends[setting](bucket, sent)
        head.register_comm_hook(None, dispatch)
        if self.powersgd is not None:
            cfg = trainer.cfg
            self.powersgd.settle(head, cfg.data.num_dense, len(trainer.source.cardinalities), cfg.model.emb_dim,
                                 trainer.device)

    @property
    def bytes_raw(self) -> int:
        return sum(c["bytes_raw"] for c in self.by_setting.values())

    @property
    def bytes_sent(self) -> int:
        return sum(c["bytes_sent"] for c in self.by_setting.values())

    @staticmethod
    def _plain(setting: str, group=None) -> Callable:
        """A stateless setting: torch's allreduce, or its cast to 16 bits and back (one
        collective, launched at once: ``send(bucket, sent)`` hands ``sent`` its bytes and returns
        the future, as ``PowerSGD`` does)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        hook = {"off": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook,
                "bf16": default_hooks.bf16_compress_hook}[setting]
        width = None if setting == "off" else 2  # bytes per element on the wire

        def send(bucket, sent: Callable[[int], None]):
            buffer = bucket.buffer()
            sent(buffer.numel() * (width or buffer.element_size()))
            return hook(group, bucket)
        return send

    def _powersgd(self, trainer, head, group):
        from dlrm_comp.train.powersgd import PowerSGD, start_iteration
        start = start_iteration(self.settings["start_iter"], trainer.iterations)
        if start >= trainer.iterations and trainer.rank == 0:
            never = "it never compresses" if self.mode == "powersgd" else "auto never tries it"
            print(f"warning: dist.powersgd_start_iter: PowerSGD would start at iteration {start}, at or past the "
                  f"run's {trainer.iterations}; {never} (lower dist.powersgd_start_iter)",
                  file=sys.stderr, flush=True)
        self.powersgd = PowerSGD(head, self.settings["rank"], start, self.seed, group)
        if self._saved is not None:
            self.powersgd.load_state_dict(self._saved, trainer.device)
        else:  # a fresh run, or a resume from one with other settings: its iterations count from here
            self.powersgd.state.iter = trainer.start_iteration
        return self.powersgd

    def measure(self, iteration: int) -> tuple[float, float] | None:
        """The open interval's measure of the setting that ran in it, seconds per step: the
        breakdown's allreduce and compute phases (every rank's mean), and the allreduce phase
        alone; rank 0's figures on every rank (``allreduce_policy.py`` says why this measure).
        None: no step was timed. The tests' seam for measurements of their choosing."""
        last = getattr(self.trainer.breakdown, "last", None)
        if last is None:
            return None
        import torch
        import torch.distributed as dist
        figures = torch.tensor([last["allreduce_s"] + last["compute_s"], last["allreduce_s"]], dtype=torch.float64,
                               device=self.trainer.device)
        dist.broadcast(figures, src=0)  # the breakdown's means are every rank's; this makes them the same bits
        return float(figures[0]), float(figures[1])

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        """``auto``: measure the interval's setting, decide the next one; rank 0 logs an
        ``allreduce`` record and prints one line."""
        if self.policy is None:
            return
        record = self.policy.interval(iteration, self.measure(iteration))
        self.setting = self.policy.setting
        if self.trainer.rank == 0:
            record["bytes"] = {c: dict(v) for c, v in self.by_setting.items()}
            log("allreduce", iteration, candidates=list(self.candidates), **record)
            echo(self.policy.line(iteration, record, self.candidates))

    def summary(self) -> dict[str, Any]:
        section = {"compression": self.mode, "bytes_raw": self.bytes_raw, "bytes_sent": self.bytes_sent,
                   "cr": self.bytes_raw / self.bytes_sent if self.bytes_sent else None}
        if self.policy is not None:
            section.update(setting=self.setting, chosen=self.policy.chosen, decisions=self.policy.decisions,
                           by_setting={c: dict(v) for c, v in self.by_setting.items()})
        return {"allreduce": section}

    def state_dict(self) -> dict[str, Any]:
        state = {**self.settings, "by_setting": {c: dict(v) for c, v in self.by_setting.items()}}
        if self.powersgd is not None:
            state["powersgd"] = self.powersgd.state_dict()
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called before ``bind``; another setting (--resume-allow) starts its counts and state afresh."""
        if all(state.get(k) == v for k, v in self.settings.items()):
            old = {"steps": 0, "bytes_raw": state.get("bytes_raw", 0), "bytes_sent": state.get("bytes_sent", 0)}
            saved = state.get("by_setting") or {self.mode: old}  # a checkpoint from before the counts per setting
            for c, counts in saved.items():
                if c in self.by_setting:
                    self.by_setting[c].update(counts)
            self._saved = state.get("powersgd")
            self._policy_state = state.get("policy")
