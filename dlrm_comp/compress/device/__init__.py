"""Fused device kernels (Triton) for the per-step transforms, and the one switch that picks them.

Why: on CUDA the torch path of the quantizer is 151 small kernels per call (launch-bound: 7.9
GB/s on the Terabyte step); these kernels do the same arithmetic in a constant number of
launches per call, whatever the number of chunks. The CPU keeps its numba loops.

The switch is the environment variable ``DLRM_COMP_DEVICE_KERNELS`` (read at every call, so a
benchmark can flip it in-process, or through ``device_kernels(...)``):

* ``auto`` (default): Triton for CUDA tensors when triton imports; the existing paths elsewhere.
* ``triton``: Triton for every tensor; CPU tensors run through Triton's interpreter, which needs
  ``TRITON_INTERPRET=1`` in the environment before the kernels are first imported (tests).
* ``torch``: never Triton (the torch path on CUDA, numba on the CPU): the baseline to compare.

``launches.count()`` counts the Triton launches of a block of code (every launch goes through
``launches.launch``), so a test can hold the count constant in the number of chunks.
"""
from __future__ import annotations

import contextlib
import os

import torch

ENV = "DLRM_COMP_DEVICE_KERNELS"
CHOICES = ("auto", "triton", "torch")
_available: bool | None = None


def available() -> bool:
    """True when triton imports (cached)."""
    global _available
    if _available is None:
        try:
            import triton  # noqa: F401
            _available = True
        except Exception:  # ImportError, or a broken install on a host without a driver
            _available = False
    return _available


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def use_triton(x: torch.Tensor) -> bool:
    """Whether the transform of ``x`` runs through the Triton kernels (see the module docstring).
    On every quantize/encode call: the default case is one environment lookup."""
    raw = os.environ.get(ENV)
    mode = "auto" if raw is None else choice()
    if mode == "torch":
        return False
    if mode == "auto":
        return x.is_cuda and available()
    if not available():
        raise RuntimeError(f"{ENV}=triton but triton does not import (pip install triton)")
    if x.device.type == "cpu" and not interpreting():
        raise RuntimeError(f"{ENV}=triton on a CPU tensor needs TRITON_INTERPRET=1 (Triton's interpreter)")
    return True


@contextlib.contextmanager
def device_kernels(mode: str):
    """Run a block with ``DLRM_COMP_DEVICE_KERNELS=mode`` (restored after)."""
    if mode not in CHOICES:
        raise ValueError(f"device kernels {mode!r}: expected one of {', '.join(CHOICES)}")
    old = os.environ.get(ENV)
    os.environ[ENV] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
