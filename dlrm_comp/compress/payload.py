"""Receiver side: turn any payload of any mode back into a tensor, from its bytes alone."""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.fixed import decode_fixed
from dlrm_comp.compress.frame import FrameHeader, decode_frame
from dlrm_comp.compress.lossless import CodecCache
from dlrm_comp.compress.modes import FIXED_RATE
from dlrm_comp.compress.quantize import (
    ChunkKind,
    QuantizedChunk,
    _NP_CODE,
    _NP_DTYPES,
    codes_from_bytes,
    dequantize,
    dequantize_np,
    tensor_from_bytes,
)
from dlrm_comp.compress.sz import sz_decompress

_PARAMS_PER_KIND = {ChunkKind.RAW: 0, ChunkKind.CONST: 1, ChunkKind.QUANT: 2, ChunkKind.SZ: 0}


def _check(h: FrameHeader, body: bytes) -> None:
    kind = h.kind
    if kind in _PARAMS_PER_KIND and len(h.params) != _PARAMS_PER_KIND[kind]:
        raise CorruptPayloadError(f"{kind.name} chunk carries {len(h.params)} parameters")
    if kind == ChunkKind.RAW and len(body) != h.numel * torch.empty((), dtype=h.dtype).element_size():
        raise CorruptPayloadError(f"raw body of {len(body)} bytes does not match shape {h.shape} of {h.dtype}")
    if kind == ChunkKind.QUANT and h.width == 0:
        raise CorruptPayloadError("quantized chunk with code width 0")
    if kind == ChunkKind.FIXED and h.mode not in FIXED_RATE:
        raise CorruptPayloadError(f"fixed-rate chunk in mode {h.mode!r}")


def _codec(codecs: CodecCache | None, h: FrameHeader):
    return (codecs if codecs is not None else CodecCache()).get(h.codec_id, h.codec_params)


def decode_body(h: FrameHeader, body: bytes, device: torch.device | str | None = None,
                codecs: CodecCache | None = None) -> torch.Tensor:
    """Reconstruct the tensor a validated header + body describe, on ``device`` (default CPU);
    ``codecs``: the receiver's codec cache and model store (None: a fresh one without models)."""
    if h.kind == ChunkKind.QUANT and len(h.params) == 2 and h.width in _NP_CODE:  # QUANT, fast path
        npd = _NP_DTYPES.get(h.dtype)
        if npd is not None:  # bit-identical to dequantize()
            codec = _codec(codecs, h)
            w = h.width
            codes = np.frombuffer(codec.decompress(body, h.numel * w), dtype=_NP_CODE[w])
            y = torch.from_numpy(dequantize_np(codes, h.params[0], h.params[1], npd)).reshape(h.shape)
            return y if device is None or torch.device(device).type == "cpu" else y.to(device)
    _check(h, body)
    dev = torch.device(device or "cpu")
    kind = h.kind
    if kind == ChunkKind.RAW:
        return tensor_from_bytes(body, h.dtype, h.shape).to(dev)
    if kind == ChunkKind.CONST:
        return torch.full(h.shape, h.params[0], dtype=h.dtype, device=dev)
    if kind == ChunkKind.QUANT:
        codec = _codec(codecs, h)
        codes = codes_from_bytes(codec.decompress(body, h.numel * h.width), h.width, h.numel, dev)
        q = QuantizedChunk(kind, h.shape, h.dtype, h.eb_rel or 0.0, h.eb_abs or 0.0, h.params[0], h.params[1],
                           h.width, codes, device=dev)
        return dequantize(q)
    if kind == ChunkKind.SZ:
        np_dtype = np.dtype(np.float64) if h.dtype == torch.float64 else np.dtype(np.float32)
        return torch.from_numpy(sz_decompress(body, np_dtype, h.shape)).to(h.dtype).to(dev)
    try:
        return decode_fixed(h.mode, h.params, body, h.dtype, h.shape).to(dev)
    except (ValueError, IndexError) as e:
        raise CorruptPayloadError(str(e)) from None


def decode_payload(payload: bytes, device: torch.device | str | None = None,
                   codecs: CodecCache | None = None) -> torch.Tensor:
    """Validate (magic, version, CRC, lengths) and decode any dlrm_comp payload (``codecs``: as
    for ``decode_body``)."""
    h, body = decode_frame(payload)
    return decode_body(h, body, device, codecs)
