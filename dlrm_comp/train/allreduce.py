"""The dense allreduce, compressed by PyTorch's own DDP communication hooks.

Once the embedding exchange is compressed 10-50x, DDP's allreduce of the dense gradients is most
of what crosses the wire. ``dist.allreduce_compression`` registers one of torch's hooks on the
data-parallel head (``ddp_comm_hooks``: no hand-written allreduce), on both backends (TorchRec's
dense part is the same DDP head): ``fp16`` and ``bf16`` cast each gradient bucket to 16 bits for
the allreduce and back (half the bytes; no state, so a resumed run continues exactly);
``powersgd`` sends each gradient matrix as two rank-``dist.powersgd_rank`` factors from
``dist.powersgd_start_iter`` on, with error feedback and warm start, its state checkpointed
(``powersgd.py`` says how a resume stays exact). Each rank counts the bytes it hands to the
allreduce before and after (summary.json's ``allreduce``: rank 0's).
"""
from __future__ import annotations

import sys
from typing import Any

from dlrm_comp.train.extension import TrainingExtension


class AllreduceCompression(TrainingExtension):
    name = "allreduce"

    def __init__(self, mode: str, powersgd_rank: int = 1, powersgd_start_iter: int = 0, seed: int = 0):
        self.mode = mode
        self.settings = {"mode": mode} if mode != "powersgd" else \
            {"mode": mode, "rank": powersgd_rank, "start_iter": powersgd_start_iter}
        self.seed = seed
        self.bytes_raw = self.bytes_sent = 0
        self.powersgd = None
        self._saved: dict[str, Any] | None = None  # a checkpoint's PowerSGD state, until bind

    def bind(self, trainer) -> None:
        """Register the hook on the DDP head before its first backward (PowerSGD: restore its
        state and settle DDP's buckets too)."""
        head = trainer.parallel.head
        send = self._powersgd(trainer, head) if self.mode == "powersgd" else self._cast()

        def counted(state, bucket):
            buffer = bucket.buffer()
            future, sent = send(bucket)
            if not (self.powersgd is not None and self.powersgd.settling):
                self.bytes_raw += buffer.numel() * buffer.element_size()
                self.bytes_sent += sent
            return future
        head.register_comm_hook(None, counted)
        if self.powersgd is not None:
            cfg = trainer.cfg
            self.powersgd.settle(head, cfg.data.num_dense, len(trainer.source.cardinalities), cfg.model.emb_dim,
                                 trainer.device)

    def _cast(self):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        cast = default_hooks.fp16_compress_hook if self.mode == "fp16" else default_hooks.bf16_compress_hook
        return lambda bucket: (cast(None, bucket), bucket.buffer().numel() * 2)

    def _powersgd(self, trainer, head):
        from dlrm_comp.train.powersgd import PowerSGD, start_iteration
        start = start_iteration(self.settings["start_iter"], trainer.iterations)
        if start >= trainer.iterations and trainer.rank == 0:
            print(f"warning: dist.powersgd_start_iter: PowerSGD would start at iteration {start}, at or past the "
                  f"run's {trainer.iterations}; it never compresses (lower dist.powersgd_start_iter)",
                  file=sys.stderr, flush=True)
        self.powersgd = PowerSGD(head, self.settings["rank"], start, self.seed)
        if self._saved is not None:
            self.powersgd.load_state_dict(self._saved, trainer.device)
        else:  # a fresh run, or a resume from one with other settings: its iterations count from here
            self.powersgd.state.iter = trainer.start_iteration
        return self.powersgd

    def summary(self) -> dict[str, Any]:
        return {"allreduce": {"compression": self.mode, "bytes_raw": self.bytes_raw, "bytes_sent": self.bytes_sent,
                              "cr": self.bytes_raw / self.bytes_sent if self.bytes_sent else None}}

    def state_dict(self) -> dict[str, Any]:
        state = {**self.settings, "bytes_raw": self.bytes_raw, "bytes_sent": self.bytes_sent}
        if self.powersgd is not None:
            state["powersgd"] = self.powersgd.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called before ``bind``; another setting (--resume-allow) starts its counts and state afresh."""
        if all(state.get(k) == v for k, v in self.settings.items()):
            self.bytes_raw, self.bytes_sent = state.get("bytes_raw", 0), state.get("bytes_sent", 0)
            self._saved = state.get("powersgd")
