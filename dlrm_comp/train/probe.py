"""The closed loop's accuracy guard: the loss drift that compressing the embeddings causes on a
fixed training batch, measured on what training sends (one process only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.plan import CompressionPlan, StepBounds


@torch.no_grad()
def probe_drift(trainer, exchange: Exchange, rows: int, bounds: StepBounds | None = None) -> tuple[float, list[float]]:
    """Loss with compressed embeddings minus the loss without, on the first ``rows`` training
    rows, and each table's share: the drift when only that table is compressed.

    The probe runs the run's own exchange path: its transport (the ``compress.chunks``
    destinations, so every per-destination chunk has its own range, as in training), its plan's
    codecs, the step's ``bounds`` and its bag deduplication (the host batch's ids), without statistics."""
    model = trainer.model
    host = trainer.source.batch("train", 0, rows)
    batch = host.to(trainer.device)
    pooled = model.lookup(batch.indices, batch.offsets)
    clean = F.binary_cross_entropy_with_logits(model.head(batch.dense, pooled), batch.labels).item()
    plan = exchange.plan
    probe = Exchange(exchange.transport, exchange.owners, exchange.dim, CompressionPlan(plan.fwd, plan.bwd, plan.dedup))
    lossy = probe.forward(pooled, compress=True, bags=host, bounds=bounds)
    full = F.binary_cross_entropy_with_logits(model.head(batch.dense, lossy), batch.labels).item()
    sensitivity = []
    for i in range(len(pooled)):
        mixed = pooled[:i] + [lossy[i]] + pooled[i + 1:]
        loss = F.binary_cross_entropy_with_logits(model.head(batch.dense, mixed), batch.labels).item()
        sensitivity.append(loss - clean)
    return full - clean, sensitivity
