"""nvcomp's low-level batched ANS (``nvcompBatchedANSCompressAsync`` / ``DecompressAsync``) through
ctypes, for the device message path's lossless stage (``device_stages.ChunkedStage``).

Why the C API and not nvcomp's Python ``Codec``: the batched C calls take the chunks' pointers
and sizes as device arrays and write the coded sizes to a device array, launching on the
caller's stream without waiting for it, so a direction's coded sizes go straight into the size
all-to-all and the direction keeps its one host read (the receive splits; issue 21). The Python
API returns arrays whose sizes are read on the host, a second read.

The library is ``libnvcomp.so.6`` from the ``nvidia-libnvcomp-cu13`` wheel (the ``gpu`` extra pulls
it in; the ``dev`` extra too, so the CPU suite checks the binding's host calls: option structs,
alignments, output bounds and scratch sizes need no GPU). The compress and decompress calls need
CUDA tensors.
"""
from __future__ import annotations

import ctypes
import functools

import torch

SUCCESS = 0


class CompressOpts(ctypes.Structure):
    """``nvcompBatchedANSCompressOpts_t`` (ans.h, nvcomp 6.0): 64 bytes, unused bytes zero."""

    _fields_ = [("type", ctypes.c_int), ("data_type", ctypes.c_int), ("max_sub_chunk_count", ctypes.c_uint8),
                ("states_per_lane", ctypes.c_uint8), ("histogram_reduction_log2", ctypes.c_uint8),
                ("reserved", ctypes.c_char * 53)]


class DecompressOpts(ctypes.Structure):
    """``nvcompBatchedANSDecompressOpts_t``: backend default, data type read from the stream."""

    _fields_ = [("backend", ctypes.c_int), ("data_type", ctypes.c_int), ("max_sub_chunk_count", ctypes.c_uint8),
                ("states_per_lane", ctypes.c_uint8), ("skip_validate", ctypes.c_uint8), ("reserved", ctypes.c_char * 53)]


class Alignments(ctypes.Structure):
    """``nvcompAlignmentRequirements_t``."""

    _fields_ = [("input", ctypes.c_size_t), ("output", ctypes.c_size_t), ("temp", ctypes.c_size_t)]


TYPE_UCHAR, TYPE_BITS = 1, 0xFF  # nvcompType_t: bytes in; the decoder reads the type from the stream
MAX_CHUNK = 1 << 24  # nvcompANSCompressionMaxAllowedChunkSize


@functools.lru_cache(maxsize=1)
def library():
    """``libnvcomp.so.6`` as a ctypes library, or None where the wheel is absent."""
    try:
        from nvidia.libnvcomp import load_library  # type: ignore
        lib = load_library()
    except Exception:  # noqa: BLE001 - ImportError, or a loader error on an odd host
        return None
    return _declare(lib) if lib is not None else None


def _declare(lib):
    size_t, vp, st = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int
    sizep = ctypes.POINTER(size_t)
    lib.nvcompBatchedANSCompressGetRequiredAlignments.argtypes = [CompressOpts, ctypes.POINTER(Alignments)]
    lib.nvcompBatchedANSDecompressGetRequiredAlignments.argtypes = [DecompressOpts, ctypes.POINTER(Alignments)]
    lib.nvcompBatchedANSCompressGetMaxOutputChunkSize.argtypes = [size_t, CompressOpts, sizep]
    lib.nvcompBatchedANSCompressGetTempSize.argtypes = [size_t, size_t, CompressOpts, sizep, size_t, vp]
    lib.nvcompBatchedANSDecompressGetTempSize.argtypes = [size_t, size_t, DecompressOpts, sizep, size_t, vp]
    lib.nvcompBatchedANSCompressAsync.argtypes = [vp, vp, size_t, size_t, vp, size_t, vp, vp, CompressOpts, vp, vp]
    lib.nvcompBatchedANSDecompressAsync.argtypes = [vp, vp, vp, vp, size_t, vp, size_t, vp, DecompressOpts, vp, vp]
    for name in ("nvcompBatchedANSCompressGetRequiredAlignments", "nvcompBatchedANSDecompressGetRequiredAlignments",
                 "nvcompBatchedANSCompressGetMaxOutputChunkSize", "nvcompBatchedANSCompressGetTempSize",
                 "nvcompBatchedANSDecompressGetTempSize", "nvcompBatchedANSCompressAsync",
                 "nvcompBatchedANSDecompressAsync"):
        getattr(lib, name).restype = st
    return lib


def available() -> bool:
    return library() is not None


def _check(status: int, call: str) -> None:
    if status != SUCCESS:
        raise RuntimeError(f"nvcomp {call} returned status {status}")


