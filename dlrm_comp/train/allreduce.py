"""The dense allreduce, compressed by PyTorch's own DDP communication hooks.

Once the embedding exchange is compressed 10-50x, DDP's allreduce of the dense gradients is most
of what crosses the wire. ``dist.allreduce_compression`` registers one of torch's hooks on the
data-parallel head (``ddp_comm_hooks.default_hooks``: no hand-written allreduce): ``fp16`` and
``bf16`` cast each gradient bucket to 16 bits for the allreduce and back (half the bytes). The
hooks keep no state, so a resumed run continues exactly. Each rank counts the bytes it hands to
the allreduce before and after the cast (summary.json's ``allreduce``: rank 0's).
"""
from __future__ import annotations

from typing import Any

from dlrm_comp.train.extension import TrainingExtension


class AllreduceCompression(TrainingExtension):
    name = "allreduce"

    def __init__(self, mode: str):
        self.mode = mode
        self.bytes_raw = self.bytes_sent = 0

    def bind(self, trainer) -> None:
        """Register the hook on the DDP head before its first backward."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        cast = default_hooks.fp16_compress_hook if self.mode == "fp16" else default_hooks.bf16_compress_hook

        def counted(state, bucket):
            buffer = bucket.buffer()
            self.bytes_raw += buffer.numel() * buffer.element_size()
            self.bytes_sent += buffer.numel() * 2
            return cast(state, bucket)
        trainer.parallel.head.register_comm_hook(None, counted)

    def summary(self) -> dict[str, Any]:
        return {"allreduce": {"compression": self.mode, "bytes_raw": self.bytes_raw, "bytes_sent": self.bytes_sent,
                              "cr": self.bytes_raw / self.bytes_sent if self.bytes_sent else None}}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "bytes_raw": self.bytes_raw, "bytes_sent": self.bytes_sent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") == self.mode:  # another setting (--resume-allow) starts its counts afresh
            self.bytes_raw, self.bytes_sent = state.get("bytes_raw", 0), state.get("bytes_sent", 0)
