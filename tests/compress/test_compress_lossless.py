from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless import (
    DEFAULT_LOSSLESS,
    build_lossless,
    codec_from_header,
    default_lossless,
    entropy_bytes,
    get_lossless,
    lossless_names,
)
from dlrm_comp.compress.codecs.offline import chunk_codes

SETTINGS = [
    ("identity", {}),
    ("zlib", {"level": 1, "strategy": "huffman"}),
    ("zlib", {"level": 1, "strategy": "auto"}),
    ("zlib", {"level": 9}),
    ("blosc2", {"codec": "ZSTD", "clevel": 5, "filter": "NOFILTER"}),
    ("blosc2", {"codec": "LZ4", "clevel": 9, "filter": "BITSHUFFLE", "blocksize": 1024}),
    ("blosc2", {"codec": "ZLIB", "clevel": 1, "filter": "BYTEDELTA", "splitmode": "ALWAYS_SPLIT"}),
]


def _codes(n=1024, eb=1e-2, scale=1.0):
    """The training quantizer's codes of Gaussian values (uint8, uint16 beyond 8 bits) and their bytes."""
    _, codes = chunk_codes(torch.randn(n, generator=torch.Generator().manual_seed(0)) * scale, eb)
    return codes, codes.tobytes()


@pytest.mark.parametrize("name,params", SETTINGS)
@pytest.mark.parametrize("eb", [1e-2, 1e-4])
def test_roundtrip_and_header_params(name, params, eb):
    codes, buf = _codes(eb=eb)
    codec = get_lossless(name, **params)
    comp = codec.compress(buf, codes.dtype.itemsize)
    rebuilt = codec_from_header(codec.codec_id, codec.header_params())
    assert rebuilt.name == codec.name
    assert {k: v for k, v in rebuilt.params.items() if k != "nthreads"} == {
        k: v for k, v in codec.params.items() if k != "nthreads"}
    assert rebuilt.decompress(comp, len(buf)) == buf
    with pytest.raises(CorruptPayloadError):
        rebuilt.decompress(comp, len(buf) + 1)


def test_registry_errors():
    assert {"identity", "zlib", "blosc2"} <= set(lossless_names())
    with pytest.raises(ValueError, match="valid: .*blosc2"):
        get_lossless("brotli")
    with pytest.raises(ValueError, match="lossless.filter"):
        get_lossless("blosc2", filter="SHUFLE")
    with pytest.raises(ValueError, match="blocksize"):
        get_lossless("blosc2", blocksize=1000)
    with pytest.raises(CorruptPayloadError):
        codec_from_header(99, b"")


def test_default_compresses_codes_well():
    """The default must never be a setting that stores codes uncompressed; near entropy on 1 KiB."""
    codec = default_lossless()
    assert codec.name == DEFAULT_LOSSLESS.name
    for n in (1024, 32768):
        codes, buf = _codes(n)
        comp = codec.compress(buf, codes.dtype.itemsize)
        assert len(comp) < 0.8 * len(buf)
        assert len(comp) < 1.15 * entropy_bytes(torch.from_numpy(codes.astype("int64"))) + 64


def test_entropy_is_the_wire_planes_order0():
    assert entropy_bytes(torch.zeros(100, dtype=torch.uint8)) == 0.0
    assert entropy_bytes(torch.arange(256)) == pytest.approx(256.0)
    assert entropy_bytes(torch.tensor([0, 1] * 50)) == pytest.approx(100 / 8)
    assert entropy_bytes(bytes([0, 1] * 50)) == pytest.approx(100 / 8)
    assert entropy_bytes(np.array([0, 256] * 50)) == pytest.approx(100 / 8)  # the high plane carries it
    with pytest.raises(ValueError, match="16 bits"):
        entropy_bytes(torch.tensor([0, 2**31]))


@pytest.mark.parametrize("eb", [0.05, 1e-4])  # 8-bit and 16-bit codes
def test_training_and_offline_ideal_are_one_definition(eb):
    from dlrm_comp.compress.batch_quant import quantize_batch
    x = torch.randn(3, 4096, generator=torch.Generator().manual_seed(2))
    for q in (quantize_batch(x, torch.full((3,), eb, dtype=torch.float64)),  # fused CPU loops
              quantize_batch(x.double(), torch.full((3,), eb, dtype=torch.float64))):  # torch path
        ideal = q.entropy_bytes()
        for c in range(3):
            assert float(ideal[c]) == pytest.approx(entropy_bytes(q.codes[c]), rel=1e-9)


@pytest.mark.skipif(not os.environ.get("DLRM_COMP_SLOW"), reason="measurement script; set DLRM_COMP_SLOW=1")
def test_select_default_runs():
    from dlrm_comp.compress.lossless.select_default import measure

    out = measure(quick=True)
    assert not out["best"]["stores_uncompressed"]


def test_auto_uses_matches_on_repeated_rows_and_huffman_otherwise():
    """Embedding outputs repeat whole rows (popular / small-cardinality categories): 'auto' must
    exploit that, and must not lose to Huffman-only on match-free codes."""
    auto, huff = get_lossless("zlib", level=1, strategy="auto"), get_lossless("zlib", level=1, strategy="huffman")
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 52, (8, 32), generator=g, dtype=torch.uint8)
    rep = rows[torch.randint(0, 8, (512,), generator=g)].numpy().tobytes()
    assert len(auto.compress(rep, 1)) < 0.5 * len(huff.compress(rep, 1))
    _, buf = _codes(32768)
    assert len(auto.compress(buf, 1)) <= len(huff.compress(buf, 1))
    for b in (rep, buf):
        assert auto.decompress(auto.compress(b, 1), len(b)) == b


def test_spec_is_a_hashable_value_with_the_json_of_a_dict():
    import json

    from dlrm_comp.compress.lossless import LosslessSpec
    codec = get_lossless("zlib", level=1, strategy="huffman")
    spec = codec.spec
    assert spec == get_lossless("zlib", level=1, strategy="huffman").spec and len({spec, codec.spec}) == 1
    assert spec != get_lossless("zlib", level=6, strategy="huffman").spec
    assert json.dumps(spec.to_dict()) == json.dumps({"name": "zlib", **codec.params})  # what checkpoints hold
    assert LosslessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert build_lossless(spec).spec == spec and spec.label() == "zlib(level=1,strategy=huffman)"
