"""Run under torchrun (see test_torchrec.py): our Exchange as the output dist of TorchRec's
sharded EmbeddingBagCollection, against TorchRec's own output dist on the same batch.

1. codec forward: every received value within its table's bound of the exact value (the bound
   relative to the range of the chunk this rank received), and something was compressed;
2. exact forward and backward through our output dist: after one SGD step, every table and the
   dense part equal those of TorchRec's native output dist.
The plans to check are the arguments (default: ours); one launch checks each in turn, on the one
process group. Exits non-zero with a message on any failure."""
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dlrm_comp.config import load_config
from dlrm_comp.distributed.env import DistEnv
from dlrm_comp.model.torchrec_backend import batch_to_kjt, feature_name
from dlrm_comp.train.builders import build_optimizer, build_source
from dlrm_comp.train.compression import extensions_from_config
from dlrm_comp.train.torchrec_parallel import TorchrecModelParallel

OVERRIDES = ["data.profile=kaggle", "data.max_ind_range=500", "data.batch_size=64", "model.emb_dim=8",
             "model.bottom_mlp=13-16-8", "model.top_mlp=16-1", "model.backend=torchrec", "train.device=cpu",
             "compress.table_preset=kaggle_ref", "compress.decay.func=none"]


def build(mode: str, plan: str):
    cfg = load_config([], [*OVERRIDES, f"compress.mode={mode}", f"dist.torchrec_plan={plan}"])
    source = build_source(cfg.data)
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), launcher="torchrun", backend="gloo")
    exts = extensions_from_config(cfg, source.cardinalities, env.world_size, env.rank)
    parallel = TorchrecModelParallel(cfg, env, source.cardinalities, torch.device("cpu"), exts)
    for ext in exts:
        ext.before_step(0)
    optimizer = parallel.wrap_optimizer(build_optimizer(cfg, parallel.model))
    return cfg, source, parallel, optimizer, exts


def received(parallel, local) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in parallel.dmp(batch_to_kjt(local)).to_dict().items()}


def main() -> None:
    dist.init_process_group("gloo")
    for plan in sys.argv[1:] or ["ours"]:
        check(plan)
    dist.barrier()
    dist.destroy_process_group()


def check(plan: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, source, ours, opt_ours, exts = build("codec", plan)
    batch = source.batch("train", 3, cfg.data.batch_size)
    per = cfg.data.batch_size // world
    local = batch.slice(rank * per, (rank + 1) * per)
    # 1. the bound, per table, relative to the range of the chunk this rank received
    ours.output_dist.compress = False
    exact = received(ours, local)
    ours.output_dist.compress = True
    lossy = received(ours, local)
    bounds = exts[0].plan.fwd.eb_rel
    changed = 0
    for t in range(len(source.cardinalities)):
        want, got = exact[feature_name(t)], lossy[feature_name(t)]
        eb_abs = bounds[t] * float(want.max() - want.min())
        err = float((got - want).abs().max())
        assert err <= eb_abs, f"rank {rank} table {t}: error {err} > bound {eb_abs}"
        changed += int(err > 0)
    assert changed > 0, "nothing was compressed"
    # 2. exact through our output dist == TorchRec's own output dist, forward and one SGD step
    _, _, native, opt_native, _ = build("off", plan)
    assert native.output_dist is None and native.owners == ours.owners
    before = native.model.state_dict()
    for parallel, optimizer in ((ours, opt_ours), (native, opt_native)):
        parallel.model.train()
        logits, labels = parallel.forward(batch, training=False)  # training=False: exact exchange
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    a, b = ours.model.state_dict(), native.model.state_dict()
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-7), f"rank {rank} {key}: {(a[key] - b[key]).abs().max()}"
    assert not all(torch.equal(before[k], b[k]) for k in b if k.startswith("embeddings.")), "no table trained"
    dist.barrier()
    print(f"rank {rank}: torchrec exchange checks passed ({plan} plan, owners {ours.owners})")


if __name__ == "__main__":
    main()
