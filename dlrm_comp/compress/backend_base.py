"""Shared types of all compression backends: what encode returns, what roundtrip reports, and
the timing/error bookkeeping, so every path (simulator, benchmark, tuner, all-to-all) measures
the same thing the same way."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from dlrm_comp.compress.lossless import CodecCache
from dlrm_comp.compress.modes import BY_NAME
from dlrm_comp.compress.payload import decode_payload
from dlrm_comp.compress.quantize import NONFINITE_POLICIES, ChunkKind


@dataclass(kw_only=True)
class Encoded:
    """One encoded chunk. ``payload`` is the wire bytes (None for simulate, which keeps
    ``tensor``, the decoded values, instead). ``nbytes`` is exact (header and CRC included)
    unless ``estimated``."""

    mode: str
    nbytes: int
    raw_nbytes: int
    estimated: bool
    eb_rel: float | None
    eb_abs: float | None
    ideal_nbytes: float | None
    kind: ChunkKind
    payload: bytes | None = None
    tensor: torch.Tensor | None = None

    @property
    def cr(self) -> float:
        return self.raw_nbytes / self.nbytes if self.nbytes else float("inf")


@dataclass(kw_only=True)
class ChunkStats:
    """Per-chunk statistics of a round trip (what the recorder aggregates); built by ``of``."""

    mode: str
    kind: ChunkKind
    raw_nbytes: int
    nbytes: int
    estimated: bool
    ideal_nbytes: float | None
    eb_rel: float | None
    eb_abs: float | None
    max_abs_err: float
    err_ratio: float | None  # max_abs_err / eb_abs; None for fixed-rate modes
    enc_s: float
    dec_s: float

    @property
    def cr(self) -> float:
        return self.raw_nbytes / self.nbytes if self.nbytes else float("inf")

    @classmethod
    def of(cls, backend: "Backend", enc: Encoded, max_abs_err: float, enc_s: float, dec_s: float) -> "ChunkStats":
        """The statistics of one encoded chunk: the error ratio only for error-bounded backends."""
        return cls(mode=backend.name, kind=enc.kind, raw_nbytes=enc.raw_nbytes, nbytes=enc.nbytes,
                   estimated=enc.estimated, ideal_nbytes=enc.ideal_nbytes, eb_rel=enc.eb_rel, eb_abs=enc.eb_abs,
                   max_abs_err=max_abs_err,
                   err_ratio=error_ratio(max_abs_err, enc.eb_abs) if backend.error_bounded else None,
                   enc_s=enc_s, dec_s=dec_s)


@runtime_checkable
class Backend(Protocol):
    name: str
    error_bounded: bool
    fixed_rate: bool

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded: ...

    def decode(self, enc: Encoded | bytes, device: torch.device | str | None = None) -> torch.Tensor: ...

    def roundtrip(self, x: torch.Tensor, eb_rel: float | None = None) -> tuple[torch.Tensor, ChunkStats]: ...


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def max_abs_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """max |x - x_hat| over elements where x is finite (non-finite ones travel raw)."""
    if x.numel() == 0:
        return 0.0
    d = (x_hat.to(torch.float64) - x.to(torch.float64)).abs()
    d = torch.where(torch.isfinite(x), d, torch.zeros_like(d))
    return float(d.max().item())


def error_ratio(err: float, eb_abs: float | None) -> float:
    """max error / bound; a zero bound (constant chunk) is met only by an exact copy."""
    return err / eb_abs if eb_abs else (0.0 if err == 0.0 else float("inf"))


class BaseBackend:
    """Common decode and roundtrip; subclasses implement encode. What a backend is (bounded,
    fixed-rate) is its mode's entry in compress/modes.py. Each backend owns the codec cache it
    decodes with (and the model store of its lossless stage, where that needs one)."""

    name: str = ""

    def __init__(self, nonfinite: str = "raise", store=None) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite: must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.codecs = CodecCache(store)

    @property
    def error_bounded(self) -> bool:
        return BY_NAME[self.name].error_bounded

    @property
    def fixed_rate(self) -> bool:
        return BY_NAME[self.name].fixed_rate

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        """Short label for logs (the mode, plus the lossless stage where there is one)."""
        return self.name

    def decode(self, enc: Encoded | bytes, device: torch.device | str | None = None) -> torch.Tensor:
        """Decode a payload (any mode: the frame says which) or a simulate Encoded."""
        if isinstance(enc, Encoded):
            if enc.payload is None:
                if enc.tensor is None:
                    raise ValueError("Encoded carries neither payload nor tensor")
                return enc.tensor if device is None else enc.tensor.to(device)
            enc = enc.payload
        return decode_payload(enc, device, self.codecs)

    def encode_measured(self, x: torch.Tensor, eb_rel: float | None = None) -> tuple[Encoded, ChunkStats]:
        """Encode for a real transfer, with the chunk's statistics (the error is the sender's own
        measurement of what the receiver will decode; decode time is left to the receiver)."""
        t0 = time.perf_counter()
        enc = self.encode(x, eb_rel)
        enc_s = time.perf_counter() - t0
        err = max_abs_error(x, self.decode(enc, x.device)) if self.error_bounded else 0.0
        return enc, ChunkStats.of(self, enc, err, enc_s, 0.0)

    def roundtrip(self, x: torch.Tensor, eb_rel: float | None = None) -> tuple[torch.Tensor, ChunkStats]:
        """Encode then decode as a receiver would; x_hat on x's device and dtype, plus stats."""
        _sync(x)
        t0 = time.perf_counter()
        enc = self.encode(x, eb_rel)
        _sync(x)
        t1 = time.perf_counter()
        x_hat = self.decode(enc, x.device)
        _sync(x)
        t2 = time.perf_counter()
        return x_hat, ChunkStats.of(self, enc, max_abs_error(x, x_hat), t1 - t0, t2 - t1)
