"""The device message path of `codec` (`compress.message_path`, `compress/device_wire.py`), held on
the CPU: forced with `compress.message_path=device` on CPU tensors, where the lossless stage is the
identity stage (nvcomp's ANS runs only on CUDA: its test is marked `cuda`).

- a round trip within the bound, and bit for bit what the host path decodes (the same quantizer
  and reconstruction), over shapes, dtypes, zero and tiny ranges, constant chunks, NaN/Inf and
  magnitudes near the float32 limit, with equal and unequal (deduplicated) chunk rows;
- no host read in a step's exchange beyond the one receive-size read per direction;
- as many kernels for 12 tables as for 3;
- training with the path forced equals training on the host path, in one process and on two gloo
  ranks; corrupted messages never decode to numbers; bad config values are refused (exit 2).
"""
from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlrm_comp.compress import cpu_kernels, device_stages, device_wire
from dlrm_comp.compress.codecs.base import ChunkLayout
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.modes import build_codec
from dlrm_comp.config import ConfigError, load_config
from dlrm_comp.data.batch import Batch
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange
from dlrm_comp.exchange.transport import LoopbackTransport
from dlrm_comp.recorder import CompressionRecorder
from multiproc import ROOT, single_and_multi
from test_device_input import HostReads, _count_host_copies
from test_step_kernels import count_kernels

QUIET = ("train.tensorboard=false", "train.eval_every=0", "train.checkpoint_every=0", "compress.print_tables=false")
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
_F32_MAX = float(torch.finfo(torch.float32).max)


def codec(path: str, tables: int, coder=None):
    plan = DirectionPlan("codec", tables, eb_rel=[0.01] * tables, message_path=path,
                         coders=[coder] * tables if coder is not None else [])
    return build_codec("codec", plan, None, "cpu")


def layout(tables: int, rows: list[np.ndarray], dim: int) -> ChunkLayout:
    slices, at = [], 0
    for r in rows:
        hi = at + int(r.max())
        slices.append((at, hi))
        at = hi
    return ChunkLayout([list(range(tables))] * len(rows), rows, slices, dim,
                       deduplicated=any((r != r.max()).any() for r in rows))


def roundtrip(c, x: torch.Tensor, eb: torch.Tensor, lay: ChunkLayout) -> tuple[torch.Tensor, object]:
    enc = c.encode(x, eb, lay)
    got = device_wire.DeviceReceived.looped(enc.payload, enc.sizes) if enc.device_messages else enc.messages
    return c.decode(got, lay, x.dtype), enc


def chunk_values(draw, n: int, dtype: torch.dtype) -> np.ndarray:
    kind = draw(st.sampled_from(["normal", "constant", "tiny", "huge", "nonfinite", "zero", "offset"]))
    g = np.random.default_rng(draw(st.integers(0, 2**31)))
    if kind == "constant":
        return np.full(n, draw(st.floats(-1e3, 1e3, width=16)))
    if kind == "zero":
        return np.zeros(n)
    if kind == "tiny":
        return 1.0 + g.standard_normal(n) * 1e-7
    if kind == "huge":
        return g.uniform(-1, 1, n) * (_F32_MAX if dtype in (torch.float32, torch.float64) else 6e4)
    if kind == "nonfinite":
        v = g.standard_normal(n)
        v[g.integers(0, n)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return v
    if kind == "offset":
        return 1000.0 + g.standard_normal(n)
    return g.standard_normal(n) * draw(st.sampled_from([1e-3, 1.0, 50.0]))


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    tables, messages, dim = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    ragged = draw(st.booleans())
    top = draw(st.integers(1, 6))
    rows = [np.array([draw(st.integers(1, top)) if ragged else top for _ in range(tables)], np.int64)
            for _ in range(messages)]
    chunks = [chunk_values(draw, int(r) * dim, dtype) for rs in rows for r in rs]
    x = torch.from_numpy(np.concatenate(chunks)).to(dtype).reshape(-1, dim)
    eb = torch.tensor([draw(st.sampled_from([1e-4, 1e-2, 0.05, 0.3])) for _ in chunks], dtype=torch.float64)
    return x, eb, layout(tables, rows, dim)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype]))


