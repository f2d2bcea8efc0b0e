"""The mode table is the one list of modes: every other list derives from it, each row names the
one codec class that runs it, the wire values (chunk kinds) are pinned, and bad names fail
naming the valid ones."""
from __future__ import annotations

import pytest

from dlrm_comp.compress import modes
from dlrm_comp.compress.codecs.base import ModeCodec
from dlrm_comp.compress.kinds import ChunkKind
from dlrm_comp.config import COMPRESS_MODES, TORCHREC_QCOMM_MODES
from dlrm_comp.exchange import DirectionPlan


def test_wire_values_are_unchanged():
    assert {k.name: int(k) for k in ChunkKind} == {"RAW": 0, "CONST": 1, "QUANT": 2, "SZ": 3}


def test_lists_derive_from_the_table():
    assert COMPRESS_MODES == ("off", "simulate", "sz", "codec", "fp16", "bf16", "fp8", "int8", "mx4")
    assert TORCHREC_QCOMM_MODES == tuple(f"torchrec_qcomm:{m}" for m in ("fp16", "bf16", "fp8", "int8"))
    assert modes.ERROR_BOUNDED == ("simulate", "sz", "codec") and modes.BYTE_MESSAGES == ("sz", "codec")
    assert modes.CODEC_MODES == tuple(m for m in COMPRESS_MODES if m != "off")
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


def test_every_mode_is_one_codec_class_named_by_its_row():
    classes = {name: modes.codec_class(name) for name in COMPRESS_MODES}
    assert all(issubclass(c, ModeCodec) and c.name == name for name, c in classes.items())
    assert len(set(classes.values())) == len(classes)  # one class per mode, none shared
    assert all(c.byte_messages == modes.BY_NAME[n].byte_messages for n, c in classes.items())
