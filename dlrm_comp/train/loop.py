"""The training loop: read top to bottom, one step at a time.

Batches are a pure function of (split, index), so the data position in a checkpoint is just the
iteration count, and a resumed run sees exactly the batches an uninterrupted one would (past one
epoch of a bounded split too: `EpochSchedule` maps an iteration to its batch). A run directory
belongs to one run: a fresh run refuses a directory holding another run's checkpoints, and
`--resume` refuses a checkpoint whose run identity (config, world size) differs.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dlrm_comp.config import ConfigError, RunConfig, dump_config
from dlrm_comp.data.batch import concat_batches
from dlrm_comp.data.device_input import DeviceInput
from dlrm_comp.data.epochs import EpochSchedule
from dlrm_comp.distributed.env import DistEnv
from dlrm_comp.progress import progress_bar
from dlrm_comp.train.breakdown import StepBreakdown, TimedExchange
from dlrm_comp.train.builders import build_model, build_optimizer, build_source, resolve_device
from dlrm_comp.train.checkpoint import CheckpointError, CheckpointManager, checkpoint_layouts, rng_state, set_rng_state
from dlrm_comp.train.extension import TrainingExtension
from dlrm_comp.train.identity import check_data_identity, check_resume_identity, check_shapes, data_fingerprint
from dlrm_comp.train.logging import MetricsLogger, torn_eval_iteration, write_json
from dlrm_comp.metrics import classification_metrics
from dlrm_comp.train.signals import RunStopped, StopFlag

# files of a finished or running run that a fresh run must not silently mix with its own
RUN_FILES = ("metrics.jsonl", "summary.json")
STOP_POLL = 5  # multi-process: steps between the ranks' agreement on a stop signal


class InterruptedRun(RuntimeError):
    """Raised by the test-only `stop_after` switch to emulate a killed process."""


class Diverged(FloatingPointError):
    """The loss or the parameters went non-finite: one line for the user (naming train.lr), and
    no checkpoint of the diverged state, so the last good one stays the newest. A FloatingPointError,
    as the tuner expects of a diverged trial."""


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path, extensions: Sequence[TrainingExtension] | None = None,
                 resume: bool = False, env: DistEnv | None = None, overwrite: bool = False,
                 resume_allow: Sequence[str] = (), handle_signals: bool = True):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.env = env or DistEnv()
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.is_main = self.rank == 0
        if self.env.distributed and cfg.compress.chunks != 1:
            raise ConfigError(f"compress.chunks: {cfg.compress.chunks} emulates destinations in one process; this "
                              f"run's {self.world_size} ranks are its destinations: remove the key (or set 1)")
        self.resume = resume
        self.overwrite = overwrite
        self.resume_allow = tuple(resume_allow)
        self.handle_signals = handle_signals
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.keep_allocations:
            from dlrm_comp.runtime import keep_large_allocations
            keep_large_allocations()
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        if self.env.distributed:
            from dlrm_comp.distributed.env import local_device
            self.device = local_device(self.device, self.env.local_rank)
        self.source = build_source(cfg.data)
        self.iterations = self._resolve_iterations()
        self._check_eval_split()
        # the data files' fingerprint (Criteo's cache records it); generated data has none: its config is its identity
        self.data_files = data_fingerprint(getattr(getattr(self.source, "meta", None), "sources", None))
        self.schedule = EpochSchedule(self.source.num_batches("train", cfg.data.batch_size), cfg.train.seed)
        self.inputs = DeviceInput(self._train_batch, self.device)  # one copy per step, the next one ahead
        torchrec = cfg.model.backend == "torchrec"
        if extensions is None:
            from dlrm_comp.train.compression import extensions_from_config
            extensions = extensions_from_config(cfg, self.source.cardinalities, self.world_size, self.rank)
        self.extensions = list(extensions)
        self.compression = next((e for e in self.extensions if e.name == "compression"), None)
        self.parallel = None
        if torchrec:  # DistributedModelParallel, also in one process (a one-rank group)
            from dlrm_comp.train.torchrec_parallel import TorchrecModelParallel
            self.parallel = TorchrecModelParallel(cfg, self.env, self.source.cardinalities, self.device,
                                                  self.extensions)
            self.model = self.parallel.model
        elif self.env.distributed:
            from dlrm_comp.train.parallel import ModelParallel
            self.parallel = ModelParallel(cfg, self.env, self.source.cardinalities, self.device, self.compression)
            self.model = self.parallel.model
        else:
            self.model = build_model(cfg, self.source.cardinalities).to(self.device)
        self.exchange = None  # one process: the same exchange as several, over W virtual destinations
        compression = self.compression
        if self.parallel is None and compression is not None:
            from dlrm_comp.exchange.transport import LoopbackTransport
            self.exchange = compression.build_exchange(LoopbackTransport(cfg.compress.chunks, self.device),
                                                       [0] * len(self.source.cardinalities), cfg.model.emb_dim)
        recorder = getattr(compression, "recorder", None)  # TorchRec's own codecs keep no recorder of ours
        self.breakdown = StepBreakdown(self.device, recorder.interval_seconds if recorder is not None else None,
                                       self.parallel.means if self.parallel is not None else None)
        if self.parallel is not None:  # the forward exchange timed around its calls, its backward watched
            self.parallel.wrap_exchange(lambda exchange: TimedExchange(exchange, self.breakdown))
        if self.exchange is not None:
            self.exchange = TimedExchange(self.exchange, self.breakdown)
        self.optimizer = build_optimizer(cfg, self.model)
        if torchrec:  # plus fbgemm's fused embedding optimizer, in one state dict
            self.optimizer = self.parallel.wrap_optimizer(self.optimizer)
        for ext in self.extensions:
            ext.attach(self.model)
        tag = f".rank{self.rank}" if self.env.distributed else ""
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", keep=cfg.train.keep_checkpoints, tag=tag)
        self.start_iteration = 0
        self.redo_eval = False  # resume: the evaluation at start_iteration was lost in a torn line
        self.wall_before = 0.0  # wall time of earlier (interrupted) segments of this run
        self.step_times: list[float] = []
        # the open print interval: step times (host floats) and losses (0-d tensors on the device,
        # read once at the interval, so a step makes no host read of its own)
        self.pending: dict[str, list] = {"losses": [], "times": []}
        self._faults = None  # the test-only fault switches, read from the environment once

    def _resolve_iterations(self) -> int:
        n = self.source.num_batches("train", self.cfg.data.batch_size)
        if n == 0:
            raise ConfigError(f"data.batch_size: the training split has {self.source.num_rows('train')} rows, "
                              f"less than one batch of {self.cfg.data.batch_size}; lower it")
        if self.cfg.train.epochs:
            if n is None:
                raise ConfigError("train.epochs: this data source is an unbounded stream; set train.iterations")
            return self.cfg.train.epochs * n
        if self.cfg.train.iterations:
            return self.cfg.train.iterations
        if not n:
            raise ConfigError("train.iterations: 0 means one pass over the training split, "
                              "but this data source is an unbounded stream; set a positive count")
        return n

    def _check_eval_split(self) -> None:
        """Every evaluation (the final one at least) reads the validation split: refuse an empty
        one now, not with a traceback after all the training."""
        rows = self.source.num_rows("val")
        if rows == 0:
            total = sum(self.source.num_rows(s) or 0 for s in ("train", "val", "test"))
            raise ConfigError(f"data.val_fraction: the validation split has no rows ({total} rows x "
                              f"{self.cfg.data.val_fraction} rounds to 0); raise data.val_fraction or use more data")

    # ----------------------------------------------------------------------------- state
    def state_dict(self, iteration: int, wall_s: float, losses: list[float]) -> dict[str, Any]:
        """The run's state at ``iteration``; ``losses``: the open interval's, read (`_interval_losses`)."""
        return {
            "iteration": iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "wall_s": wall_s,
            "step_times": list(self.step_times),
            "config": self.cfg.to_dict(),
            "data": self.data_files,
            "world_size": self.world_size,
            "iterations": self.iterations,
            "pending": {"losses": losses, "times": list(self.pending["times"])},
            "extensions": {ext.name: ext.state_dict() for ext in self.extensions},
        }

    def _prepare_out_dir(self) -> None:
        """A fresh run starts in a directory of its own (or one it may clear); --resume restores."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.out_dir}: cannot create the run directory ({exc.strerror})") from None
        if self.resume:
            self._restore()
            return
        what = self._earlier_run()
        if what and not self.overwrite:
            raise ConfigError(f"--out {self.out_dir}: holds {what}; continue that run with --resume, "
                              "choose a new --out, or pass --overwrite to discard it")
        self._barrier()  # every rank has looked before rank 0 clears
        if self.is_main:
            self._clear_run_files()
        self._barrier()

    def _earlier_run(self) -> str | None:
        """What of an earlier run the directory holds (None: nothing): its checkpoints, its
        summary, or the records of one that stopped before its first checkpoint."""
        found = [p for files in checkpoint_layouts(self.checkpoints.directory).values() for p in files]
        if found:
            return f"the checkpoints of another run ({found[-1].name}, {len(found)} in all)"
        if (self.out_dir / "summary.json").exists():
            return "a finished run (summary.json)"
        records = [name for name in ("metrics.jsonl", "tensorboard") if (self.out_dir / name).exists()]
        if records:
            return f"the records of a run that stopped before its first checkpoint ({', '.join(records)})"
        return None

    def _clear_run_files(self) -> None:
        """Everything an earlier run wrote here: one run's curves and records, never two mixed."""
        import shutil
        for files in checkpoint_layouts(self.checkpoints.directory).values():
            for path in files:
                CheckpointManager.remove(path)
        for name in RUN_FILES:
            (self.out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / "tensorboard", ignore_errors=True)

    def _barrier(self) -> None:
        if self.parallel is not None:
            import torch.distributed as dist
            dist.barrier()

    def _restore(self) -> None:
        """Resume from the newest checkpoint that is intact on every rank; refuse another run's."""
        layouts = checkpoint_layouts(self.checkpoints.directory)
        if not self.checkpoints.existing() and layouts:
            other = sorted(layouts)
            raise ConfigError(f"--resume: the checkpoints in {self.checkpoints.directory} were written by "
                              f"{' and '.join(map(str, other))} process(es), this run has {self.world_size}; "
                              f"resume with {other[-1]} process(es) (re-sharding a checkpoint is not supported) "
                              "or start a new run in a new --out")
        intact, bad = {}, []
        for path in reversed(self.checkpoints.existing()):
            problem = CheckpointManager.verify(path)
            if problem is None:
                intact[int(path.name[5:14])] = path
            else:
                bad.append((path, problem))
        iterations = set(intact)
        if self.parallel is not None:
            import torch.distributed as dist
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, sorted(iterations))
            iterations = set.intersection(*(set(x) for x in everyone))
        chosen = max(iterations) if iterations else None
        for path, problem in bad:
            print(f"warning: --resume: skipping checkpoint {path}: {problem}", file=sys.stderr, flush=True)
        if chosen is None:
            if bad:
                raise CheckpointError(f"--resume: no intact checkpoint in {self.checkpoints.directory} "
                                      f"(bad: {', '.join(p.name for p, _ in bad)}); start a new run with "
                                      "--overwrite or a new --out")
            if self._earlier_run() is None:  # --resume means a run exists: a mistyped --out is an error
                raise ConfigError(f"--resume: {self.out_dir} holds no run to continue (no checkpoint, no "
                                  "metrics.jsonl); check --out, or start a new run without --resume")
            self._barrier()
            if self.is_main:
                print(f"--resume: no checkpoint in {self.checkpoints.directory} (the run stopped before its "
                      "first one); starting from scratch")
                self._clear_run_files()  # the records of a run killed before its first checkpoint
            self._barrier()
            return
        path = intact[chosen]
        state = CheckpointManager.load(path)
        check_resume_identity(state, self.cfg, self.world_size, self.iterations, self.resume_allow)
        check_data_identity(state, self.data_files, self.resume_allow)
        check_shapes(state["model"], self.model.state_dict(), self.resume_allow)
        for older in self.checkpoints.existing():  # newer than the chosen one: never to be kept or tried
            if int(older.name[5:14]) > chosen:
                moved = CheckpointManager.quarantine(older)
                print(f"warning: --resume: moved {older.name} (newer than the checkpoint resumed) aside to {moved.name}",
                      file=sys.stderr, flush=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        for ext in self.extensions:
            ext.load_state_dict(state["extensions"].get(ext.name, {}))
        self.start_iteration = state["iteration"]
        self.wall_before = state["wall_s"]
        self.step_times = list(state["step_times"])
        pending = state.get("pending", {"losses": [], "times": []})
        self.pending = {"losses": [torch.tensor(v, device=self.device) for v in pending["losses"]],
                        "times": list(pending["times"])}
        redo = False
        if self.is_main:
            done = self.start_iteration == self.iterations  # its final eval is written again below
            torn = MetricsLogger.truncate_after(self.out_dir, self.start_iteration,
                                                drop_eval_at=self.iterations if done else None)
            redo = self._report_torn(torn) and not done
            (self.out_dir / "summary.json").unlink(missing_ok=True)
            print(f"resumed from {path} at iteration {self.start_iteration}")
        self.redo_eval = self._from_main(redo)

    def _report_torn(self, torn: list[tuple[int, str]]) -> bool:
        """Warn for every torn metrics line dropped; True when one held the evaluation at the
        resumed iteration, which the restored model gives again (an earlier one it cannot)."""
        redo = False
        for number, text in torn:
            at = torn_eval_iteration(text)
            note = ""
            if at == self.start_iteration:
                redo, note = True, f"; the evaluation at iteration {at} is run again"
            elif at is not None and at < self.start_iteration:
                note = (f"; the evaluation at iteration {at} cannot be recomputed from the checkpoint at "
                        f"{self.start_iteration} and stays missing")
            print(f"warning: --resume: metrics.jsonl line {number} is torn and was dropped ({text[:60]!r}){note}",
                  file=sys.stderr, flush=True)
        return redo

    def _from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (it alone reads and rewrites the run's records)."""
        if self.parallel is None:
            return value
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ----------------------------------------------------------------------------- steps
    def _train_batch(self, iteration: int):
        return self.source.batch("train", self.schedule.index(iteration), self.cfg.data.batch_size)

    def train_step(self, iteration: int) -> torch.Tensor:
        """One step; returns the loss as a 0-d tensor on the device (read at the print interval)."""
        host, batch = self.inputs.get(iteration)
        self.model.train()
        logits, labels = self._forward(batch, training=True, bags=host)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.parallel is not None:
            self.breakdown.watch_allreduce(loss)
        loss.backward()
        self.breakdown.backward_returned()
        self.optimizer.step()
        if iteration + 1 < self.iterations:  # the next batch's copy, while the device runs this step
            self.inputs.prefetch(iteration + 1)
        return loss.detach()

    def _guarded_step(self, iteration: int) -> torch.Tensor:
        """`train_step`, with embeddings the codec refuses as NaN/Inf turned into `Diverged` (a
        non-finite loss is found where the losses are read: `_interval_losses`)."""
        from dlrm_comp.compress.errors import NonFiniteError
        try:
            return self.train_step(iteration)
        except (FloatingPointError, NonFiniteError) as exc:
            raise Diverged(self._divergence(iteration + 1, str(exc))) from None

    def _interval_losses(self, done: int) -> list[float]:
        """The open interval's losses on the host, in one read; a non-finite one ends the run as
        `Diverged`, naming its iteration (before any checkpoint of the diverged state is written:
        `_save` reads them first)."""
        losses = self.pending["losses"]
        if not losses:
            return []
        values = torch.stack([loss.reshape(()).to(torch.float64) for loss in losses]).cpu().tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise Diverged(self._divergence(done - len(values) + bad + 1, f"the training loss is {values[bad]}"))
        return values

    def _divergence(self, iteration: int, what: str) -> str:
        """One line: where, what, the key to change, and what is left to continue from."""
        last = self.checkpoints.latest()
        kept = (f"the last checkpoint {last} is kept: continue from it with --resume --resume-allow train.lr"
                if last else "no checkpoint was written before it")
        return (f"training diverged at iteration {iteration}: {what}; lower train.lr (now {self.cfg.train.lr:g}) "
                f"or check the input data; {kept}")

    def _forward(self, batch, training: bool, bags=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``bags``: the batch on the host: its ids for bag deduplication, its bag bounds for a
        rank's slice (no device read)."""
        bounds = getattr(self.compression, "step_bounds", None) if training else None  # this step's, as a value
        if self.parallel is not None:
            return self.parallel.forward(batch, training, bags, bounds)
        if self.exchange is not None and training:  # evaluation batches are never compressed
            pooled = self.exchange(self.model.tap(self.model.lookup(batch.indices, batch.offsets)), compress=True,
                                   bags=bags, bounds=bounds)
            return self.model.head(batch.dense, pooled), batch.labels
        return self.model(batch.dense, batch.indices, batch.offsets), batch.labels

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics on every row of the held-out split (up to `train.eval_batches` batches), a partial
        last batch included; the compression hooks bypass evaluation batches."""
        self.model.eval()
        size = self.cfg.data.eval_batch_size
        total = self.source.num_rows(split)
        if total is None:
            raise ConfigError(f"evaluation needs a bounded {split} split")
        if self.cfg.train.eval_batches:
            total = min(total, self.cfg.train.eval_batches * size)
        starts = list(range(0, total, size))

        def fetch(i: int):
            batch = self.source.rows(split, starts[i], min(starts[i] + size, total))
            rows = batch.batch_size
            if self.parallel is not None and rows < self.world_size:  # every rank needs >= 1 row
                batch = concat_batches([batch] + [batch.slice(rows - 1, rows)] * (self.world_size - rows))
            return batch
        inputs = DeviceInput(fetch, self.device)  # one copy per batch, the next one ahead
        logits, labels = [], []
        for i, start in enumerate(starts):
            rows = min(start + size, total) - start
            host, batch = inputs.get(i)
            out, lab = self._forward(batch, training=False, bags=host)  # the host batch: its bag bounds
            if i + 1 < len(starts):
                inputs.prefetch(i + 1)
            if self.parallel is not None:  # the ranks' slices may differ by a few rows
                out, lab = self._gather_rows(out.float())[:rows], self._gather_rows(lab.float())[:rows]
            logits.append(out.float().cpu())
            labels.append(lab.cpu())
        return classification_metrics(torch.cat(logits).numpy(), torch.cat(labels).numpy())

    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate per-rank tensors of possibly different lengths in rank order."""
        import torch.distributed as dist
        count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    # ----------------------------------------------------------------------------- run
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to `train.iterations` and return the summary; `stop_after` (tests only) raises
        mid-run like a kill would. SIGTERM/SIGINT: the step in progress finishes, a checkpoint is
        saved, RunStopped is raised."""
        steps = self.steps(stop_after)
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value

    def steps(self, stop_after: int | None = None) -> Generator[int, None, dict[str, Any]]:
        """The run one step at a time: yields each finished iteration count (after that step's
        records, evaluation and checkpoint), then evaluates, saves and returns the summary.
        `run` drives it to the end; a benchmark may step it in blocks (`step_times` holds each
        step's time) and close it early, leaving no final evaluation or checkpoint."""
        cfg = self.cfg.train
        self._prepare_out_dir()
        if self.is_main:
            dump_config(self.cfg, self.out_dir / "config.yaml")
        logger = MetricsLogger(self.out_dir, tensorboard=cfg.tensorboard, enabled=self.is_main)
        self.log = logger.log
        for ext in self.extensions:
            ext.bind(self)
        echo = tqdm.write if cfg.progress else print
        if self.redo_eval:
            logger.log("eval", self.start_iteration, **self.evaluate())
        t0 = time.perf_counter()
        bar = progress_bar(total=self.iterations, initial=self.start_iteration, enabled=cfg.progress and self.is_main,
                           desc="train", unit="it", dynamic_ncols=True, mininterval=1.0)
        stop = StopFlag(self.handle_signals)
        try:
            with stop:
                for t in range(self.start_iteration, self.iterations):
                    for ext in self.extensions:
                        ext.before_step(t)
                    s0 = time.perf_counter()
                    self.breakdown.begin_step()
                    self.pending["losses"].append(self._guarded_step(t))
                    self.breakdown.end_step()
                    dt = time.perf_counter() - s0
                    self.step_times.append(dt)
                    self.pending["times"].append(dt)
                    bar.update(1)
                    done = t + 1
                    if done % cfg.print_every == 0 or done == self.iterations:
                        mean_step = float(np.mean(self.pending["times"]))
                        mean_loss = float(np.mean(self._interval_losses(done)))
                        if self.parallel is not None:
                            mean_loss = self.parallel.mean(mean_loss)
                        logger.log("train", done, loss=mean_loss, step_s=mean_step,
                                   samples_per_s=self.cfg.data.batch_size / mean_step, **self.breakdown.interval())
                        bar.set_postfix(loss=f"{mean_loss:.4f}")
                        for ext in self.extensions:
                            ext.on_interval(done, logger.log, echo)
                        self.pending = {"losses": [], "times": []}
                    if cfg.eval_every and done % cfg.eval_every == 0 and done != self.iterations:
                        metrics = self.evaluate()
                        logger.log("eval", done, **metrics)
                        echo(f"[eval] iteration {done}: auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
                             f"accuracy {metrics['accuracy']:.4f}")
                    saved = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != self.iterations
                    if saved:
                        self._save(done, t0)
                    if self._stop_requested(stop, done) and done != self.iterations:
                        path = None if saved else self._save(done, t0)
                        path = path or (self.checkpoints.path_for(done) if self._saves() else None)
                        raise RunStopped(stop.signum or signal.SIGTERM, done, str(path) if path else None)
                    if stop_after is not None and done >= stop_after:
                        raise InterruptedRun(f"stopped after iteration {done}")
                    self._maybe_inject_failure(done)
                    yield done
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

    def _stop_requested(self, stop: StopFlag, done: int) -> bool:
        """Whether any rank got a stop signal. Multi-process runs agree every STOP_POLL steps (one
        tiny all-reduce), so every rank stops, and saves, after the same step."""
        if self.parallel is None:
            return stop.signum is not None
        if done % STOP_POLL:
            return False
        import torch.distributed as dist
        flag = torch.tensor([stop.signum or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if stop.signum is None and int(flag):
            stop.signum = int(flag)
        return bool(int(flag))

    def _maybe_inject_failure(self, done: int) -> None:
        """Fault injection for the multi-process tests: DLRM_COMP_FAIL_AT=N [DLRM_COMP_FAIL_RANK=r]
        makes rank r (default 0) raise after iteration N, as a crashed worker would;
        DLRM_COMP_SIGNAL_AT=N[:INT] [DLRM_COMP_SIGNAL_RANK=r] sends rank r SIGTERM (SIGINT) after N."""
        if self._faults is None:  # read once, on the first step
            env = os.environ
            self._faults = (env.get("DLRM_COMP_FAIL_AT"), int(env.get("DLRM_COMP_FAIL_RANK", "0")),
                            env.get("DLRM_COMP_SIGNAL_AT"), int(env.get("DLRM_COMP_SIGNAL_RANK", "0")))
        fail_at, fail_rank, signal_at, signal_rank = self._faults
        if fail_at and done == int(fail_at) and self.rank == fail_rank:
            raise RuntimeError(f"injected failure on rank {self.rank} after iteration {done} (DLRM_COMP_FAIL_AT)")
        if signal_at and self.rank == signal_rank:  # N[:INT|TERM]: a scheduler's signal after N
            at, _, name = signal_at.partition(":")
            if done == int(at):
                os.kill(os.getpid(), getattr(signal, f"SIG{name or 'TERM'}"))

    def _saves(self) -> bool:
        return self.is_main or self.parallel is not None  # every rank saves the tables it owns

    def _save(self, iteration: int, t0: float) -> Path | None:
        losses = self._interval_losses(iteration)  # a diverged step since the last interval: no checkpoint of it
        if not self._saves():
            return None
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise Diverged(self._divergence(iteration, "the parameters hold NaN or Inf"))
        return self.checkpoints.save(iteration, self.state_dict(iteration, self.wall_before + time.perf_counter() - t0,
                                                                losses))

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
            "breakdown": self.breakdown.summary(),
        }
        for ext in self.extensions:
            summary.update(ext.summary())
        return summary

    def _bayes_auc(self) -> float | None:
        bayes = getattr(self.source, "bayes_auc", None)
        return float(bayes("val")) if callable(bayes) else None