@given(batches())
def test_the_device_path_round_trips_within_the_bound_and_equals_the_host_path_bit_for_bit(batch):
    x, eb, lay = batch
    tables = len(lay.tables[0])
    y, enc = roundtrip(codec("device", tables), x, eb, lay)
    assert enc.device_messages and enc.messages is None
    assert enc.sizes.tolist() == [device_wire.message_bytes(len(ts), int(r.sum()) * lay.dim, x.dtype)
                         for ts, r in zip(lay.tables, lay.rows)]  # known from the layout alone
    y_host, host = roundtrip(codec("host", tables, IdentityCodec()), x, eb, lay)
    assert not host.device_messages
    assert same_bits(y, y_host)
    assert torch.equal(enc.err_ratio, host.err_ratio.to(enc.err_ratio))
    assert bool((enc.err_ratio <= 1).all())
    # the bound, chunk by chunk: relative to the chunk's range (exact where it is not finite)
    xw, yw = x.to(torch.float64), y.to(torch.float64)
    at = 0
    for c, r in enumerate(lay.chunk_rows):
        a, b = xw[at:at + r].reshape(-1), yw[at:at + r].reshape(-1)
        at += r
        if not torch.isfinite(a).all() or not torch.isfinite(a.max() - a.min()):
            assert same_bits(x[at - r:at], y[at - r:at])
            continue
        assert float((a - b).abs().max()) <= float(eb[c]) * float(a.max() - a.min())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_device_path_over_the_triton_kernels_equals_the_host_path(dtype):
    """The Triton quantizer's and reconstruction's planes (through Triton's interpreter on the
    CPU; compiled on a GPU host) assemble and parse as the torch path's do."""
    pytest.importorskip("triton", exc_type=ImportError)
    from dlrm_comp.compress.device import device_kernels
    lay = layout(2, [np.array([3, 5]), np.array([5, 1])], 4)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(int(lay.chunk_rows.sum()), 4, generator=g) * 3).to(dtype)
    x[:3] = 1.5  # a constant chunk
    x[8, 2] = float("inf")  # a RAW chunk
    eb = torch.tensor([0.02, 0.01, 0.001, 0.05], dtype=torch.float64)
    with device_kernels("triton"):
        y, enc = roundtrip(codec("device", 2), x, eb, lay)
    with device_kernels("torch"):
        y_ref, _ = roundtrip(codec("host", 2, IdentityCodec()), x, eb, lay)
    assert enc.device_messages and same_bits(y, y_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_split_each_message_over_its_chunks(dtype):
    g = torch.Generator().manual_seed(1)
    lay = layout(3, [np.array([4, 2, 4]), np.array([1, 4, 3])], 8)
    x = torch.randn(int(lay.chunk_rows.sum()), 8, generator=g).to(dtype)
    y, enc = roundtrip(codec("device", 3), x, torch.full((6,), 0.02, dtype=torch.float64), lay)
    per_message = [float(enc.sent[:3].sum()), float(enc.sent[3:].sum())]
    assert per_message == pytest.approx(enc.sizes.tolist())
    assert bool((enc.ideal > 0).all()) and int(enc.nonfinite) == 0


def test_a_corrupted_device_message_is_caught_never_decoded_to_numbers():
    lay = layout(2, [np.array([3, 3]), np.array([3, 3])], 4)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(2))
    eb = torch.full((4,), 0.02, dtype=torch.float64)
    c = codec("device", 2)
    enc = c.encode(x, eb, lay)
    sizes = enc.sizes.tolist()
    second = sizes[0]
    for at, value in ((0, 0x00), (second + device_wire.HEADER, 7)):  # a magic byte; message 1's first table id
        bad = enc.payload.clone()
        bad[at] = value
        y = c.decode(device_wire.DeviceReceived(bad, sizes), lay, x.dtype)
        broken = slice(0, 6) if at == 0 else slice(6, 9)  # a bad header: its message; a bad entry: its chunk
        assert bool(torch.isnan(y[broken]).all())
        assert not bool(torch.isnan(y[6:] if at == 0 else y[:6]).any())
        with pytest.raises(CorruptPayloadError, match="failed their checks"):
            c.check_messages()
    c.check_messages()  # nothing pending: nothing raised
    with pytest.raises(CorruptPayloadError, match="layout expects"):  # a short message: caught on the host
        c.decode(device_wire.DeviceReceived(enc.payload[:-1], [sizes[0], sizes[1] - 1]), lay, x.dtype)
    with pytest.raises(CorruptPayloadError):  # another dtype than the receiver expects: the header differs
        c.decode(device_wire.DeviceReceived(enc.payload, sizes), lay, torch.float16)
        c.check_messages()


