"""Encode and decode of one call to W destinations, small messages (4 tables x 32 rows of dim 32
each, random values at the Kaggle bounds: what a message costs apart from its values), median of
N calls, for W = 1, 4, 16. Run it with each tree on PYTHONPATH, interleaved:

    for t in ../wt-old . ../wt-old . ../wt-old .; do PYTHONPATH=$t .venv/bin/python docs/results/codec-2026-12-07c/ab_destinations.py; done
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
T, ROWS, D = 4, 32, 32
N = int(os.environ.get("N", "400"))
line = []
for w in (1, 4, 16):
    layout = ChunkLayout([list(range(T))] * w, [np.full(T, ROWS, np.int64)] * w,
                         [(i * ROWS, (i + 1) * ROWS) for i in range(w)], D, False)
    x = torch.from_numpy((rng.standard_normal((w * T * ROWS, D)) * 0.05).astype(np.float32))
    eb = torch.from_numpy(np.tile([0.01, 0.03, 0.05, 0.01], w))
    plan = DirectionPlan("codec", T, message_path="host")
    enc, dec = QuantCodec(plan, CodecCache()), QuantCodec(plan, CodecCache())
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
    line.append(f"W={w}: encode {1e3 * np.median(te):.3f} decode {1e3 * np.median(td):.3f} ms")
print(" | ".join(line))
