"""The device message path's lossless stages (`compress/device_stages.py`) and nvcomp's batched ANS
binding (`compress/nvcomp_batched.py`), held on the CPU.

`ChunkedStage` frames a batched coder's chunks into messages and back by device ops. nvcomp's
coder runs on CUDA only, so here the stage runs over `TrailingZeros`, a coder of the same
contract made of torch ops (a chunk codes to its bytes up to the last nonzero one): its sizes
depend on the data, as ANS's do, so the compaction, the size tables, the checks and the
corruption handling run for real. The binding's host calls (option structs, alignments, output
bounds, scratch sizes) need no GPU and run wherever the nvidia-libnvcomp wheel is installed (the
dev extra installs it on Linux x86-64).
"""
from __future__ import annotations

import collections
import ctypes

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_comp.compress import device_stages, nvcomp_batched
from dlrm_comp.compress.device_stages import ALIGN, ChunkedStage, IdentityStage
from dlrm_comp.compress.errors import CorruptPayloadError
from test_device_input import HostReads, _count_host_copies


class TrailingZeros:
    """A batched coder of nvcomp's contract in torch ops (no host read): a chunk codes to its
    bytes up to its last nonzero one and decodes by padding zeros back to its expected size."""

    name = "trailing-zeros"

    def max_out(self, chunk: int) -> int:
        return chunk

    def compress(self, src: torch.Tensor, nbytes: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        at = torch.arange(src.shape[1], device=src.device)
        kept = src.masked_fill(at >= nbytes[:, None], 0)
        dst[:, :src.shape[1]] = kept
        return torch.where(kept != 0, at + 1, 0).amax(1)

    def decompress(self, src, offsets, nbytes, dst, expect):
        at = torch.arange(dst.shape[1], device=dst.device)
        take = (offsets[:, None] + at).clamp(0, max(src.numel() - 1, 0))
        dst.copy_(src[take].masked_fill(at >= nbytes[:, None], 0) if src.numel() else torch.zeros_like(dst))
        return (nbytes >= 0) & (nbytes <= expect)


def messages(draw_sizes: list[int], seed: int, zeros: float) -> tuple[torch.Tensor, list[int]]:
    g = np.random.default_rng(seed)
    total = sum(draw_sizes)
    data = g.integers(1, 256, total).astype(np.uint8)
    data[g.random(total) < zeros] = 0
    return torch.from_numpy(data), draw_sizes


def round_trip(stage, buf: torch.Tensor, sizes: list[int]):
    coded, coded_sizes = stage.encode(buf, sizes)
    host = coded_sizes.tolist()
    out, starts = stage.decode(coded[:sum(host)], host, sizes)
    return [out[s:s + n] for s, n in zip(starts, sizes)], host, coded


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(16, 700), min_size=1, max_size=5), seed=st.integers(0, 2**31),
       zeros=st.sampled_from([0.0, 0.5, 0.95, 1.0]), chunk=st.sampled_from([16, 64, 256]))
