"""The mode table is the one list of modes: every other list derives from it, the wire values
(frame mode ids, chunk kinds) are pinned, and bad names fail naming the valid ones."""
from __future__ import annotations

import pytest

from dlrm_comp.compress import modes
from dlrm_comp.compress.frame import MODE_IDS
from dlrm_comp.compress.quantize import ChunkKind
from dlrm_comp.config import COMPRESS_MODES, TORCHREC_QCOMM_MODES
from dlrm_comp.exchange import DirectionPlan


def test_wire_values_are_unchanged():
    assert MODE_IDS == {"simulate": 1, "sz": 2, "codec": 3, "fp16": 4, "bf16": 5, "fp8": 6, "int8": 7}
    assert {k.name: int(k) for k in ChunkKind} == {"RAW": 0, "CONST": 1, "QUANT": 2, "SZ": 3, "FIXED": 4}


def test_lists_derive_from_the_table():
    assert COMPRESS_MODES == ("off", "simulate", "sz", "codec", "fp16", "bf16", "fp8", "int8")
    assert TORCHREC_QCOMM_MODES == tuple(f"torchrec_qcomm:{m}" for m in modes.FIXED_RATE)
    assert modes.ERROR_BOUNDED == ("simulate", "sz", "codec") and modes.BYTE_MESSAGES == ("sz", "codec")
    assert modes.BACKEND_MODES == tuple(m for m in COMPRESS_MODES if m != "off")
    for name in COMPRESS_MODES:
        plan = DirectionPlan(name, 1)
        m = modes.BY_NAME[name]
        assert (plan.error_bounded, plan.fixed_rate, plan.estimated, plan.byte_messages) == (
            m.error_bounded, m.fixed_rate, m.estimated, m.byte_messages)


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="compress.mode: unknown mode 'zfp'; valid: off, simulate, sz, codec"):
        DirectionPlan("zfp", 1)
    with pytest.raises(ValueError, match="valid: off"):
        DirectionPlan("torchrec_qcomm:fp16", 1)  # TorchRec's own codec never runs in our exchange
