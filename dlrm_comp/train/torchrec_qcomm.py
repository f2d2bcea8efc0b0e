"""TorchRec's own quantized comms (`QCommsConfig`: FP16, BF16, FP8, INT8) as baselines beside
our compression: `compress.mode=torchrec_qcomm:fp16` (and `compress.backward.mode` for the
gradient all-to-all) on `model.backend=torchrec`.

The codecs run inside TorchRec's output dist untouched; each is wrapped in a counter that adds
the bytes it was given and the bytes it produced, so the summary's wire ratio is what crossed,
measured the same way as ours (every destination's chunk, this rank's included). On gloo TorchRec
itself replaces BF16 by FP16 (its registry logs a warning); the summary says so.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.types import NoOpQuantizedCommCodec, QuantizedCommCodec, QuantizedCommCodecs

from dlrm_comp.config import TORCHREC_QCOMM_MODES
from dlrm_comp.train.extension import TrainingExtension

PRECISIONS = {"fp16": CommType.FP16, "bf16": CommType.BF16, "fp8": CommType.FP8, "int8": CommType.INT8}
POOLED_A2A = "POOLED_EMBEDDINGS_ALL_TO_ALL"


def precision(mode: str) -> CommType:
    return PRECISIONS[mode.split(":", 1)[1]] if mode in TORCHREC_QCOMM_MODES else CommType.FP32


class CountingCodec(QuantizedCommCodec):
    """Delegates to TorchRec's codec while `active` (training steps), else to TorchRec's no-op
    fp32 codec, so evaluation batches travel uncompressed as in our exchange; counts the raw
    and encoded bytes of the training steps."""

    def __init__(self, inner: QuantizedCommCodec):
        self.inner = inner
        self.plain = NoOpQuantizedCommCodec()
        self.active = True
        self.bytes_raw = 0
        self.bytes_sent = 0

    @property
    def codec(self) -> QuantizedCommCodec:
        return self.inner if self.active else self.plain

    def encode(self, input_tensor: torch.Tensor, ctx=None) -> torch.Tensor:
        out = self.codec.encode(input_tensor, ctx)
        if self.active:
            self.bytes_raw += input_tensor.numel() * 4  # fp32-equivalent, as our recorder counts
            self.bytes_sent += out.numel() * out.element_size()
        return out

    def decode(self, input_grad: torch.Tensor, ctx=None) -> torch.Tensor:
        return self.codec.decode(input_grad, ctx)

    @property
    def quantized_dtype(self) -> torch.dtype:
        return self.codec.quantized_dtype

    def calc_quantized_size(self, input_len: int, ctx=None) -> int:
        return self.codec.calc_quantized_size(input_len, ctx)

    def create_context(self):
        return self.codec.create_context()

    def padded_size(self, input_tensor, dim_per_rank, my_rank, qcomm_ctx):
        return self.codec.padded_size(input_tensor, dim_per_rank, my_rank, qcomm_ctx)


def counting_registry(fwd_mode: str, bwd_mode: str, dim: int,
                      device: torch.device) -> tuple[dict | None, QuantizedCommCodecs | None]:
    """TorchRec's codec registry for the pooled all-to-all, with counters around its codecs. FP8
    is TorchRec's row-wise FP8 (a scale per embedding row of `dim` values): its whole-tensor FP8
    codec refuses the flat all-to-all buffer."""
    fwd, bwd = precision(fwd_mode), precision(bwd_mode)
    config = QCommsConfig(forward_precision=fwd, backward_precision=bwd,
                          fp8_quantize_dim=dim if fwd == CommType.FP8 else None,
                          fp8_quantize_dim_bwd=dim if bwd == CommType.FP8 else None)
    registry = get_qcomm_codecs_registry(config, device=device)
    if registry is None:
        return None, None
    codecs = registry[POOLED_A2A]
    counted = QuantizedCommCodecs(forward=CountingCodec(codecs.forward), backward=CountingCodec(codecs.backward))
    registry[POOLED_A2A] = counted
    return registry, counted


class QCommExtension(TrainingExtension):
    """The `compression` summary section of a TorchRec-codec run (bytes summed over ranks)."""

    name = "compression"

    def __init__(self, fwd_mode: str, bwd_mode: str, world_size: int, rank: int):
        self.fwd_mode, self.bwd_mode, self.world_size, self.rank = fwd_mode, bwd_mode, world_size, rank
        self.codecs: QuantizedCommCodecs | None = None  # set by the model-parallel wrapper
        self.device = torch.device("cpu")
        self.saved = [0.0] * 4  # this rank's counts from earlier segments of the run (resume)

    def set_training(self, training: bool) -> None:
        """TorchRec's codecs compress training steps only (evaluation is never compressed)."""
        self.codecs.forward.active = self.codecs.backward.active = training

    def _local(self) -> list[float]:
        c = self.codecs
        now = [c.forward.bytes_raw, c.forward.bytes_sent, c.backward.bytes_raw, c.backward.bytes_sent]
        return [float(a) + b for a, b in zip(now, self.saved)]

    def _totals(self) -> list[float]:
        local = torch.tensor(self._local(), dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist
            dist.all_reduce(local)
        return local.cpu().tolist()

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        raw, sent, braw, bsent = self._totals()
        if raw and self.rank == 0:
            echo(f"[{self.fwd_mode}] iteration {iteration}: wire ratio {raw / sent:.2f}x (TorchRec codec)")

    def summary(self) -> dict[str, Any]:
        raw, sent, braw, bsent = self._totals()
        gloo_bf16 = self.device.type == "cpu"
        section: dict[str, Any] = {"mode": self.fwd_mode, "codec": self.fwd_mode, "estimated": False,
                                   "bytes_raw": raw, "bytes_sent": sent, "cr": raw / sent if sent else None,
                                   # fixed-rate codecs (int8's row scales spread evenly): every table at cr
                                   "harmonic_mean_cr": raw / sent if sent else None, "max_err_ratio": None,
                                   "bytes_meta": 0, "bytes_pad": 0, "world_size": self.world_size}
        if gloo_bf16 and "bf16" in (self.fwd_mode + self.bwd_mode):
            section["note"] = "TorchRec runs bf16 as fp16 on gloo (CPU)"
        if self.bwd_mode != "off":
            section["backward"] = {"mode": self.bwd_mode, "bytes_raw": braw, "bytes_sent": bsent,
                                   "cr": braw / bsent if bsent else None, "max_err_ratio": None}
        return {"compression": section}

    def state_dict(self) -> dict[str, Any]:
        return {"local": self._local()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "local" in state:
            self.saved = [float(x) for x in state["local"]]
            c = self.codecs
            c.forward.bytes_raw = c.forward.bytes_sent = c.backward.bytes_raw = c.backward.bytes_sent = 0
