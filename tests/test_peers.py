"""compress.peers=inter_node: messages to peers on this rank's node travel uncompressed (their
exact rows), the others through the mode's codec; statistics count both; bad settings stop
before work, and a run where every peer is on one node says so."""
from __future__ import annotations

import pytest
import torch

from dlrm_comp.compress.codecs.peers import PeerRoutedCodec
from dlrm_comp.compress.modes import build_codec
from dlrm_comp.config import ConfigError
from dlrm_comp.distributed.nodes import node_id
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport, destination_rows
from dlrm_comp.recorder import CompressionRecorder

LOCAL = [True, False, True, False]  # 4 destinations: 0 and 2 on this node


def _exchange(mode, local, recorder=None, bwd="off", t=3):
    plan = CompressionPlan(DirectionPlan(mode, t, eb_rel=[0.02] * t), DirectionPlan(bwd, t, eb_rel=[0.02] * t))
    return Exchange(LoopbackTransport(len(local)), [0] * t, 4, plan, recorder, local_peers=local)


def _pooled(t=3, b=26, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 4, generator=g) * 0.05).requires_grad_(requires_grad) for _ in range(t)]


@pytest.mark.parametrize("mode", ["codec", "sz"])
def test_local_destinations_get_exact_rows_remote_ones_the_codec(mode):
    pooled = _pooled()
    recorder = CompressionRecorder(3)
    out = _exchange(mode, LOCAL, recorder).forward(pooled, compress=True)
    for p, o in zip(pooled, out):
        for dest, (a, b) in enumerate(destination_rows(26, 4)):
            if LOCAL[dest]:
                assert torch.equal(o[a:b], p[a:b])
            else:
                chunk = p[a:b].double()
                err = float((o[a:b].double() - chunk).abs().max())
                assert err <= 0.02 * float(chunk.max() - chunk.min())
                assert err > 0 or mode == "sz"  # SZ3 sends chunks this small raw
    recorder.flush(1, lambda *a, **k: None)
    routed = recorder.direction_summary("fwd", [10] * 3, None)
    plain = CompressionRecorder(3)
    _exchange(mode, [False] * 4, plain).forward(pooled, compress=True)
    plain.flush(1, lambda *a, **k: None)
    everyone = plain.direction_summary("fwd", [10] * 3, None)
    assert routed["bytes_raw"] == everyone["bytes_raw"]
    local_rows = sum(b - a for d, (a, b) in enumerate(destination_rows(26, 4)) if LOCAL[d])
    assert routed["bytes_sent"] > local_rows * 4 * 4 * 3  # the local rows at 4 bytes, plus the codec's messages
    assert routed["max_err_ratio"] <= 1.0


def test_a_compressed_backward_routes_the_same_way():
    """The gradients of rows that local destinations received come back exact (as with every
    destination local), the others through the backward codec."""
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(26, 4, generator=g) for _ in range(3)]
    got = {}
    for name, local in (("routed", LOCAL), ("exact", [True] * 4)):
        pooled = _pooled(requires_grad=True)
        out = _exchange("codec", local, bwd="codec")(pooled, compress=True)
        torch.autograd.backward(out, grads)
        got[name] = [p.grad for p in pooled]
    for routed, exact in zip(got["routed"], got["exact"]):
        for dest, (a, b) in enumerate(destination_rows(26, 4)):
            if LOCAL[dest]:
                assert torch.equal(routed[a:b], exact[a:b])
            else:
                assert not torch.equal(routed[a:b], exact[a:b])
                assert torch.allclose(routed[a:b], exact[a:b], atol=0.1)


def test_every_destination_local_sends_everything_exact():
    pooled = _pooled()
    out = _exchange("codec", [True] * 4).forward(pooled, compress=True)
    for p, o in zip(pooled, out):
        assert torch.equal(o, p)


def test_a_fixed_rate_mode_is_not_routed():
    with pytest.raises(ValueError, match="byte-message modes"):
        PeerRoutedCodec(build_codec("fp16"), LOCAL)


