"""Property tests: invariants over generated inputs, where a handful of examples would miss a case."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_comp.config import COMPRESS_MODES, RunConfig, dump_config, load_config
from dlrm_comp.jsonl import read_jsonl

FLOATS = st.floats(min_value=1e-4, max_value=0.5, allow_nan=False, allow_infinity=False)


@st.composite
def run_configs(draw) -> RunConfig:
    """Valid configs across the sections, built through overrides so validation applies."""
    emb = draw(st.sampled_from([4, 8, 16]))
    batch = draw(st.sampled_from([32, 64, 128]))
    sets = [
        f"name={draw(st.sampled_from(['run', 'a b', 'x-1', 'yes', 'off', '123']))!r}",
        f"model.emb_dim={emb}", f"model.bottom_mlp=13-{draw(st.integers(1, 64))}-{emb}",
        f"model.top_mlp={draw(st.integers(1, 64))}-1",
        f"data.batch_size={batch}", f"data.seed={draw(st.integers(0, 2**31))}",
        f"data.zipf_exponent={draw(st.floats(0.1, 3.0))!r}",
        f"data.click_rate={draw(st.floats(0.01, 0.99))!r}",
        f"data.max_ind_range={draw(st.integers(0, 10**6))}",
        f"train.iterations={draw(st.integers(1, 10**6))}", f"train.lr={draw(st.floats(1e-5, 10.0))!r}",
        f"train.optimizer={draw(st.sampled_from(['sgd', 'adagrad']))}",
        f"train.progress={str(draw(st.booleans())).lower()}",
        f"compress.mode={draw(st.sampled_from(COMPRESS_MODES))}",
        f"compress.base_error_bound={draw(FLOATS)!r}",
        f"compress.tighten_tables={draw(st.lists(st.integers(0, 25), max_size=5))}",
        f"compress.chunks={draw(st.integers(1, batch))}",
        f"compress.decay.func={draw(st.sampled_from(['none', 'step', 'linear', 'exponential', 'cosine']))}",
        f"adaptive.eb_max={draw(st.floats(0.2, 0.5))!r}",
    ]
    return load_config([], sets, env={})


@given(run_configs())
@settings(max_examples=40)
def test_load_config_of_dump_config_is_the_same_config(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    dump_config(cfg, path)
    again = load_config([path], [], env={})
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@given(st.integers(0, 5000), st.integers(1, 64))
def test_destination_rows_partition_the_batch(batch, destinations):
    from dlrm_comp.exchange import destination_rows
    rows = destination_rows(batch, destinations)
    covered = [i for a, b in rows for i in range(a, b)]
    assert covered == list(range(batch))  # contiguous, in order, every row once
    assert all(b > a for a, b in rows) and len(rows) <= destinations
    if batch >= destinations:
        assert len(rows) == destinations  # every destination gets rows
        sizes = [b - a for a, b in rows]
        assert max(sizes) - min(sizes) < destinations  # as even as B // W allows


@st.composite
def messages(draw):
    """Chunks of one message as the exchange builds them: any count, rows per chunk (bag
    deduplication), width, dtype, bounds, lossless stage and code layout."""
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    dim = draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    rows = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6))
    scales = draw(st.lists(st.sampled_from([0.0, 1e-6, 0.05, 1e3]), min_size=len(rows), max_size=len(rows)))
    chunks = [(torch.randn(r, dim, generator=g, dtype=torch.float64) * s + 1.0).to(dtype) for r, s in zip(rows, scales)]
    ebs = draw(st.lists(st.sampled_from([1e-4, 1e-2, 0.3]), min_size=len(rows), max_size=len(rows)))
    return chunks, ebs, draw(st.sampled_from(["identity", "zstd", "zlib"])), draw(st.booleans())


@given(messages())
@settings(max_examples=60, deadline=None)
def test_wire_round_trip_over_generated_messages(msg):
    """What the sender framed is what the receiver parses: the chunk table (tables, rows, kinds)
    and every value within its chunk's bound, decoded by a receiver without the sender's state."""
    import numpy as np
    from dlrm_comp.compress.codecs.offline import roundtrip
    from dlrm_comp.compress.kinds import ChunkKind
    from dlrm_comp.compress.lossless import get_lossless
    from dlrm_comp.compress.modes import build_codec
    from dlrm_comp.compress.wire import parse
    chunks, ebs, coder, bitpack = msg
    r = roundtrip("codec", chunks, ebs, coder=get_lossless(coder), bitpack=bitpack)
    (wire,) = r.messages
    rows = [c.shape[0] for c in chunks]
    head = parse(wire, rows, chunks[0].shape[1]).header
    assert head["table"].tolist() == list(range(len(chunks))) and head["rows"].tolist() == rows
    got = build_codec("codec").decode_message(wire, rows, chunks[0].shape[1], list(range(len(chunks))))
    assert torch.equal(got, torch.cat(r.decoded))
    for x, y, eb in zip(chunks, r.decoded, ebs):
        x64 = x.double()
        assert float((y.double() - x64).abs().max()) <= eb * float(x64.max() - x64.min())
    assert np.isin(head["kind"], [ChunkKind.RAW, ChunkKind.CONST, ChunkKind.QUANT]).all()


def _lossless_codecs():
    from dlrm_comp.compress.lossless import get_lossless, lossless_names
    codecs = []
    for name in lossless_names():
        try:
            if name == "ans":  # a model coder: learn a model of some skewed bytes first (others escape)
                import numpy as np
                from dlrm_comp.compress.lossless.model_coder import SymbolModelStore
                store = SymbolModelStore()
                sample = np.random.default_rng(0).geometric(0.3, 4096).clip(0, 255).astype(np.uint8)
                codecs.append(get_lossless("ans", table=0, version=store.learn(0, sample, 1), store=store))
            else:
                codecs.append(get_lossless(name))
        except Exception:  # an optional backend that is not installed here (nvcomp without CUDA)
            continue
    return codecs


@pytest.mark.parametrize("codec", _lossless_codecs(), ids=lambda c: c.name)
@given(data=st.binary(max_size=5000), typesize=st.sampled_from([1, 2, 4]))
@settings(max_examples=60)
def test_every_lossless_codec_round_trips_arbitrary_bytes(codec, data, typesize):
    if codec.name == "ans":
        typesize = 1  # the model was learned for 1-byte codes
    data = data[: len(data) - len(data) % typesize]  # a buffer of whole elements
    assert codec.decompress(codec.compress(data, typesize), len(data)) == data


@given(st.lists(st.dictionaries(st.sampled_from(["kind", "iteration", "loss"]),
                                st.one_of(st.integers(), st.text(max_size=5)), min_size=1), max_size=20),
       st.integers(0, 200))
def test_jsonl_reader_survives_a_torn_tail_anywhere(tmp_path_factory, records, cut):
    import json
    path = tmp_path_factory.mktemp("log") / "metrics.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text[: max(0, len(text) - cut)])
    got = read_jsonl(path)
    assert got == records[: len(got)]  # a prefix: only a torn last record is ever lost
    whole_lines = text[: max(0, len(text) - cut)].count("\n")
    assert len(got) in (whole_lines, whole_lines + 1)  # every complete line kept (a last one may lack only its newline)
