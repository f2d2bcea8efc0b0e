"""Adding a lossless stage is one file and one registry line: a toy stage (tests/toy_stage.py),
registered with the line docs/architecture.md gives, is selected by ``compress.lossless.name``,
travels under its own codec id, is rebuilt by a receiver from the header alone, and the
exchange keeps the error bound with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_comp.compress.lossless import get_lossless, lossless_names, registry
from dlrm_comp.compress.wire import CHUNK_HEADER, PREAMBLE
from dlrm_comp.exchange import Exchange, LoopbackTransport, destination_rows
from dlrm_comp.train.compression import build_plan
from dlrm_comp.train.loop import Trainer

TABLES, BATCH, DIM, EB = 3, 24, 4, 0.02


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(registry, "STAGES", registry.STAGES + ("toy_stage:ToyCodec",))  # the one registry line


def test_unregistered_stage_is_unknown():
    assert "toy" not in lossless_names()
    with pytest.raises(ValueError, match="unknown codec 'toy'"):
        get_lossless("toy")


def test_toy_stage_round_trips_under_the_exchange(toy, tiny_cfg):
    cfg = tiny_cfg("compress.mode=codec", "compress.lossless.name=toy", "compress.lossless.params={level: 6}")
    plan = build_plan(cfg.compress, TABLES)
    plan.fwd.eb_rel[:] = [EB] * TABLES
    assert plan.fwd.codec_name(0) == "codec:toy(level=6)"
    g = torch.Generator().manual_seed(0)
    pooled = [torch.randn(BATCH, DIM, generator=g).round(decimals=1) * 0.05 for _ in range(TABLES)]  # repeats: toy shrinks
    sender = Exchange(LoopbackTransport(2), [0] * TABLES, DIM, plan)
    messages = sender.encode(pooled)
    for msg in messages:  # the first section names the toy coder
        assert msg[PREAMBLE + TABLES * CHUNK_HEADER] == 200
    receiver = Exchange(LoopbackTransport(2), [0] * TABLES, DIM)  # its own codec cache: rebuilds 'toy' from the id
    rows = [hi - lo for lo, hi in destination_rows(BATCH, 2)]
    for (lo, hi), got in zip(destination_rows(BATCH, 2), receiver.decode(messages, rows)):
        for t, p in enumerate(pooled):
            chunk = p[lo:hi].double()
            err = float((got.view(TABLES, hi - lo, DIM)[t].double() - chunk).abs().max())
            assert err <= EB * float(chunk.max() - chunk.min())
    out = sender.forward(pooled, compress=True)  # and through the transport
    assert all(np.isfinite(o.numpy()).all() and o.shape == p.shape for o, p in zip(out, pooled))


def test_training_with_the_toy_stage(toy, tiny_cfg, tmp_path):
    cfg = tiny_cfg("compress.mode=codec", "compress.lossless.name=toy", "compress.print_tables=false")
    summary = Trainer(cfg, tmp_path).run()
    assert summary["compression"]["codec"].startswith("codec:toy(")
    assert summary["compression"]["max_err_ratio"] <= 1.0 and summary["compression"]["cr"] > 1


def test_ans_sections_decode_with_the_receivers_own_store():
    from dlrm_comp.compress.errors import CorruptPayloadError
    from dlrm_comp.compress.lossless import HAVE_CONSTRICTION, SymbolModelStore
    from dlrm_comp.exchange import CompressionPlan, DirectionPlan
    if not HAVE_CONSTRICTION:
        pytest.skip("constriction not installed")
    store = SymbolModelStore()
    version = store.learn(0, np.arange(64, dtype=np.uint8).repeat(4), 1)  # a flat model over small codes
    coder = get_lossless("ans", table=0, version=version, store=store)
    plan = CompressionPlan(DirectionPlan("codec", TABLES, eb_rel=[0.05] * TABLES, coders=[coder] * TABLES),
                           DirectionPlan("off", TABLES))
    g = torch.Generator().manual_seed(1)
    pooled = [torch.randn(BATCH, DIM, generator=g) * 0.05 for _ in range(TABLES)]
    messages = Exchange(LoopbackTransport(1), [0] * TABLES, DIM, plan, store=store).encode(pooled)
    assert messages[0][PREAMBLE + TABLES * CHUNK_HEADER] == 3  # coded by 'ans'
    got = Exchange(LoopbackTransport(1), [0] * TABLES, DIM, store=store).decode(messages, [BATCH])[0]
    for t, p in enumerate(pooled):
        err = float((got.view(TABLES, BATCH, DIM)[t].double() - p.double()).abs().max())
        assert err <= 0.05 * float(p.max() - p.min())
    with pytest.raises(CorruptPayloadError, match="no model store"):  # nothing process-wide to fall back on
        Exchange(LoopbackTransport(1), [0] * TABLES, DIM).decode(messages, [BATCH])