class BatchedAns:
    """nvcomp's ANS over a batch of equal-stride chunks: ``compress`` codes row i of a
    ``[N, chunk]`` uint8 tensor (its first ``nbytes[i]`` bytes) into row i of ``[N, slot]``;
    ``decompress`` the reverse from any device offsets. Every size and status stays on the device;
    both launch on the current stream and return at once (the pointer and size arrays they read
    are freed into torch's caching allocator, which reuses them only for later work on that
    stream)."""

    name = "nvcomp-ANS"

    def __init__(self, states_per_lane: int = 0):
        """``states_per_lane``: nvcomp's interleaved rANS states (0: its default, two; 1: one,
        128 bytes less per sub-chunk, slower); ``gpu_check.py`` measures both."""
        lib = library()
        if lib is None:
            raise ImportError("nvcomp's batched ANS needs the nvidia-libnvcomp-cu13 wheel (the gpu extra)")
        if states_per_lane not in (0, 1, 2):
            raise ValueError(f"states_per_lane: 0 (nvcomp's default), 1 or 2, got {states_per_lane}")
        self.lib = lib
        self.copts = CompressOpts(0, TYPE_UCHAR, 0, states_per_lane, 0)
        self.dopts = DecompressOpts(0, TYPE_BITS, 0, 0, 0)
        self._scratch: dict = {}

    def alignments(self) -> tuple[Alignments, Alignments]:
        c, d = Alignments(), Alignments()
        _check(self.lib.nvcompBatchedANSCompressGetRequiredAlignments(self.copts, ctypes.byref(c)), "alignments")
        _check(self.lib.nvcompBatchedANSDecompressGetRequiredAlignments(self.dopts, ctypes.byref(d)), "alignments")
        return c, d

    def max_out(self, chunk: int) -> int:
        """The most bytes a chunk of ``chunk`` bytes codes to (its output slot)."""
        if not 0 < chunk <= MAX_CHUNK:
            raise ValueError(f"nvcomp ANS chunks hold 1 to {MAX_CHUNK} bytes, got {chunk}")
        out = ctypes.c_size_t()
        _check(self.lib.nvcompBatchedANSCompressGetMaxOutputChunkSize(chunk, self.copts, ctypes.byref(out)),
               "max output size")
        return int(out.value)

    def temp_bytes(self, chunks: int, chunk: int, decompress: bool = False) -> int:
        out = ctypes.c_size_t()
        if decompress:
            status = self.lib.nvcompBatchedANSDecompressGetTempSize(chunks, chunk, self.dopts, ctypes.byref(out),
                                                                    chunks * chunk, None)
        else:
            status = self.lib.nvcompBatchedANSCompressGetTempSize(chunks, chunk, self.copts, ctypes.byref(out),
                                                                  chunks * chunk, None)
        _check(status, "scratch size")
        return int(out.value)

    def _temp(self, chunks: int, chunk: int, decompress: bool, device) -> torch.Tensor:
        """nvcomp's scratch for this call: one buffer per direction and device, grown when a
        call needs more (the chunk count moves from step to step with bag deduplication)."""
        need = max(self.temp_bytes(chunks, chunk, decompress), 1)
        key = (decompress, str(device))
        t = self._scratch.get(key)
        if t is None or t.numel() < need:
            t = self._scratch[key] = torch.empty(need, dtype=torch.uint8, device=device)
        return t[:need]

    @staticmethod
    def _rows(t: torch.Tensor) -> torch.Tensor:
        """The device array of row pointers of a 2-D tensor (one small device op)."""
        return t.data_ptr() + torch.arange(t.shape[0], device=t.device, dtype=torch.int64) * t.stride(0)

    def compress(self, src: torch.Tensor, nbytes: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Code ``src[i, :nbytes[i]]`` into ``dst[i]``; -> the coded sizes ``[N]`` int64 (device).
        A chunk whose status is not success gets size 0 (its receiver flags the message)."""
        n, chunk = src.shape
        dev = src.device
        in_ptrs, out_ptrs = self._rows(src), self._rows(dst)
        in_bytes = nbytes.to(torch.int64).contiguous()
        out_bytes = torch.empty(n, dtype=torch.int64, device=dev)
        status = torch.empty(n, dtype=torch.int32, device=dev)
        temp = self._temp(n, chunk, False, dev)
        stream = torch.cuda.current_stream(dev).cuda_stream
        _check(self.lib.nvcompBatchedANSCompressAsync(in_ptrs.data_ptr(), in_bytes.data_ptr(), chunk, n,
                                                      temp.data_ptr(), temp.numel(), out_ptrs.data_ptr(),
                                                      out_bytes.data_ptr(), self.copts, status.data_ptr(), stream),
               "compress")
        return torch.where(status == SUCCESS, out_bytes, 0)

    def decompress(self, src: torch.Tensor, offsets: torch.Tensor, nbytes: torch.Tensor, dst: torch.Tensor,
                   expect: torch.Tensor) -> torch.Tensor:
        """Decode the chunks at ``src[offsets[i]:offsets[i] + nbytes[i]]`` into ``dst[i]`` (rows of
        ``dst.shape[1]`` bytes); -> ``[N]`` bool, True where the chunk decoded to ``expect[i]`` bytes."""
        n, chunk = dst.shape
        dev = dst.device
        in_ptrs = src.data_ptr() + offsets.to(torch.int64)
        in_bytes = nbytes.to(torch.int64).contiguous()
        out_ptrs = self._rows(dst)
        room = torch.full((n,), chunk, dtype=torch.int64, device=dev)
        got = torch.empty(n, dtype=torch.int64, device=dev)
        status = torch.empty(n, dtype=torch.int32, device=dev)
        temp = self._temp(n, chunk, True, dev)
        stream = torch.cuda.current_stream(dev).cuda_stream
        _check(self.lib.nvcompBatchedANSDecompressAsync(in_ptrs.data_ptr(), in_bytes.data_ptr(), room.data_ptr(),
                                                        got.data_ptr(), n, temp.data_ptr(), temp.numel(),
                                                        out_ptrs.data_ptr(), self.dopts, status.data_ptr(), stream),
               "decompress")
        return (status == SUCCESS) & (got == expect)
