from __future__ import annotations

import pytest
import torch

from dlrm_comp.compress.backends import get_backend
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.frame import MAX_NUMEL, FrameHeader, decode_frame, encode_frame, pack_header
from dlrm_comp.compress.payload import decode_payload
from dlrm_comp.compress.quantize import ChunkKind


def _small_payload(mode="codec"):
    x = torch.randn(4, 6) * 0.05
    return get_backend(mode).encode(x, 1e-2).payload


def test_header_roundtrip_and_size():
    h = FrameHeader("codec", ChunkKind.QUANT, torch.float32, (32, 32), 1, 1, b"\x01", 0.01, 0.002, (-0.1, 0.004))
    h2, body = decode_frame(encode_frame(h, b"abc"))
    assert body == b"abc" and h2.shape == (32, 32) and h2.width == 1 and h2.codec_params == b"\x01"
    assert h2.params == pytest.approx((-0.1, 0.004)) and h2.eb_abs == pytest.approx(0.002)
    assert len(pack_header(h, 700)) + 4 <= 32


@pytest.mark.parametrize("mode", ["codec", "sz", "int8", "fp8"])
def test_every_single_byte_flip_detected(mode):
    p = _small_payload(mode)
    for i in range(len(p)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(p)
            bad[i] ^= flip
            with pytest.raises(CorruptPayloadError):
                decode_payload(bytes(bad))


def test_truncated_and_extended():
    p = _small_payload()
    for n in range(len(p)):
        with pytest.raises(CorruptPayloadError):
            decode_payload(p[:n])
    for extra in (b"\x00", b"abc", p):
        with pytest.raises(CorruptPayloadError):
            decode_payload(p + extra)


def test_not_a_payload():
    with pytest.raises(CorruptPayloadError, match="magic"):
        decode_payload(b"\x00" * 40)
    with pytest.raises(CorruptPayloadError):
        decode_payload(b"")


def test_decompression_bomb_rejected():
    with pytest.raises(ValueError):
        pack_header(FrameHeader("codec", ChunkKind.RAW, torch.float32, (MAX_NUMEL + 1,)), 0)
    # forge a valid-CRC frame claiming a huge shape: rejected before any allocation
    h = FrameHeader("codec", ChunkKind.RAW, torch.float32, (1,))
    good = bytearray(encode_frame(h, b"\x00" * 4))
    import struct
    import zlib
    ndim_at = 6  # magic, version, mode/kind, dtype/width, codec id, params len (0)
    forged = bytes(good[:ndim_at]) + bytes([2, 0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0x7F]) + bytes(good[ndim_at + 2:-4])
    forged += struct.pack("<I", zlib.crc32(forged))
    with pytest.raises(CorruptPayloadError, match="bomb"):
        decode_payload(forged)