def test_chunked_messages_round_trip_and_their_sizes_follow_the_data(sizes, seed, zeros, chunk):
    buf, sizes = messages(sizes, seed, zeros)
    stage = ChunkedStage(TrailingZeros(), chunk=chunk)
    got, coded_sizes, _ = round_trip(stage, buf, sizes)
    at = 0
    for m, n in enumerate(sizes):
        assert torch.equal(got[m], buf[at:at + n])
        at += n
        chunks = -(-n // chunk)
        table = -(-4 * chunks // ALIGN) * ALIGN
        assert coded_sizes[m] % ALIGN == 0 and table <= coded_sizes[m] <= table + chunks * chunk
    if zeros == 1.0:  # every chunk codes to nothing: only the size tables travel
        assert coded_sizes == [-(-4 * -(-n // chunk) // ALIGN) * ALIGN for n in sizes]


def test_a_message_starts_with_its_chunks_sizes_and_each_chunk_is_padded_to_16_bytes():
    buf = torch.zeros(100, dtype=torch.uint8)
    buf[:3] = 7  # chunk 0 (64 bytes): 3 bytes; chunk 1 (36 bytes): 0 bytes
    stage = ChunkedStage(TrailingZeros(), chunk=64)
    coded, sizes = stage.encode(buf, [100])
    assert sizes.tolist() == [16 + 16]
    assert coded[:8].view(torch.int32).tolist() == [3, 0] and coded[8:16].eq(0).all()
    assert coded[16:19].tolist() == [7, 7, 7] and coded[19:32].eq(0).all()


def test_encode_and_decode_read_nothing_on_the_host(monkeypatch):
    buf, sizes = messages([300, 40, 513], 1, 0.6)
    stage = ChunkedStage(TrailingZeros(), chunk=64)
    coded, coded_sizes = stage.encode(buf, sizes)  # the first call builds the layout's geometry
    host = coded_sizes.tolist()
    stage.decode(coded[:sum(host)], host, sizes)
    copies = _count_host_copies(monkeypatch)
    with HostReads() as reads:
        coded, coded_sizes = stage.encode(buf, sizes)
        stage.decode(coded[:sum(host)], host, sizes)
    assert sum(reads.reads.values()) == 0 and not copies, (reads.reads, copies)


def _magic_cleared(stage, coded, host, sizes) -> list[bool]:
    out, starts = stage.decode(coded, host, sizes)
    return [int(out[s]) == 0 for s in starts]


def test_a_corrupted_size_table_or_chunk_flags_its_message_only():
    """Messages start with a nonzero byte (the device format's magic): a message that fails its
    checks comes back with it cleared, which `device_wire.parse` flags."""
    buf, sizes = messages([200, 150, 90], 3, 0.3)
    buf[[0, 200, 350]] = 0xDE
    stage = ChunkedStage(TrailingZeros(), chunk=64)
    coded, coded_sizes = stage.encode(buf, sizes)
    host = coded_sizes.tolist()
    coded = coded[:sum(host)].clone()
    assert _magic_cleared(stage, coded, host, sizes) == [False, False, False]
    second = host[0]
    for value in (9, 2**31 + 5, 1000):  # a size that no longer adds up; a negative u32; one beyond the slot
        bad = coded.clone()
        bad[second:second + 4] = torch.tensor([value], dtype=torch.int64).to(torch.int32).view(torch.uint8) \
            if value < 2**31 else torch.tensor([value - 2**32], dtype=torch.int32).view(torch.uint8)
        assert _magic_cleared(stage, bad, host, sizes) == [False, True, False]


def test_a_coded_message_of_the_wrong_length_is_refused_on_the_host():
    buf, sizes = messages([200, 90], 4, 0.3)
    stage = ChunkedStage(TrailingZeros(), chunk=64)
    coded, coded_sizes = stage.encode(buf, sizes)
    host = coded_sizes.tolist()
    with pytest.raises(CorruptPayloadError, match="arrived"):
        stage.decode(coded[:sum(host) - 16], host, sizes)
    with pytest.raises(CorruptPayloadError, match="size table"):
        stage.decode(coded[:sum(host)], [host[0] - 1, host[1] + 1], sizes)
    with pytest.raises(CorruptPayloadError, match="size table"):
        stage.decode(coded[:8], [8, 0], sizes)


def test_the_identity_stage_returns_the_layout_sizes_on_the_device_and_checks_them():
    buf = torch.arange(30, dtype=torch.uint8)
    coded, sizes = IdentityStage().encode(buf, [10, 20])
    assert coded is buf and sizes.tolist() == [10, 20] and sizes.dtype == torch.int64
    out, starts = IdentityStage().decode(buf, [10, 20], [10, 20])
    assert out is buf and starts == [0, 10]
    with pytest.raises(CorruptPayloadError):
        IdentityStage().decode(buf, [12, 18], [10, 20])


def test_the_layouts_kept_are_bounded_and_rebuilt_on_demand(monkeypatch):
    """Bag deduplication changes the message sizes every step: the stage keeps at most MEMO
    geometries, and one dropped is rebuilt alike."""
    monkeypatch.setattr(ChunkedStage, "MEMO", 3)
    stage = ChunkedStage(TrailingZeros(), chunk=64)
    first = None
    for n in range(16, 16 + 10 * 16, 16):
        buf, sizes = messages([n, 40], n, 0.5)
        got, _, _ = round_trip(stage, buf, sizes)
        assert torch.equal(torch.cat(got), buf) and len(stage._geometry_memo) <= 3
        first = first or (buf, sizes)
    got, _, _ = round_trip(stage, *first)
    assert torch.equal(torch.cat(got), first[0])


def test_the_stage_needs_chunks_of_whole_units():
    with pytest.raises(ValueError, match="multiple of 16"):
        ChunkedStage(TrailingZeros(), chunk=100)


def test_without_cuda_the_default_stage_is_the_identity():
    assert isinstance(device_stages.default_stage("cpu"), IdentityStage)
    assert device_stages.nvcomp_ready() == (torch.cuda.is_available() and nvcomp_batched.available())


# ----------------------------------------------------------------------------- nvcomp's C API
needs_library = pytest.mark.skipif(not nvcomp_batched.available(), reason="the nvidia-libnvcomp wheel is absent")


@needs_library
def test_the_binding_matches_nvcomp_6s_structs_and_host_calls():
    assert ctypes.sizeof(nvcomp_batched.CompressOpts) == 64 and ctypes.sizeof(nvcomp_batched.DecompressOpts) == 64
    ans = nvcomp_batched.BatchedAns()
    comp, decomp = ans.alignments()
    assert (comp.input, comp.output) == (16, 16) and (decomp.input, decomp.output) == (16, 16)
    slot = ans.max_out(device_stages.CHUNK)
    assert device_stages.CHUNK < slot < 2 * device_stages.CHUNK  # ANS's worst case: a little over the input
    assert ans.max_out(16) >= 16
    for chunks in (1, 210):
        assert ans.temp_bytes(chunks, device_stages.CHUNK) >= 0
        assert ans.temp_bytes(chunks, device_stages.CHUNK, decompress=True) >= 0
    small = ans._temp(1, device_stages.CHUNK, True, "cpu")  # the scratch: one buffer a direction, grown
    large = ans._temp(210, device_stages.CHUNK, True, "cpu")
    again = ans._temp(1, device_stages.CHUNK, True, "cpu")
    assert len(ans._scratch) == 1 and small.numel() >= 1 and large.numel() >= small.numel()
    assert again.data_ptr() == large.data_ptr()
    for bad in (0, nvcomp_batched.MAX_CHUNK + 1):
        with pytest.raises(ValueError, match="ANS chunks hold"):
            ans.max_out(bad)
    stage = ChunkedStage(ans)
    assert stage.name == "nvcomp-ANS" and stage.slot % ALIGN == 0 and stage.slot >= slot
    one_state = nvcomp_batched.BatchedAns(states_per_lane=1)
    assert one_state.copts.states_per_lane == 1 and one_state.max_out(device_stages.CHUNK) <= slot
    with pytest.raises(ValueError, match="states_per_lane"):
        nvcomp_batched.BatchedAns(states_per_lane=3)


def test_without_the_library_the_binding_says_what_to_install(monkeypatch):
    monkeypatch.setattr(nvcomp_batched, "library", lambda: None)
    assert not nvcomp_batched.available()
    with pytest.raises(ImportError, match="nvidia-libnvcomp-cu13"):
        nvcomp_batched.BatchedAns()


@pytest.mark.cuda
def test_nvcomps_batched_ans_round_trips_on_cuda():  # pragma: no cover - CUDA only
    if not device_stages.nvcomp_ready():
        pytest.skip("nvcomp's library or CUDA is absent")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 6, (300_000,), generator=g).to(torch.uint8)  # skewed bytes, like code planes
    sizes = [100_000, 16, 199_984]
    stage = ChunkedStage(nvcomp_batched.BatchedAns())
    got, coded_sizes, _ = round_trip(stage, codes.cuda(), sizes)
    assert torch.equal(torch.cat(got).cpu(), codes)
    assert sum(coded_sizes) < codes.numel() / 2
    counts = collections.Counter(s % ALIGN for s in coded_sizes)
    assert counts == collections.Counter({0: 3})