def test_a_forced_device_path_refuses_what_it_does_not_carry():
    plan = DirectionPlan("codec", 2, message_path="device", bitpack=[True, False])
    c = build_codec("codec", plan, None, "cpu")
    lay = layout(2, [np.array([2, 2])], 4)
    with pytest.raises(ValueError, match="compress.message_path=device does not carry compress.layout=bitpack"):
        c.encode(torch.randn(4, 4), torch.full((2,), 0.01, dtype=torch.float64), lay)
    auto = build_codec("codec", DirectionPlan("codec", 2, message_path="auto"), None, "cpu")
    assert not auto.device_path(torch.zeros(1))  # auto: the device path only for CUDA rows (with nvcomp)


def test_pieces_are_aligned_for_the_batched_device_coder():
    buf = torch.arange(23, dtype=torch.uint8)
    flat, offsets = device_stages.aligned(buf, [5, 0, 16, 2], align=8)
    assert offsets == [0, 8, 8, 24] and flat.numel() == 32
    for (at, size), start in zip(((0, 5), (5, 0), (5, 16), (21, 2)), offsets):
        assert torch.equal(flat[start:start + size], buf[at:at + size])


# ----------------------------------------------------------------------------- the exchange
def exchange(tables: int, dedup: bool, fwd: str = "codec", bwd: str = "codec", path: str = "device"):
    plan = CompressionPlan(DirectionPlan(fwd, tables, eb_rel=[0.02] * tables, message_path=path,
                                         nonfinite="passthrough"),
                           DirectionPlan(bwd, tables, eb_rel=[0.02] * tables, message_path=path,
                                         nonfinite="passthrough"))
    plan.dedup = [dedup] * tables
    return Exchange(LoopbackTransport(2, "cpu"), [0] * tables, 8, plan, CompressionRecorder(tables))


def inputs(tables: int, batch: int = 64):
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 40, (batch,), generator=g) for _ in range(tables)]
    bags = Batch(torch.zeros(batch, 1), ids, [torch.arange(batch)] * tables, torch.zeros(batch))
    return torch.randn(tables, batch, 8, generator=g).requires_grad_(), bags


def step(ex: Exchange, base: torch.Tensor, bags) -> list[torch.Tensor]:
    out = ex(list(base.unbind(0)), compress=True, bags=bags)
    torch.cat(out).square().sum().backward()
    return out


@pytest.fixture(params=["identity", "chunked"])
def stage(request, monkeypatch) -> str:
    """The device path's lossless stage: the identity (what the CPU runs) or the chunked stage
    over a data-dependent coder of nvcomp's contract (``test_device_stages.TrailingZeros``), in
    chunks small enough that every message spans several."""
    if request.param == "chunked":
        from test_device_stages import TrailingZeros
        monkeypatch.setattr(device_stages, "default_stage",
                            lambda device: device_stages.ChunkedStage(TrailingZeros(), chunk=128))
        return "trailing-zeros"
    return "identity"


