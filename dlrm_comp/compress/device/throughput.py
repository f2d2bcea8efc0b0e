"""Quantize / reconstruct throughput of one implementation on one device: the microbenchmark
``benchmarks/gpu_check.py`` calls to compare the Triton kernels with the torch path and with
``torch.compile`` of it (issue 21's figures: GB/s of float32 input on the Terabyte step, 52
chunks of 1024 x 64).

    quantize_throughput(device="cuda", impl="triton") -> dict

``impl``: ``triton`` (``DLRM_COMP_DEVICE_KERNELS=triton``), ``torch`` (the eager torch path on
CUDA; numba on a CPU float32 batch), ``compile`` (``torch.compile`` of the torch path). Timed
by the codecs' harness (``timing.best_time``: the device's ``Stopwatch``, synchronised before and
after), best of ``rounds`` rounds of ``repeat`` back-to-back calls each, after a warm-up call
(compilation); a device copy of the same tensor is timed beside them.
"""
from __future__ import annotations

import torch

from dlrm_comp.compress import batch_quant as bq
from dlrm_comp.compress.device import device_kernels, launches
from dlrm_comp.compress.timing import best_time

IMPLS = ("triton", "torch", "compile")


def step_batch(device, chunks: int = 52, n: int = 1024 * 64, seed: int = 0) -> torch.Tensor:
    """Gaussian chunks, each with its own scale (10^-3 .. 1), float32 [chunks, n] on ``device``."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (-3.0 * torch.rand(chunks, 1, generator=g))
    return (torch.randn(chunks, n, generator=g) * scale).to(device)


def _quantize(x, eb):
    return bq.quantize_batch(x, eb)


def _reconstruct(q: bq.BatchQuant) -> torch.Tensor:
    return bq.dequantize_planes(q.kind, q.minimum, q.step, q.bits, q.low, q.high, q.x, q.x.dtype)


def _best(fn, device, repeat: int, rounds: int) -> float:
    """Seconds per call: the best round of ``repeat`` back-to-back calls, after a warm-up."""
    fn()  # compilation, allocator
    _, s = best_time(lambda: [fn() for _ in range(repeat)], reps=rounds, device=device)
    return s / repeat


def quantize_throughput(device: str | torch.device = "cuda", impl: str = "triton", chunks: int = 52,
                        n: int = 1024 * 64, eb_rel: float = 0.02, repeat: int = 20, rounds: int = 3,
                        seed: int = 0) -> dict:
    """GB/s (float32 input bytes / second) of ``quantize_batch`` and of the reconstruction from
    the code planes, for ``impl`` in ``IMPLS`` on ``device``; with the seconds per call, the
    GB/s of a device copy of the same tensor (bytes read plus written, as issue 21 counts it),
    the number of QUANT chunks (a sanity check) and the Triton launches of one call of each."""
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r}: expected one of {', '.join(IMPLS)}")
    device = torch.device(device)
    x = step_batch(device, chunks, n, seed)
    eb = torch.full((chunks,), eb_rel, dtype=torch.float64, device=device)
    with device_kernels("torch" if impl == "compile" else impl):
        quant, recon = _quantize, _reconstruct
        if impl == "compile":
            quant, recon = torch.compile(_quantize), torch.compile(_reconstruct)
        with launches.count() as nq:
            q = quant(x, eb)
        with launches.count() as nr:
            recon(q)
        tq = _best(lambda: quant(x, eb), device, repeat, rounds)
        tr = _best(lambda: recon(q), device, repeat, rounds)
    tc = _best(x.clone, device, repeat, rounds)
    nbytes = x.numel() * x.element_size()
    return {"impl": impl, "device": str(device), "shape": [chunks, n], "eb_rel": eb_rel,
            "quant_chunks": int((q.kind == bq.ChunkKind.QUANT).sum()),
            "triton_launches": {"quantize": nq.n, "reconstruct": nr.n},
            "quantize_s": tq, "reconstruct_s": tr, "copy_s": tc,
            "quantize_GBps": nbytes / tq / 1e9, "reconstruct_GBps": nbytes / tr / 1e9,
            "copy_GBps": 2 * nbytes / tc / 1e9}
