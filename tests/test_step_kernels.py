"""A constant number of kernels per exchange, whatever the number of tables (held on the CPU).

Every non-view aten op the exchange dispatches in one forward and one backward is counted (on a
GPU each is a kernel launch); the count with 12 tables must equal the count with 3. Both the CPU
path (numba's fused loops) and the device path (torch ops: numba switched off) are held."""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dlrm_comp.compress import cpu_kernels
from dlrm_comp.data.batch import Batch
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange
from dlrm_comp.exchange.transport import LoopbackTransport
from dlrm_comp.recorder import CompressionRecorder

BATCH, DIM, DESTINATIONS = 64, 8, 2


class Kernels(TorchDispatchMode):
    """Counts the ops that would launch work on a device (views and detach launch nothing)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func is not torch.ops.aten.detach.default:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def kernels(fwd: str, bwd: str, dedup: bool, tables: int) -> tuple[collections.Counter, collections.Counter]:
    plan = CompressionPlan(DirectionPlan(fwd, tables, eb_rel=[0.02] * tables),
                           DirectionPlan(bwd, tables, eb_rel=[0.02] * tables))
    plan.dedup = [dedup] * tables
    exchange = Exchange(LoopbackTransport(DESTINATIONS, "cpu"), [0] * tables, DIM, plan, CompressionRecorder(tables))
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 40, (BATCH,), generator=g) for _ in range(tables)]  # repeats, unequal distinct rows
    bags = Batch(torch.zeros(BATCH, 1), ids, [torch.arange(BATCH)] * tables, torch.zeros(BATCH))
    base = torch.randn(tables, BATCH, DIM, generator=g).requires_grad_()
    return count_kernels(exchange, base, bags)


def count_kernels(exchange: Exchange, base: torch.Tensor, bags) -> tuple[collections.Counter, collections.Counter]:
    """The ops of one forward and one backward through ``exchange``, after two steps that build
    and cache what later steps reuse."""
    for _ in range(2):
        exchange(list(base.unbind(0)), compress=True, bags=bags)
    with Kernels() as forward:
        out = exchange(list(base.unbind(0)), compress=True, bags=bags)
    loss = torch.cat(out).sum()
    with Kernels() as backward:
        loss.backward()
    return forward.ops, backward.ops


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-loops", "torch-ops"])
@pytest.mark.parametrize("fwd,bwd,dedup", [
    ("off", "off", False), ("off", "off", True), ("simulate", "simulate", True), ("codec", "off", False),
    ("codec", "codec", False), ("codec", "fp16", True), ("fp8", "fp8", True), ("int8", "bf16", False),
    ("mx4", "mx4", True)])
def test_the_exchange_launches_as_many_kernels_for_12_tables_as_for_3(monkeypatch, fwd, bwd, dedup, device_path):
    if device_path:
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    few_fwd, few_bwd = kernels(fwd, bwd, dedup, 3)
    many_fwd, many_bwd = kernels(fwd, bwd, dedup, 12)
    assert many_fwd == few_fwd, (many_fwd - few_fwd, few_fwd - many_fwd)
    assert many_bwd == few_bwd, (many_bwd - few_bwd, few_bwd - many_bwd)