@pytest.mark.parametrize("dedup", [False, True])
def test_the_exchange_on_the_device_path_equals_the_host_path(dedup, stage):
    results = []
    for path in ("device", "host"):
        ex = exchange(3, dedup, path=path)
        base, bags = inputs(3)
        out = step(ex, base, bags)
        results.append((torch.cat(out).detach(), base.grad.clone(), ex.plan.fwd.codec_names()[0]))
    (y_dev, g_dev, label), (y_host, g_host, host_label) = results
    assert torch.equal(y_dev, y_host) and torch.equal(g_dev, g_host)
    assert label == f"codec:device+{stage}" and host_label.startswith("codec:") and "device" not in host_label


def test_an_exchange_step_reads_the_host_once_per_direction_on_the_device_path(monkeypatch, stage):
    """The torch ops of the quantizer (numba off, as on a GPU): a forward and a backward read
    exactly two lists, each direction's coded sizes and receive splits in one, nothing else (no
    `.item()`, no `.numpy()`, no `.cpu()`), with either stage."""
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    ex = exchange(3, dedup=False)
    base, _ = inputs(3)
    step(ex, base, None)  # the first step builds what is cached
    base.grad = None
    copies = _count_host_copies(monkeypatch)
    with HostReads() as reads:
        step(ex, base, None)
    assert sum(reads.reads.values()) == 0, reads.reads
    assert copies == collections.Counter({"tolist": 2}), copies
    assert ex.host_syncs == 4  # the sender's count: one per direction and step


def kernels(tables: int, dedup: bool) -> tuple[collections.Counter, collections.Counter]:
    base, bags = inputs(tables)
    return count_kernels(exchange(tables, dedup), base, bags)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-loops", "torch-ops"])
@pytest.mark.parametrize("dedup", [False, True])
def test_the_device_path_launches_as_many_kernels_for_12_tables_as_for_3(monkeypatch, dedup, device_path, stage):
    if device_path:
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    few_fwd, few_bwd = kernels(3, dedup)
    many_fwd, many_bwd = kernels(12, dedup)
    assert many_fwd == few_fwd, (many_fwd - few_fwd, few_fwd - many_fwd)
    assert many_bwd == few_bwd, (many_bwd - few_bwd, few_bwd - many_bwd)


# ----------------------------------------------------------------------------- training
def test_training_on_the_device_path_equals_training_on_the_host_path(tiny_cfg, tmp_path):
    from dlrm_comp.train.loop import Trainer
    both = ("compress.mode=codec", "compress.backward.mode=codec", "compress.chunks=2", "compress.dedup=on",
            "train.iterations=12", "train.print_every=6", *QUIET)
    runs = {}
    for path in ("device", "host"):
        trainer = Trainer(tiny_cfg(*both, f"compress.message_path={path}"), tmp_path / path, handle_signals=False)
        summary = trainer.run()
        runs[path] = (trainer.model.state_dict(), summary)
    (dev_state, dev), (host_state, host) = runs["device"], runs["host"]
    for key in dev_state:
        assert torch.equal(dev_state[key], host_state[key]), key
    assert dev["compression"]["bytes_raw"] == host["compression"]["bytes_raw"]
    assert 0 < dev["compression"]["max_err_ratio"] <= 1
    assert {t["codec"] for t in dev["compression"]["per_table"]} == {"codec:device+identity"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_gloo_ranks_on_the_device_path_match_one_process(tiny_cfg, tmp_path):
    """Two ranks exchange device messages over gloo (the size all-to-all, then the bytes), and
    train as one process does with the same chunks (``compress.chunks=2``)."""
    single_and_multi(tiny_cfg, tmp_path, 2, "compress.mode=codec", "compress.backward.mode=codec",
                     "compress.message_path=device", "train.iterations=20", single=("compress.chunks=2",))
    from dlrm_comp.train.logging import read_jsonl
    tables = [r for r in read_jsonl(tmp_path / "multi" / "metrics.jsonl") if r["kind"] == "table"]
    assert tables and {r["codec"] for r in tables} == {"codec:device+identity"}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("extra,match", [
    (("compress.mode=codec", "compress.message_path=gpu"), "compress.message_path: .*host, device, auto"),
    (("compress.mode=codec", "compress.message_path=device", "compress.layout=bitpack"),
     "compress.message_path: 'device' does not carry compress.layout=bitpack.*host, auto"),
    (("compress.mode=codec", "compress.message_path=device", "dist.size_exchange=slots"),
     "does not carry dist.size_exchange=slots"),
    (("compress.mode=codec", "compress.message_path=device", "compress.dedup=on", "compress.row_cache=on"),
     "does not carry compress.row_cache=on"),
    (("compress.mode=codec", "compress.message_path=device", "adaptive.lossless_tuning=true"),
     "does not carry adaptive.lossless_tuning"),
    (("compress.mode=fp16", "compress.message_path=device"), "codec mode's message path.*host, auto"),
])
def test_bad_message_path_settings_are_refused_naming_the_key(extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], list(extra), env={})


