"""The one codec timing harness: best of n calls (the first included), the round trip checked."""
from __future__ import annotations

import pytest

from dlrm_comp.compress.lossless import get_lossless
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.timing import best_time, measure_codec


def _clock(steps):
    """A fake timer: each call advances by the next of ``steps`` (two reads per timed call)."""
    t, it = [0.0], iter(steps)

    def timer():
        t[0] += next(it)
        return t[0]
    return timer


def test_best_time_is_the_fastest_call_and_returns_the_first_result():
    calls = []
    out, best = best_time(lambda: calls.append(1) or len(calls), reps=3, timer=_clock([0, 3, 0, 1, 0, 2]))
    assert out == 1 and len(calls) == 3 and best == 1


def test_best_time_repeats_until_min_s():
    calls = []
    _, best = best_time(lambda: calls.append(1), reps=2, min_s=10.0, max_reps=6, timer=_clock([0, 1] * 6))
    assert len(calls) == 6 and best == 1  # 6 s spent by max_reps, short of min_s


def test_measure_codec_sizes_and_round_trip():
    buf = bytes(range(16)) * 64
    m = measure_codec(get_lossless("zlib", level=1), buf, 1)
    assert m.nbytes == len(buf) and 0 < m.csize < len(buf) and m.ctime > 0 and m.dtime > 0

    class Broken(IdentityCodec):
        def decompress(self, buf, nbytes):
            return bytes(nbytes)

    with pytest.raises(AssertionError, match="round-trip"):
        measure_codec(Broken(), buf, 1)
