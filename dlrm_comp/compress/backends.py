"""The compression backends behind one interface (see backend_base.Backend) and their registry.

All byte-producing backends emit frame.py payloads, so a receiver decodes with
``decode_payload(bytes)`` and no encoder state. Error-bounded modes (simulate, codec, sz) share
one semantics: eb_abs = eb_rel * (max - min) of the chunk, verified after decoding.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from dlrm_comp.compress.backend_base import Backend, BaseBackend, ChunkStats, Encoded, max_abs_error
from dlrm_comp.compress.fixed import encode_fixed
from dlrm_comp.compress.frame import FrameHeader, encode_frame, frame_overhead
from dlrm_comp.compress.lossless import LosslessCodec, default_lossless, entropy_bytes, get_lossless
from dlrm_comp.compress.lossless.entropy import entropy_bytes_np
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.modes import BACKEND_MODES, FIXED_RATE
from dlrm_comp.compress.payload import decode_body
from dlrm_comp.compress.quantize import (
    ChunkKind,
    QuantizedChunk,
    check_input,
    chunk_range,
    codes_to_bytes,
    count_nonfinite,
    dequantize,
    header_float,
    quantize,
    quantize_np,
    round_down,
    tensor_to_bytes,
)
from dlrm_comp.compress.sz import sz_compress


def _raw_nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def _chunk_header(mode: str, q: QuantizedChunk, codec: LosslessCodec | None = None) -> FrameHeader:
    """Frame header of a RAW / CONST / QUANT chunk (codec only matters for QUANT)."""
    params: tuple[float, ...] = ()
    if q.kind == ChunkKind.CONST:
        params = (q.minimum,)
    elif q.kind == ChunkKind.QUANT:
        params = (q.minimum, q.step)
    codec = codec or IdentityCodec()
    return FrameHeader(mode, q.kind, q.dtype, q.shape, q.width, codec.codec_id, codec.header_params(),
                       q.eb_rel, q.eb_abs, params)


def _raw_body(q: QuantizedChunk) -> bytes:
    return tensor_to_bytes(q.raw) if q.raw is not None else b""


class SimulateBackend(BaseBackend):
    """Quantize-dequantize on the tensor's device; bytes estimated from the codes' entropy."""

    name = "simulate"

    def __init__(self, nonfinite: str = "raise", lossless: str | LosslessCodec | None = None, **lossless_params: Any):
        super().__init__(nonfinite)
        self.lossless = _make_lossless(lossless, lossless_params)  # only for the header-size estimate

    def describe(self) -> str:
        return self.name

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded:
        q = quantize(x.detach(), float(eb_rel), nonfinite=self.nonfinite)
        h = _chunk_header(self.name, q, self.lossless if q.kind == ChunkKind.QUANT else None)
        if q.kind == ChunkKind.QUANT:
            ideal = entropy_bytes(q.codes) + frame_overhead(h, q.numel)
            nbytes = math.ceil(ideal)
        else:
            nbytes = frame_overhead(h, _raw_nbytes(x) if q.is_raw else 0) + (_raw_nbytes(x) if q.is_raw else 0)
            ideal = float(nbytes)
        return Encoded(mode=self.name, nbytes=nbytes, raw_nbytes=_raw_nbytes(x), estimated=True, eb_rel=float(eb_rel),
                       eb_abs=q.eb_abs, ideal_nbytes=ideal, kind=q.kind, tensor=dequantize(q))


class CodecBackend(BaseBackend):
    """Quantize, then a lossless stage on the codes; exact bytes. Falls back to identity when the
    lossless stage does not shrink the codes (e.g. a blosc2 setting that stores the block)."""

    name = "codec"

    def __init__(self, nonfinite: str = "raise", lossless: str | LosslessCodec | None = None, ideal: bool = True,
                 verify_decode: bool = False, **lossless_params: Any):
        self.lossless = _make_lossless(lossless, lossless_params)
        super().__init__(nonfinite, self.lossless.store if self.lossless.needs_store else None)
        self.ideal = bool(ideal)
        self.verify_decode = bool(verify_decode)  # entropy of the codes for ideal_nbytes (about a third of small-chunk encode time)

    def describe(self) -> str:
        return f"{self.name}:{self.lossless.spec.label()}"

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded:
        return self._encode(x, eb_rel)[0]

    def _encode(self, x: torch.Tensor, eb_rel: float | None) -> tuple[Encoded, torch.Tensor | None, float, float]:
        """(Encoded, verified x_hat or None, its max abs error, reconstruction seconds). x_hat is
        what any receiver decodes from the payload, bit for bit (the CPU fast path verified it)."""
        eb = float(eb_rel)
        fq = quantize_np(x, eb, self.nonfinite) if x.device.type == "cpu" else None
        if fq is None:
            check_input(x, eb)
            return self._encode_general(x, eb), None, 0.0, 0.0
        if not (math.isfinite(eb) and 0.0 < eb <= 0.5):
            check_input(x, eb)
        raw_n = _raw_nbytes(x)
        kind = fq.kind
        if kind == ChunkKind.QUANT:
            codes = fq.codes.tobytes()
            codec, body = self.lossless, self.lossless.compress(codes, fq.width)
            if len(body) >= len(codes):
                codec, body = _IDENTITY, codes
            h = FrameHeader(self.name, kind, fq.dtype, fq.shape, fq.width, codec.codec_id, codec.header_params(),
                            eb, fq.eb_abs, (fq.minimum, fq.step))
            payload = encode_frame(h, body)
            ideal = entropy_bytes_np(fq.codes) + len(payload) - len(body) if self.ideal else None
            return self._encoded(payload, raw_n, eb, fq.eb_abs, ideal, kind), fq.y, fq.err, fq.deq_s
        if kind == ChunkKind.CONST:
            h = FrameHeader(self.name, kind, fq.dtype, fq.shape, 0, 0, b"", eb, 0.0, (fq.minimum,))
            payload = encode_frame(h, b"")
            return self._encoded(payload, raw_n, eb, 0.0, float(len(payload)), kind), fq.y, 0.0, 0.0
        h = FrameHeader(self.name, ChunkKind.RAW, fq.dtype, fq.shape, 0, 0, b"", eb, fq.eb_abs, ())
        payload = encode_frame(h, tensor_to_bytes(fq.raw))
        return self._encoded(payload, raw_n, eb, fq.eb_abs, float(len(payload)), ChunkKind.RAW), None, 0.0, 0.0

    def _encoded(self, payload: bytes, raw_n: int, eb: float, eb_abs: float, ideal: float | None,
                 kind: ChunkKind) -> Encoded:
        return Encoded(mode=self.name, nbytes=len(payload), raw_nbytes=raw_n, estimated=False, eb_rel=eb,
                       eb_abs=eb_abs, ideal_nbytes=ideal, kind=kind, payload=payload)

    def _encode_general(self, x: torch.Tensor, eb: float) -> Encoded:
        q = quantize(x.detach(), eb, nonfinite=self.nonfinite)
        ideal: float | None = None
        codec: LosslessCodec | None = None
        if q.kind == ChunkKind.QUANT:
            codes = codes_to_bytes(q)
            codec, body = self.lossless, self.lossless.compress(codes, q.width)
            if len(body) >= len(codes):
                codec, body = IdentityCodec(), codes
        else:
            body = _raw_body(q)
        h = _chunk_header(self.name, q, codec)
        payload = encode_frame(h, body)
        if q.kind == ChunkKind.QUANT:
            ideal = entropy_bytes(q.codes) + frame_overhead(h, len(body)) if self.ideal else None
        else:
            ideal = float(len(payload))
        return self._encoded(payload, _raw_nbytes(x), eb, q.eb_abs, ideal, q.kind)

    def encode_measured(self, x: torch.Tensor, eb_rel: float | None = None) -> tuple[Encoded, ChunkStats]:
        """As BaseBackend.encode_measured, with the error the encoder already verified (no decode)."""
        t0 = time.perf_counter()
        enc, y, err, _ = self._encode(x, eb_rel)
        enc_s = time.perf_counter() - t0
        if y is None:
            err = max_abs_error(x, self.decode(enc, x.device))
        return enc, ChunkStats.of(self, enc, err, enc_s, 0.0)

    def roundtrip(self, x: torch.Tensor, eb_rel: float | None = None) -> tuple[torch.Tensor, ChunkStats]:
        """As BaseBackend.roundtrip, without a second decode where the encoder already verified the
        receiver's exact reconstruction (CPU float32/float64 chunks): x_hat is that reconstruction
        (bit-identical to decode(payload); tests hold it to that) and dec_s the time of the
        reconstruction step (the receiver's inflate is not repeated here). Set
        ``verify_decode=True`` to decode the payload instead and compare."""
        t0 = time.perf_counter()
        enc, y, err, deq_s = self._encode(x, eb_rel)
        t1 = time.perf_counter()
        if y is None or self.verify_decode:
            x_hat = self.decode(enc, x.device)
            dec_s = time.perf_counter() - t1
            err = max_abs_error(x, x_hat)
            if y is not None and not torch.equal(x_hat, y):
                raise AssertionError("codec: receiver decode differs from the verified reconstruction")
        else:
            x_hat, dec_s = y, deq_s
        return x_hat, ChunkStats.of(self, enc, err, t1 - t0, dec_s)


_IDENTITY = IdentityCodec()


class SzBackend(BaseBackend):
    """Real SZ3 (pysz) in ABS mode with eb_abs = eb_rel * chunk range; verified after decoding
    (raw on violation); constant chunks never reach SZ3."""

    name = "sz"

    def _sz_chunk(self, x: torch.Tensor, eb_rel: float) -> tuple[QuantizedChunk | None, FrameHeader | None, bytes]:
        """(fallback chunk, None, b'') for RAW/CONST, or (None, SZ header, SZ body)."""
        bad = count_nonfinite(x, self.nonfinite)
        if bad or x.numel() == 0:
            return QuantizedChunk(ChunkKind.RAW, tuple(x.shape), x.dtype, eb_rel, 0.0, raw=x.reshape(-1), nonfinite=bad), None, b""
        x64 = x.reshape(-1).to(torch.float64)
        mn, mx = chunk_range(x64)
        if mx == mn:
            return QuantizedChunk(ChunkKind.CONST, tuple(x.shape), x.dtype, eb_rel, 0.0, minimum=mn), None, b""
        eb_abs = eb_rel * (mx - mn)
        eb_v = round_down(eb_abs, header_float(x.dtype)) if math.isfinite(eb_abs) else 0.0
        raw = QuantizedChunk(ChunkKind.RAW, tuple(x.shape), x.dtype, eb_rel, eb_v, raw=x.reshape(-1))
        if eb_v <= 0.0:
            return raw, None, b""
        np_dtype = np.float64 if x.dtype == torch.float64 else np.float32
        body = sz_compress(x.detach().cpu().numpy().astype(np_dtype, copy=False) if x.dtype != torch.bfloat16
                           else x.detach().cpu().float().numpy(), eb_v)
        h = FrameHeader(self.name, ChunkKind.SZ, x.dtype, tuple(x.shape), 0, 0, b"", eb_rel, eb_v, ())
        y = decode_body(h, body).reshape(-1).to(torch.float64)  # exactly what the receiver computes
        ok = bool(torch.isfinite(y).all().item()) and float((y - x64.cpu()).abs().max().item()) <= eb_v
        return (None, h, body) if ok else (raw, None, b"")

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded:
        check_input(x, eb_rel)
        q, h, body = self._sz_chunk(x.detach(), float(eb_rel))
        if q is not None:
            h, body = _chunk_header(self.name, q), _raw_body(q)
        payload = encode_frame(h, body)
        return Encoded(mode=self.name, nbytes=len(payload), raw_nbytes=_raw_nbytes(x), estimated=False,
                       eb_rel=float(eb_rel), eb_abs=h.eb_abs, ideal_nbytes=None, kind=h.kind, payload=payload)


class FixedRateBackend(BaseBackend):
    """fp16 / bf16 / fp8 / int8 casts (see fixed.py); eb_rel is ignored."""

    def __init__(self, mode: str, nonfinite: str = "raise"):
        if mode not in FIXED_RATE:
            raise ValueError(f"fixed-rate mode must be one of {FIXED_RATE}, got {mode!r}")
        self.name = mode
        super().__init__(nonfinite)

    def encode(self, x: torch.Tensor, eb_rel: float | None = None) -> Encoded:
        check_input(x)
        x = x.detach()
        bad = count_nonfinite(x, self.nonfinite)
        if bad:
            q = QuantizedChunk(ChunkKind.RAW, tuple(x.shape), x.dtype, 0.0, 0.0, raw=x.reshape(-1), nonfinite=bad)
            h, body = _chunk_header(self.name, q), _raw_body(q)
            h = FrameHeader(h.mode, h.kind, h.dtype, h.shape)
        else:
            params, body = encode_fixed(self.name, x)
            h = FrameHeader(self.name, ChunkKind.FIXED, x.dtype, tuple(x.shape), params=params)
        payload = encode_frame(h, body)
        return Encoded(mode=self.name, nbytes=len(payload), raw_nbytes=_raw_nbytes(x), estimated=False, eb_rel=None,
                       eb_abs=None, ideal_nbytes=None, kind=h.kind, payload=payload)


def _make_lossless(lossless: str | LosslessCodec | None, params: dict[str, Any]) -> LosslessCodec:
    params = dict(params)
    params.update(params.pop("lossless_params", None) or {})
    if isinstance(lossless, LosslessCodec):
        if params:
            raise ValueError("pass lossless parameters only with a codec name, not with a codec instance")
        return lossless
    if lossless is None:
        if params:
            raise ValueError("lossless parameters given without lossless=<name>")
        return default_lossless()
    return get_lossless(lossless, **params)


def get_backend(mode: str, **options: Any) -> Backend:
    """Backend for a compress.mode. Options: nonfinite ('raise' | 'passthrough') for all;
    lossless=<name or LosslessCodec> plus that codec's parameters (as keywords or as a
    ``lossless_params`` dict) for codec (and simulate, where only the header size depends on it)."""
    if mode == "simulate":
        return SimulateBackend(**options)
    if mode == "codec":
        return CodecBackend(**options)
    if mode == "sz":
        return SzBackend(**options)
    if mode in FIXED_RATE:
        return FixedRateBackend(mode, **options)
    raise ValueError(f"compress.mode: unknown backend {mode!r}; valid: {', '.join(BACKEND_MODES)}")


__all__ = ["Backend", "ChunkStats", "Encoded", "get_backend", "SimulateBackend", "CodecBackend",
           "SzBackend", "FixedRateBackend"]