def test_a_truncated_uncompressed_message_is_refused():
    from dlrm_comp.compress.errors import CorruptPayloadError
    ex = _exchange("codec", LOCAL)
    codec = ex.codec(ex.plan.fwd)
    assert isinstance(codec, PeerRoutedCodec)
    layout = ex.layout(ex.bag_index(26, None), ex.plan.fwd).owner
    x = torch.randn(sum(layout.message_rows), 4)
    enc = codec.encode(x, torch.full((sum(layout.counts),), 0.02, dtype=torch.float64), layout)
    assert torch.equal(codec.decode(enc.messages, layout, torch.float32), x.view(-1, 4)) is False  # remote: lossy
    enc.messages[0] = enc.messages[0][:-4]
    with pytest.raises(CorruptPayloadError, match="peer 0"):
        codec.decode(enc.messages, layout, torch.float32)


@pytest.mark.parametrize("overrides, named", [
    (["compress.peers=nearby"], "compress.peers"),
    (["compress.peers=inter_node", "compress.mode=fp8"], "compress.peers.*compress.mode='fp8'"),
    (["compress.peers=inter_node", "compress.mode=codec", "compress.backward.mode=int8"],
     "compress.peers.*compress.backward.mode='int8'"),
    (["compress.peers=inter_node", "compress.mode=codec", "dist.size_exchange=slots"], "dist.size_exchange=exact"),
])
def test_bad_settings_stop_before_work(tiny_cfg, overrides, named):
    with pytest.raises(ConfigError, match=named):
        tiny_cfg(*overrides)


def test_one_process_warns_that_every_peer_is_local(tiny_cfg, tmp_path, capsys):
    from dlrm_comp.train.loop import Trainer
    summary = Trainer(tiny_cfg("compress.peers=inter_node", "compress.mode=codec", "compress.chunks=2"),
                      tmp_path / "run").run()
    assert "compress.peers=inter_node: all 2 destinations are on this node" in capsys.readouterr().err
    assert summary["compression"]["cr"] == pytest.approx(1.0, abs=0.01) and summary["compression"]["max_err_ratio"] == 0


def test_nodes_are_torchruns_node_ranks_else_host_names():
    assert node_id({"GROUP_RANK": "1"}) == "torchrun node 1" != node_id({"GROUP_RANK": "0"})
    assert node_id({}).startswith("host ")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_raw_rows_arrive_exact_at_any_offset_and_from_any_buffer(dtype):
    """A raw message lands after a compressed one of any length (so at any alignment), in a
    writable receive buffer or in read-only bytes: its rows come back exact either way, as a
    view where they can be and a copy where not."""
    import numpy as np
    from dlrm_comp.compress.codecs.peers import row_bytes, rows_of
    x = (torch.randn(5, 3, generator=torch.Generator().manual_seed(4)) * 100).to(dtype)
    msg = row_bytes(x.contiguous())
    assert msg.nbytes == x.numel() * x.element_size() and np.shares_memory(msg, x.numpy() if dtype != torch.bfloat16
                                                                          else x.view(torch.int16).numpy())
    for offset in range(9):
        buf = np.zeros(offset + msg.nbytes + 3, dtype=np.uint8)
        buf[offset:offset + msg.nbytes] = msg
        view = memoryview(buf)[offset:offset + msg.nbytes]  # what the sender's split hands the decoder
        got = rows_of(view, 5, 3, dtype, peer=1)
        assert torch.equal(got.view(torch.uint8), x.view(torch.uint8))
        assert (got.data_ptr() == buf.ctypes.data + offset) == ((buf.ctypes.data + offset) % x.element_size() == 0)
    got = rows_of(msg.tobytes(), 5, 3, dtype, peer=1)  # read-only: a copy, no warning
    assert torch.equal(got.view(torch.uint8), x.view(torch.uint8))
    assert rows_of(b"", 0, 3, dtype, peer=1).shape == (0, 3)


def test_the_sender_joins_bytes_and_buffers_in_one_send_buffer():
    import numpy as np
    from dlrm_comp.exchange.sizes import joined
    parts = [b"abc", np.arange(7, dtype=np.uint8), memoryview(b"xy"), b"", np.zeros(0, np.uint8), bytearray(b"q")]
    out = joined(parts, [len(p) for p in parts])
    assert out.dtype == torch.uint8 and bytes(out.numpy()) == b"".join(bytes(p) for p in parts)
