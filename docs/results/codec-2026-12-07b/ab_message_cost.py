"""A message's cost through `QuantCodec` on the host path, encode and decode, median and best of N
calls: a tiny message (13 chunks of 4-5 rows: almost nothing but the per-call work), one
Kaggle-sized remote message (13 chunks of 280-419 rows, dim 32: what a rank of a 2-rank Kaggle
step encodes for its peer) and a pair of them. Run it with each tree on PYTHONPATH, interleaved:

    for t in ../wt-old . ../wt-old .; do PYTHONPATH=$t N=600 .venv/bin/python docs/results/codec-2026-12-07b/ab_message_cost.py; done
"""
import os
import time

import numpy as np
import torch

from dlrm_comp.compress.codecs.base import ChunkLayout
from dlrm_comp.compress.codecs.quant import QuantCodec
from dlrm_comp.compress.lossless import CodecCache
from dlrm_comp.exchange.plan import DirectionPlan

torch.set_num_threads(1)
rng = np.random.default_rng(0)
T, D = 13, 32


def case(rows_per_chunk: int, messages: int = 1):
    rows = [np.full(T, rows_per_chunk, np.int64) + rng.integers(0, max(1, rows_per_chunk // 2), T)
            for _ in range(messages)]
    layout = ChunkLayout([list(range(T))] * messages, rows, [(i * 1024, (i + 1) * 1024) for i in range(messages)], D,
                         True)
    x = torch.from_numpy((rng.standard_normal((int(sum(r.sum() for r in rows)), D)) * 0.05).astype(np.float32))
    eb = torch.full((T * messages,), 0.02, dtype=torch.float64)
    plan = DirectionPlan("codec", T, message_path="host")
    return layout, x, eb, QuantCodec(plan, CodecCache()), QuantCodec(plan, CodecCache())


N = int(os.environ.get("N", "400"))
for label, per_chunk, messages in (("tiny 13x4 rows", 4, 1), ("kaggle remote 13x~280", 280, 1),
                                   ("kaggle pair", 280, 2)):
    layout, x, eb, enc, dec = case(per_chunk, messages)
    for _ in range(20):
        e = enc.encode(x, eb, layout)
        dec.decode(e.messages, layout, torch.float32)
    te, td = [], []
    for _ in range(N):
        t0 = time.perf_counter()
        e = enc.encode(x, eb, layout)
        t1 = time.perf_counter()
        dec.decode(e.messages, layout, torch.float32)
        te.append(t1 - t0)
        td.append(time.perf_counter() - t1)
    print(f"{label:24s} values {x.numel():7d}  encode med {1e3 * np.median(te):.3f} min {1e3 * min(te):.3f}  "
          f"decode med {1e3 * np.median(td):.3f} min {1e3 * min(td):.3f}  bytes {sum(map(len, e.messages))}")