def test_message_path_values_that_validate():
    for value in ("host", "device", "auto"):
        assert load_config([], ["compress.mode=codec", f"compress.message_path={value}"], env={}) \
            .compress.message_path == value
    assert load_config([], [], env={}).compress.message_path == "auto"


def test_cli_exits_2_on_a_bad_message_path(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--config", str(ROOT / "configs/debug.yaml"),
                           "--set", "compress.mode=codec", "compress.message_path=sideways", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "compress.message_path" in proc.stderr and "device" in proc.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- CUDA only
@pytest.mark.cuda
def test_the_device_path_on_cuda_with_nvcomp_round_trips_bit_identical_to_the_host_path():  # pragma: no cover
    if not device_stages.nvcomp_ready():
        pytest.skip("nvcomp (the gpu extra) is not installed")
    lay = layout(3, [np.array([64, 64, 64])] * 2, 16)
    x = torch.randn(int(lay.chunk_rows.sum()), 16, generator=torch.Generator().manual_seed(3))
    eb = torch.full((6,), 0.02, dtype=torch.float64)
    plan = DirectionPlan("codec", 3, eb_rel=[0.02] * 3, message_path="auto")
    c = build_codec("codec", plan, None, "cuda")
    y, enc = roundtrip(c, x.cuda(), eb.cuda(), lay)
    assert enc.device_messages and plan.device_stage == "nvcomp-ANS" and enc.payload.is_cuda
    y_host, _ = roundtrip(codec("host", 3), x, eb, lay)
    assert same_bits(y.cpu(), y_host)
    c.check_messages()


def test_routing_per_peer_keeps_the_codec_on_the_host_path():
    """`compress.peers` routes host wire messages: the exchange marks its codec host-only (where
    `auto` then stays on the host path, even on CUDA) and a forced `device` is refused (the config
    refuses it at load too)."""
    for path in ("auto", "device"):
        plan = CompressionPlan(DirectionPlan("codec", 2, eb_rel=[0.02] * 2, message_path=path),
                               DirectionPlan("off", 2))
        ex = Exchange(LoopbackTransport(2, "cpu"), [0, 0], 8, plan, CompressionRecorder(2), local_peers=[True, False])
        base, _ = inputs(2)
        assert ex.codec(plan.fwd).inner.host_only == "compress.peers routing"
        if path == "device":
            with pytest.raises(ValueError, match="does not carry compress.peers routing"):
                ex(list(base.unbind(0)), compress=True)


def test_auto_takes_the_device_path_for_cuda_rows_only_where_nvcomp_imports(monkeypatch):
    class CudaRows:  # what `device_path` reads of the rows
        is_cuda = True
    c = build_codec("codec", DirectionPlan("codec", 2, message_path="auto"), None, "cpu")
    monkeypatch.setattr(device_stages, "nvcomp_ready", lambda: False)
    assert not c.device_path(CudaRows())  # without nvcomp the identity stage would send the codes uncoded
    monkeypatch.setattr(device_stages, "nvcomp_ready", lambda: True)
    assert c.device_path(CudaRows()) and not c.device_path(torch.zeros(1))
    c.host_only = "dist.size_exchange=slots"
    assert not c.device_path(CudaRows())
    packed = build_codec("codec", DirectionPlan("codec", 2, message_path="auto", bitpack=[False, True]), None, "cpu")
    assert not packed.device_path(CudaRows())
