"""``compress.mode=mx4`` is one codec class and one mode row: through the exchange its chunks are
exactly the OCP MX4 groups of their values (``compress/mx4.py``), its bytes are counted exactly
(17 per group of 32, each chunk's last group zero-padded), and it trains in one process and over
two gloo ranks, forward and backward, at the format's 7.5x."""
import json

import numpy as np
import pytest
import torch

from multiproc import torchrun, train_cli
from dlrm_comp.compress.mx4 import GROUP, dequantize_mx4, quantize_mx4
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport, destination_rows
from dlrm_comp.recorder import CompressionRecorder
from dlrm_comp.train.loop import Trainer


def _format_roundtrip(chunk: torch.Tensor) -> torch.Tensor:
    """The format's definition applied to one chunk on its own: its values in groups of 32."""
    flat = chunk.reshape(-1)
    padded = torch.cat([flat, flat.new_zeros(-len(flat) % GROUP)])
    return dequantize_mx4(quantize_mx4(padded.view(-1, GROUP))).reshape(-1)[:len(flat)].view_as(chunk)


@pytest.mark.parametrize("w,batch,dim", [(1, 24, 8), (3, 25, 4), (2, 16, 48)])
def test_chunks_are_mx4_groups_with_exact_bytes(w, batch, dim):
    torch.manual_seed(w)
    tables = 3
    pooled = [torch.randn(batch, dim) * 10 ** t for t in range(tables)]
    recorder = CompressionRecorder(tables)
    plan = CompressionPlan(DirectionPlan("mx4", tables), DirectionPlan("off", tables))
    out = Exchange(LoopbackTransport(w), [0] * tables, dim, plan, recorder).forward(pooled, compress=True)
    expect_bytes = 0
    for t in range(tables):
        for lo, hi in destination_rows(batch, w):
            assert torch.equal(out[t][lo:hi], _format_roundtrip(pooled[t][lo:hi])), (t, lo)
            expect_bytes += -(-(hi - lo) * dim // GROUP) * 17
    recorder.flush(1, lambda *a, **k: None)
    summary = recorder.direction_summary("fwd", [10] * tables, None)
    assert summary["bytes_sent"] == expect_bytes
    assert summary["bytes_raw"] == tables * batch * dim * 4


def test_trains_one_process_at_the_format_ratio(tiny_cfg, tmp_path):
    cfg = tiny_cfg("compress.mode=mx4", "compress.backward.mode=mx4", "model.emb_dim=16",
                   "model.bottom_mlp=13-8-16", "compress.chunks=2")
    summary = Trainer(cfg, tmp_path / "run").run()
    comp = summary["compression"]
    assert comp["mode"] == "mx4" and comp["estimated"] is False and comp["max_err_ratio"] is None
    assert comp["cr"] == pytest.approx(64 / 8.5)  # 16 rows x 16 dims per chunk: 8 groups, 17 bytes each
    assert comp["backward"]["cr"] == pytest.approx(64 / 8.5)
    assert np.isfinite(summary["final_eval"]["logloss"])


@pytest.mark.multiprocess
def test_trains_over_two_gloo_ranks(tmp_path):
    proc = torchrun(2, *train_cli(tmp_path / "run", "compress.mode=mx4", "compress.backward.mode=mx4",
                                  "model.emb_dim=16", "model.bottom_mlp=13-8-16"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    comp = json.loads((tmp_path / "run" / "summary.json").read_text())["compression"]
    assert comp["mode"] == "mx4" and comp["cr"] >= 7 and comp["backward"]["cr"] >= 7
