"""One rank of the link benchmark, started by torchrun inside its namespace.

Trains exactly as ``launch/train.py`` does, and at every print interval reads the byte counter
of this rank's veth (``LINK_DEV``, the root qdisc's ``tc -s`` bytes: this end's egress, headers
included), the bytes it sent uncompressed to its own node's ranks and the bytes its allreduce
hook handed to DDP's allreduce (``dist.allreduce_compression``), so the benchmark can set the bytes that crossed the link during the measured steps
against the bytes the recorder reports. Writes ``link.rank{r}.json`` in the run directory.

    torchrun --nnodes=2 --node_rank=R ... link_worker.py --config C.yaml --set k=v ... --out DIR
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dlrm_comp.bench.netns import qdisc_bytes  # noqa: E402
from dlrm_comp.config import ConfigError, load_config  # noqa: E402
from dlrm_comp.train.extension import TrainingExtension  # noqa: E402
from dlrm_comp.train.logging import write_json  # noqa: E402


class LinkCounter(TrainingExtension):
    """Reads the veth's byte counter at each print interval (after the train record and the
    compression statistics of that interval: the measured steps lie between two readings)."""

    name = "link_counter"

    def __init__(self, dev: str, out_dir: Path):
        self.dev, self.out_dir = dev, Path(out_dir)
        self.counts: list[list[int]] = []
        self.trainer = None

    def bind(self, trainer) -> None:
        self.trainer = trainer

    def on_interval(self, iteration, log, echo) -> None:
        exchange = getattr(self.trainer.compression, "exchange", None)
        local = exchange.bytes_local if exchange is not None else 0  # compress.peers=inter_node's, never on the link
        hook = next((e for e in self.trainer.extensions if e.name == "allreduce"), None)
        allreduce = hook.bytes_sent if hook is not None else None  # what dist.allreduce_compression handed over
        policy = getattr(self.trainer.compression, "peer_policy", None)  # compress.peers=auto's link probes
        probe = policy.probe_sent["remote"] if policy is not None else 0
        self.counts.append([int(iteration), qdisc_bytes(self.dev), int(local), allreduce, int(probe)])

    def summary(self) -> dict:
        t = self.trainer
        head = t.parallel.head if t.parallel is not None else t.model
        dense = sum(p.numel() * p.element_size() for p in head.parameters())
        write_json(self.out_dir / f"link.rank{t.rank}.json",
                   {"rank": t.rank, "dev": self.dev, "dense_param_bytes": int(dense), "counts": self.counts,
                    "tables": len(t.source.cardinalities), "batch_size": t.cfg.data.batch_size,
                    "emb_dim": t.cfg.model.emb_dim})
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--set", nargs="+", default=[], dest="overrides")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    dev = os.environ.get("LINK_DEV", "")
    if not dev:
        print("LINK_DEV: not set; the benchmark sets it to this namespace's veth", file=sys.stderr)
        return 2
    from dlrm_comp.distributed.env import init_distributed, shutdown
    from dlrm_comp.train.builders import resolve_device
    from dlrm_comp.train.loop import Trainer
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.dist.backend, resolve_device(cfg.train.device), cfg.dist.timeout_s)
        trainer = Trainer(cfg, args.out, env=env, overwrite=True)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    trainer.extensions.append(LinkCounter(dev, Path(args.out)))
    trainer.run()
    shutdown(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
