"""Run under torchrun (see test_dedup.py): bag deduplication against the same exchange without
it, in every mode, on tables with repeated ids (single-hot and multi-hot). Forward values must be
bit-identical (every mode but sz, which codes the distinct rows as another array: within its
bound, and mx4, whose groups of 32 values then hold other rows), exact-backward table gradients equal within rtol 1e-6 / atol 1e-9 (float64 tables, so
the tolerance is far above the summation-order differences and catches any wrong gradient), and
the dedup exchange must send fewer bytes. Exits non-zero with a message on any failure."""
import sys

import torch
import torch.distributed as dist

from dlrm_comp.distributed.sharding import place_tables, tables_of
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, ProcessGroupTransport
from dlrm_comp.compress.modes import EXCHANGE_MODES as MODES

BATCH, DIM, TABLES, EB = 36, 8, 5, 0.02


class Bags:
    """Ids of the global batch: tables 0-3 single-hot with few distinct ids, table 4 multi-hot."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.indices, self.offsets = [], []
        for t in range(TABLES - 1):
            self.indices.append(torch.randint(0, 3 + 2 * t, (BATCH,), generator=g))
            self.offsets.append(torch.arange(BATCH))
        sizes = torch.randint(1, 3, (BATCH,), generator=g)
        self.indices.append(torch.randint(0, 3, (int(sizes.sum()),), generator=g))
        self.offsets.append(torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]]))


def tables(mine, seed=11):
    g = torch.Generator().manual_seed(seed)
    all_tables = [torch.nn.EmbeddingBag(16, DIM, mode="sum").double() for _ in range(TABLES)]
    for e in all_tables:
        with torch.no_grad():
            e.weight.copy_(torch.randn(16, DIM, generator=g, dtype=torch.float64))
    return {t: all_tables[t] for t in mine}


def step(ex, mode, bags, mine, dedup):
    emb = tables(mine)
    ex.plan.dedup[:] = [dedup] * TABLES
    pooled = [emb[t](bags.indices[t], bags.offsets[t]) for t in mine]
    sent = []
    send = ex.transport.exchange
    ex.transport.exchange = lambda data, ins, outs, async_op=False: (sent.append(sum(ins) * data.element_size()),
                                                                     send(data, ins, outs, async_op))[1]
    out = ex(pooled, compress=True, bags=bags)
    ex.transport.exchange = send
    g = torch.Generator().manual_seed(3)  # a loss linear in the outputs: gradients independent of the mode
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    loss.backward()
    return [o.detach() for o in out], {t: emb[t].weight.grad for t in mine}, sum(sent)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    owners = place_tables([10 * (t + 1) for t in range(TABLES)], DIM, world, sys.argv[1])
    mine = tables_of(owners, rank)
    bags = Bags()
    for mode in MODES:
        plan = CompressionPlan(DirectionPlan(mode, TABLES, eb_rel=[EB] * TABLES), DirectionPlan("off", TABLES))
        ex = Exchange(ProcessGroupTransport(None, "cpu"), owners, DIM, plan)
        ref, ref_grads, ref_bytes = step(ex, mode, bags, mine, False)
        got, grads, dedup_bytes = step(ex, mode, bags, mine, True)
        for t, (a, b) in enumerate(zip(ref, got)):
            if mode == "sz":
                lo, hi = ex.slice_rows(BATCH)[rank]
                exact = tables(range(TABLES))[t](bags.indices[t], bags.offsets[t]).detach()[lo:hi]
                bound = EB * float(exact.max() - exact.min())
                assert float((b - exact).abs().max()) <= bound, f"{mode}: table {t} beyond its bound"
            elif mode == "mx4":  # groups of 32 consecutive values: other neighbours, within the format's error
                assert float((b - a).abs().max()) <= 0.5 * float(a.abs().max()), f"{mode}: table {t}"
            else:
                assert torch.equal(a, b), f"{mode}: table {t} forward differs with dedup"
        for t in mine:
            assert torch.allclose(grads[t], ref_grads[t], rtol=1e-6, atol=1e-9), f"{mode}: table {t} gradient"
        total = torch.tensor([ref_bytes, dedup_bytes], dtype=torch.float64)
        dist.all_reduce(total)
        assert total[1] < total[0], f"{mode}: dedup sent {total[1]} bytes, without {total[0]}"
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: dedup checks passed")


if __name__ == "__main__":
    main()
