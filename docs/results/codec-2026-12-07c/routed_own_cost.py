"""The routed codec's own cost (``compress.peers=inter_node``), apart from the inner codec: one
raw message (to this rank) and one remote message of 13 chunks x 3,311 rows of dim 32 in all
(a Kaggle rank's step), the inner codec's encode and decode stubbed out, the baseline tree's
class and this tree's alternating in blocks of 100 calls in one process:

    BASELINE=../wt-old .venv/bin/python docs/results/codec-2026-12-07c/routed_own_cost.py
"""
import os
import importlib.util, sys, time, numpy as np, torch
torch.set_num_threads(1)
from dlrm_comp.compress.codecs.quant import QuantCodec
from dlrm_comp.compress.codecs.base import ChunkLayout
from dlrm_comp.exchange.plan import DirectionPlan
from dlrm_comp.compress.lossless import CodecCache
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m; spec.loader.exec_module(m); return m
old = load(os.path.join(os.environ["BASELINE"], "dlrm_comp/compress/codecs/peers.py"), "old_peers")
new = load(os.path.join(os.path.dirname(__file__), "../../../dlrm_comp/compress/codecs/peers.py"), "new_peers")
rng = np.random.default_rng(0)
rows = np.array([300, 244, 409, 406, 189, 24, 402, 257, 3, 443, 370, 407, 357], np.int64)  # a captured step's
lay1 = ChunkLayout([list(range(13))], [rows], [(0, 1024)], 32, True)
x1 = torch.from_numpy((rng.standard_normal((int(rows.sum()), 32)) * 0.05).astype(np.float32))
eb1 = torch.from_numpy(np.tile([0.01, 0.03, 0.05], 5)[:13])
x = torch.cat([x1 * 1.01, x1]).contiguous(); eb = torch.cat([eb1, eb1])
layout = ChunkLayout([lay1.tables[0]] * 2, [lay1.rows[0]] * 2, [(0, 1024), (1024, 2048)], lay1.dim, True)
T = max(lay1.tables[0]) + 1
plan = DirectionPlan("codec", T, message_path="host")
ic = QuantCodec(plan, CodecCache()); fixed = ic.encode(x1, eb1, lay1)
got = QuantCodec(plan, CodecCache()).decode(fixed.messages, lay1, torch.float32)
codecs = {}
for name, mod in (("before", old), ("after", new)):
    c = mod.PeerRoutedCodec(QuantCodec(plan, CodecCache()), [True, False]); c.inner.encode = lambda *a: fixed
    d = mod.PeerRoutedCodec(QuantCodec(plan, CodecCache()), [True, False]); d.inner.decode = lambda *a: got
    e = c.encode(x, eb, layout)
    recv = [bytearray(bytes(m)) for m in e.messages]  # writable, as the size protocol's receive buffer
    codecs[name] = (c, d, recv)
res = {k: ([], []) for k in codecs}
for _ in range(20):
    for name, (c, d, recv) in codecs.items():
        te, td = res[name]
        for _ in range(100):
            t0 = time.perf_counter(); c.encode(x, eb, layout); t1 = time.perf_counter(); d.decode(recv, layout, torch.float32); t2 = time.perf_counter()
            te.append(t1 - t0); td.append(t2 - t1)
for name, (te, td) in res.items():
    print(f"{name}: routed codec's own encode {1e3*np.median(te):.3f} ms, decode {1e3*np.median(td):.3f} ms (median of 2000, alternating blocks)")
