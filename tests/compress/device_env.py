"""Where the Triton kernel tests run: on a host without CUDA, on CPU tensors through Triton's
interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before anything imports triton,
and here again for a module run on its own); on a CUDA host, compiled, on CUDA tensors (those
tests carry the ``cuda`` marker). Import this first."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton does not import (the dev extra installs it)",
                             exc_type=ImportError)

from dlrm_comp.compress import device  # noqa: E402

INTERPRET = device.interpreting()
DEV = torch.device("cpu" if INTERPRET else "cuda")
# compiled kernels need a GPU; the interpreter runs anywhere
MARKS = [pytest.mark.cuda] if DEV.type == "cuda" else []


def on_dev(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEV)
