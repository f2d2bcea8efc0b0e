"""Lossless additions: every codec round-trips exactly, the model-based ANS coder, nvcomp guard, efficiency."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dlrm_comp.compress.lossless import (
    HAVE_CONSTRICTION,
    SymbolModel,
    SymbolModelStore,
    codec_from_header,
    efficiency_report,
    get_lossless,
    nvcomp_available,
)
from dlrm_comp.compress.lossless.blosc2_codec import CODECS, FILTERS, SPLITMODES


def _codes(n: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    hi = 60 if width == 1 else 3000
    return np.clip(np.round(rng.normal(hi / 2, hi / 10, n)), 0, hi).astype(f"<u{width}").tobytes()


@pytest.mark.parametrize("width", [1, 2])
def test_every_blosc2_setting_roundtrips(width):
    buf = _codes(3000, width)
    for codec, filt, split, bs in itertools.product(CODECS, FILTERS, SPLITMODES[:2], (0, 1024)):
        c = get_lossless("blosc2", codec=codec, filter=filt, splitmode=split, blocksize=bs, clevel=5,
                         nthreads=2, dthreads=1)
        comp = c.compress(buf, width)
        assert c.decompress(comp, len(buf)) == buf
        again = codec_from_header(c.codec_id, c.header_params())
        assert again.decompress(comp, len(buf)) == buf


def test_blosc2_header_backward_compatible():
    c = get_lossless("blosc2", codec="ZSTD", clevel=5, filter="BITSHUFFLE", blocksize=16384)
    assert c.codec_id == 2 and len(c.header_params()) == 3
    assert c.header_params() == bytes([4 << 4 | 5, 2 << 4 | 1, 14])


@pytest.mark.parametrize("kw, key", [({"codec": "BROTLI"}, "codec"), ({"filter": "X"}, "filter"),
                                     ({"clevel": 11}, "clevel"), ({"blocksize": 100}, "blocksize"),
                                     ({"nthreads": 0}, "nthreads"), ({"dthreads": 0}, "dthreads"),
                                     ({"splitmode": "SOMETIMES"}, "splitmode")])
def test_blosc2_bad_params(kw, key):
    with pytest.raises(ValueError, match=key):
        get_lossless("blosc2", **kw)


def test_blosc2_bad_typesize():
    with pytest.raises(ValueError, match="typesize"):
        get_lossless("blosc2").compress(b"abc", 3)


def test_zlib_identity_roundtrip():
    buf = _codes(1024, 1)
    for name, kw in [("identity", {}), ("zlib", {"level": 1, "strategy": "auto"}), ("zlib", {"strategy": "rle"})]:
        c = get_lossless(name, **kw)
        assert c.decompress(c.compress(buf, 1), len(buf)) == buf


@pytest.mark.skipif(not HAVE_CONSTRICTION, reason="constriction not installed")
class TestAns:
    def test_roundtrip_and_ratio(self):
        store = SymbolModelStore()
        v = store.learn(5, _codes(8192, 1, seed=1), 1)
        c = get_lossless("ans", table=5, version=v, store=store)
        buf = _codes(1024, 1, seed=2)
        comp = c.compress(buf, 1)
        assert c.decompress(comp, len(buf)) == buf
        ideal = efficiency_report(np.frombuffer(buf, np.uint8), len(comp))
        assert ideal["efficiency"] > 0.9  # close to the entropy on a 1 KiB message
        assert len(comp) < len(get_lossless("blosc2", codec="ZSTD", clevel=9).compress(buf, 1))

    @pytest.mark.parametrize("width", [1, 2])
    def test_escape_and_widths(self, width):
        store = SymbolModelStore()
        v = store.learn(0, np.array([0, 1, 2, 3], dtype=f"<u{width}"), width)
        c = get_lossless("ans", table=0, version=v, store=store)
        out_of_alphabet = np.array([0, 1, 200, 3] * 10, dtype=f"<u{width}").tobytes()
        comp = c.compress(out_of_alphabet, width)
        assert comp[0] == 1 and c.decompress(comp, len(out_of_alphabet)) == out_of_alphabet
        empty = b""
        assert c.decompress(c.compress(empty, width), 0) == empty

    def test_needs_a_store(self):
        with pytest.raises(ValueError, match="ans.store"):
            get_lossless("ans", table=1, version=1)

    def test_install_is_immutable(self):
        store = SymbolModelStore()
        m = SymbolModel.learn(np.arange(10, dtype=np.uint8), 1)
        store.install(1, 4, m.to_bytes())
        store.install(1, 4, m)  # same model again: fine
        with pytest.raises(ValueError, match="immutable"):
            store.install(1, 4, SymbolModel.learn(np.zeros(10, np.uint8), 1))
        assert SymbolModel.from_bytes(m.to_bytes()).same_as(m)

    def test_bad_params(self):
        store = SymbolModelStore()
        with pytest.raises(ValueError, match="ans.version"):
            get_lossless("ans", table=9, store=store)
        with pytest.raises(ValueError, match="ans.table"):
            get_lossless("ans", table=70000, version=1, store=store)
        with pytest.raises(ValueError, match="width"):
            SymbolModel.learn(np.zeros(3, np.uint8), 3)


def test_nvcomp_guard():
    if nvcomp_available():  # pragma: no cover - GPU machines
        t = torch.from_numpy(np.frombuffer(_codes(4096, 1), np.uint8).copy()).cuda()
        for alg in ("ANS", "Bitcomp", "Cascaded", "LZ4", "Zstd"):
            c = get_lossless("nvcomp", algorithm=alg)
            assert torch.equal(c.decompress_tensor(c.compress_tensor(t)), t)
    else:
        with pytest.raises(ImportError, match="nvcomp"):
            get_lossless("nvcomp")
    with pytest.raises(ValueError, match="algorithm"):
        get_lossless("nvcomp", algorithm="gzip")


def test_efficiency_report():
    codes = np.repeat(np.arange(4, dtype=np.uint8), 256)  # 2 bits/symbol
    r = efficiency_report(codes, 256)
    assert r["bits_per_symbol"] == pytest.approx(2.0)
    assert r["efficiency"] == pytest.approx(1.0)
    assert r["ideal_cr"] == pytest.approx(16.0)
    r2 = efficiency_report(torch.from_numpy(codes), 512, overhead=10)
    assert r2["efficiency"] == pytest.approx(266 / 522)
