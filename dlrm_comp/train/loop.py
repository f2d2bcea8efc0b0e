"""The training loop: read top to bottom, one step at a time.

Batches are a pure function of (split, index), so the data position in a checkpoint is just the
iteration count, and a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dlrm_comp.config import ConfigError, RunConfig, dump_config
from dlrm_comp.distributed.env import DistEnv
from dlrm_comp.train.builders import build_model, build_optimizer, build_source, resolve_device
from dlrm_comp.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from dlrm_comp.train.extension import TrainingExtension
from dlrm_comp.train.logging import MetricsLogger, write_json
from dlrm_comp.train.metrics import classification_metrics


class InterruptedRun(RuntimeError):
    """Raised by the test-only `stop_after` switch to emulate a killed process."""


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path, extensions: Sequence[TrainingExtension] | None = None,
                 resume: bool = False, env: DistEnv | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.env = env or DistEnv()
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.is_main = self.rank == 0
        self.resume = resume
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        if self.env.distributed:
            from dlrm_comp.distributed.env import local_device
            self.device = local_device(self.device, self.env.local_rank)
        self.source = build_source(cfg.data)
        self.iterations = self._resolve_iterations()
        if extensions is None:
            from dlrm_comp.train.compression import extensions_from_config
            extensions = extensions_from_config(cfg, self.source.cardinalities, self.world_size, self.rank)
        self.extensions = list(extensions)
        self.parallel = None
        if self.env.distributed:
            from dlrm_comp.train.parallel import ModelParallel
            compression = next((e for e in self.extensions if e.name == "compression"), None)
            self.parallel = ModelParallel(cfg, self.env, self.source.cardinalities, self.device, compression)
            self.model = self.parallel.model
        else:
            self.model = build_model(cfg, self.source.cardinalities).to(self.device)
        self.exchange = None  # one process: the same exchange as several, over W virtual destinations
        compression = next((e for e in self.extensions if e.name == "compression"), None)
        if self.parallel is None and compression is not None:
            from dlrm_comp.exchange.transport import LoopbackTransport
            self.exchange = compression.build_exchange(LoopbackTransport(cfg.compress.chunks, self.device),
                                                       [0] * len(self.source.cardinalities), cfg.model.emb_dim)
        self.optimizer = build_optimizer(cfg, self.model)
        for ext in self.extensions:
            ext.attach(self.model)
        tag = f".rank{self.rank}" if self.env.distributed else ""
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", keep=cfg.train.keep_checkpoints, tag=tag)
        self.start_iteration = 0
        self.wall_before = 0.0  # wall time of earlier (interrupted) segments of this run
        self.step_times: list[float] = []

    def _resolve_iterations(self) -> int:
        if self.cfg.train.iterations:
            return self.cfg.train.iterations
        n = self.source.num_batches("train", self.cfg.data.batch_size)
        if not n:
            raise ConfigError("train.iterations: 0 means one pass over the training split, "
                              "but this data source is an unbounded stream; set a positive count")
        return n

    # ----------------------------------------------------------------------------- state
    def state_dict(self, iteration: int, wall_s: float) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "wall_s": wall_s,
            "step_times": list(self.step_times),
            "config": self.cfg.to_dict(),
            "world_size": self.world_size,
            "extensions": {ext.name: ext.state_dict() for ext in self.extensions},
        }

    def _restore(self) -> None:
        path = self.checkpoints.latest()
        if self.parallel is not None:  # resume from the newest iteration every rank has saved
            import torch.distributed as dist
            mine = self.checkpoints.iterations()
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, mine)
            common = set.intersection(*(set(x) for x in everyone))
            path = self.checkpoints.path_for(max(common)) if common else None
        if path is None:
            if self.is_main:
                print(f"--resume: no checkpoint in {self.checkpoints.directory}; starting from scratch")
            return
        state = CheckpointManager.load(path)
        if state.get("world_size", 1) != self.world_size:
            raise ConfigError(f"--resume: the checkpoint was written by {state.get('world_size', 1)} process(es), "
                              f"this run has {self.world_size}; resume at the same world size")
        self._check_compatible(state["config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        for ext in self.extensions:
            ext.load_state_dict(state["extensions"].get(ext.name, {}))
        self.start_iteration = state["iteration"]
        self.wall_before = state["wall_s"]
        self.step_times = list(state["step_times"])
        if self.is_main:
            MetricsLogger.truncate_after(self.out_dir, self.start_iteration)
            print(f"resumed from {path} at iteration {self.start_iteration}")

    def _check_compatible(self, saved: dict) -> None:
        """A checkpoint only continues the run it came from: same data, model and optimizer."""
        now = self.cfg.to_dict()
        for section in ("data", "model"):
            if saved[section] != now[section]:
                diff = sorted(k for k in now[section] if saved[section].get(k) != now[section][k])
                raise ConfigError(f"--resume: the checkpoint was written with different {section}.* settings "
                                  f"({', '.join(f'{section}.{k}' for k in diff)}); use a new --out directory")
        for key in ("optimizer", "lr", "sparse_embedding_grads", "seed"):
            if saved["train"][key] != now["train"][key]:
                raise ConfigError(f"--resume: train.{key} differs from the checkpoint "
                                  f"({saved['train'][key]!r} vs {now['train'][key]!r})")

    # ----------------------------------------------------------------------------- steps
    def train_step(self, iteration: int) -> float:
        batch = self.source.batch("train", iteration, self.cfg.data.batch_size).to(self.device)
        self.model.train()
        logits, labels = self._forward(batch, training=True)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at iteration {iteration}: "
                                     "lower train.lr or check the input data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _forward(self, batch, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.parallel is not None:
            return self.parallel.forward(batch, training)
        if self.exchange is not None and training:  # evaluation batches are never compressed
            pooled = self.exchange(self.model.tap(self.model.lookup(batch.indices, batch.offsets)), compress=True)
            return self.model.head(batch.dense, pooled), batch.labels
        return self.model(batch.dense, batch.indices, batch.offsets), batch.labels

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics on the held-out split; the compression hooks bypass evaluation batches."""
        self.model.eval()
        size = self.cfg.data.eval_batch_size
        n = self.source.num_batches(split, size) or 0
        if self.cfg.train.eval_batches:
            n = min(n, self.cfg.train.eval_batches)
        if n == 0:
            raise ConfigError(f"data.eval_batch_size: the {split} split has no full batch of {size}; lower it")
        logits, labels = [], []
        for i in range(n):
            batch = self.source.batch(split, i, size).to(self.device)
            out, lab = self._forward(batch, training=False)
            if self.parallel is not None:
                out, lab = self.parallel.gather(out.float()), self.parallel.gather(lab.float())
            logits.append(out.float().cpu())
            labels.append(lab.cpu())
        return classification_metrics(torch.cat(logits).numpy(), torch.cat(labels).numpy())

    # ----------------------------------------------------------------------------- run
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to `train.iterations`; `stop_after` (tests only) raises mid-run like a kill would."""
        cfg = self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._restore()
        elif self.is_main and (self.out_dir / "metrics.jsonl").exists():
            (self.out_dir / "metrics.jsonl").unlink()
        if self.is_main:
            dump_config(self.cfg, self.out_dir / "config.yaml")
        logger = MetricsLogger(self.out_dir, tensorboard=cfg.tensorboard, enabled=self.is_main)
        self.log = logger.log
        for ext in self.extensions:
            ext.bind(self)
        echo = tqdm.write if cfg.progress else print
        t0 = time.perf_counter()
        losses: list[float] = []
        interval_times: list[float] = []
        bar = tqdm(total=self.iterations, initial=self.start_iteration, disable=not (cfg.progress and self.is_main),
                   desc="train", unit="it", dynamic_ncols=True, mininterval=1.0)
        try:
            for t in range(self.start_iteration, self.iterations):
                for ext in self.extensions:
                    ext.before_step(t)
                s0 = time.perf_counter()
                losses.append(self.train_step(t))
                dt = time.perf_counter() - s0
                self.step_times.append(dt)
                interval_times.append(dt)
                bar.update(1)
                done = t + 1
                if done % cfg.print_every == 0 or done == self.iterations:
                    mean_step = float(np.mean(interval_times))
                    mean_loss = float(np.mean(losses))
                    if self.parallel is not None:
                        mean_loss = self.parallel.mean(mean_loss)
                    logger.log("train", done, loss=mean_loss, step_s=mean_step,
                               samples_per_s=self.cfg.data.batch_size / mean_step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    for ext in self.extensions:
                        ext.on_interval(done, logger.log, echo)
                    losses, interval_times = [], []
                if cfg.eval_every and done % cfg.eval_every == 0 and done != self.iterations:
                    metrics = self.evaluate()
                    logger.log("eval", done, **metrics)
                    echo(f"[eval] iteration {done}: auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
                         f"accuracy {metrics['accuracy']:.4f}")
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != self.iterations:
                    self._save(done, t0)
                if stop_after is not None and done >= stop_after:
                    raise InterruptedRun(f"stopped after iteration {done}")
                self._maybe_inject_failure(done)
            bar.close()
            final = self.evaluate()
            logger.log("eval", self.iterations, **final)
            wall_s = self.wall_before + time.perf_counter() - t0
            self._save(self.iterations, t0)
            summary = self._summary(final, wall_s)
            if self.is_main:
                write_json(self.out_dir / "summary.json", summary)
            return summary
        finally:
            bar.close()
            logger.close()

    def _maybe_inject_failure(self, done: int) -> None:
        """Fault injection for the multi-process tests: DLRM_COMP_FAIL_AT=N [DLRM_COMP_FAIL_RANK=r]
        makes rank r (default 0) raise after iteration N, as a crashed worker would."""
        fail_at = os.environ.get("DLRM_COMP_FAIL_AT")
        if fail_at and done == int(fail_at) and self.rank == int(os.environ.get("DLRM_COMP_FAIL_RANK", "0")):
            raise RuntimeError(f"injected failure on rank {self.rank} after iteration {done} (DLRM_COMP_FAIL_AT)")

    def _save(self, iteration: int, t0: float) -> None:
        if self.is_main or self.parallel is not None:  # every rank saves the tables it owns
            self.checkpoints.save(iteration, self.state_dict(iteration, self.wall_before + time.perf_counter() - t0))

    def _summary(self, final: dict[str, float], wall_s: float) -> dict[str, Any]:
        step_s_mean = float(np.mean(self.step_times)) if self.step_times else math.nan
        summary: dict[str, Any] = {
            "name": self.cfg.name,
            "final_eval": final,
            "bayes_auc": self._bayes_auc(),
            "iterations": self.iterations,
            "wall_s": wall_s,
            "samples_per_s": self.cfg.data.batch_size / step_s_mean if self.step_times else math.nan,
            "step_s_mean": step_s_mean,
            "world_size": self.world_size,
            "device": str(self.device),
            "data": self.source.describe(),
        }
        for ext in self.extensions:
            summary.update(ext.summary())
        return summary

    def _bayes_auc(self) -> float | None:
        bayes = getattr(self.source, "bayes_auc", None)
        return float(bayes("val")) if callable(bayes) else None
