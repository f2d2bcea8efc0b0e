"""Run under torchrun (see test_distributed.py): checks one compressed all-to-all against the
exact one on known tensors. Exits non-zero with a message on any failure."""
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from dlrm_comp.distributed.sharding import place_tables, tables_of
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, ProcessGroupTransport
from dlrm_comp.recorder import CompressionRecorder

BATCH, DIM, TABLES, EB = 24, 8, 5, 0.02


def pooled_of(table: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + table)
    return (torch.randn(BATCH, DIM, generator=g) * (table + 1) + table).requires_grad_()


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))  # a rank that blocks fails, not hangs
    rank, world = dist.get_rank(), dist.get_world_size()
    owners = place_tables([10 * (t + 1) for t in range(TABLES)], DIM, world, sys.argv[1])
    mine = tables_of(owners, rank)
    transport = ProcessGroupTransport(None, "cpu")
    exact = Exchange(transport, owners, DIM)
    recorder = CompressionRecorder(TABLES)
    plan = CompressionPlan(DirectionPlan("codec", TABLES, eb_rel=[EB] * TABLES), DirectionPlan("off", TABLES))
    lossy = Exchange(ProcessGroupTransport(None, "cpu"), owners, DIM, plan, recorder)
    wire = []
    send = lossy.transport.exchange
    lossy.transport.exchange = lambda data, ins, outs, async_op=False: (wire.append(sum(ins)), send(data, ins, outs,
                                                                                                  async_op))[1]
    pooled = [pooled_of(t) for t in mine]
    ref = exact(pooled, compress=False)
    got = lossy(pooled, compress=True)
    rows = exact.slice_rows(BATCH)
    a, b = rows[rank]
    for t in range(TABLES):
        want = pooled_of(t).detach()[a:b]
        assert torch.equal(ref[t], want), f"exact exchange differs for table {t}"
        eb_abs = EB * float(want.max() - want.min())
        err = float((got[t] - want).abs().max())
        assert err <= eb_abs, f"table {t}: error {err} > bound {eb_abs}"
    # bytes: what the recorder counted equals the message bytes this rank sent to every destination
    recorder.flush(1, lambda *a, **k: None)
    counted = sum(v.bytes_sent for (t, d), v in recorder.total.items() if d == "fwd")
    assert abs(counted - sum(wire)) < 1e-6 * sum(wire), f"recorded {counted} bytes, messages are {sum(wire)}"
    # backward (exact): with each rank's loss a mean over its slice, owners get d(mean over B)
    loss = sum((g * (t + 1)).sum() for t, g in enumerate(ref)) / (b - a)
    loss.backward()
    for t, p in zip(mine, pooled):
        assert torch.allclose(p.grad, torch.full_like(p.grad, (t + 1) / BATCH)), f"grad of table {t}"
    # Req/Wait: starting an exchange waits for no peer (the sizes and the bytes are in flight):
    # rank 0 starts before the others have even begun, then lets them begin; same result
    for p in pooled:
        p.grad = None
    later = dist.new_group(backend="gloo", timeout=timedelta(seconds=90))
    if rank == 0:
        pending = lossy.start(pooled, compress=True)
        dist.barrier(group=later)
    else:
        dist.barrier(group=later)
        pending = lossy.start(pooled, compress=True)
    again = pending.wait()
    assert all(torch.equal(x, y) for x, y in zip(again, got)), "a started exchange differs from one call"
    loss = sum((g * (t + 1)).sum() for t, g in enumerate(again)) / (b - a)
    loss.backward()  # the split backward: launched by the Wait node, finished by the Req node
    for t, p in zip(mine, pooled):
        assert torch.allclose(p.grad, torch.full_like(p.grad, (t + 1) / BATCH)), f"split backward: grad of table {t}"
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: exchange checks passed")


if __name__ == "__main__":
    main()
