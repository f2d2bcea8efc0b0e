"""The mode table is the one list of modes: every other list derives from it, each row names the
one codec class that runs it, the wire values (chunk kinds) are pinned, and bad names fail
naming the valid ones."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from regimes import mixed_batches

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


@settings(max_examples=60, deadline=None)
@given(mixed_batches(max_chunks=4, max_values=200))
def test_the_nonfinite_count_is_one_exactly_when_a_value_is_nan_or_inf(batch):
    """Every mode's NaN/Inf check (one min/max reduction): 1 iff some value is NaN or +-Inf,
    magnitudes at the dtype's largest finite value and subnormals included; 0 when empty."""
    from dlrm_comp.compress.codecs.base import nonfinite_count
    x, _ = batch
    assert int(nonfinite_count(x)) == int(not bool(torch.isfinite(x).all()))
    finfo = torch.finfo(x.dtype)
    assert int(nonfinite_count(torch.tensor([finfo.max, -finfo.max, finfo.tiny], dtype=x.dtype))) == 0
    assert int(nonfinite_count(x[:0])) == 0
