"""Forged chunk tables through two trees' `wire.parse`: the same error text, or the same planes.

Valid messages of every kind (QUANT, CONST, RAW, SZ, bit-packed, three coders), then up to two
fields of the chunk table moved (and the table's checksum recomputed, so the checks behind it
run), sometimes a wrong widest row, expected rows or dtype:

    git worktree add ../wt-old <rev> --detach
    BASELINE=../wt-old .venv/bin/python docs/results/codec-2026-12-07c/forged_tables.py 6000
"""
import importlib.util, struct, zlib, sys
import numpy as np, torch
from dlrm_comp.compress import wire
from dlrm_comp.compress.codecs.base import ChunkLayout
from dlrm_comp.compress.codecs.quant import QuantCodec
from dlrm_comp.compress.codecs.sz import SzCodec
from dlrm_comp.compress.lossless import CodecCache, get_lossless
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.exchange.plan import DirectionPlan
import os
spec = importlib.util.spec_from_file_location("old_wire", os.path.join(os.environ["BASELINE"], "dlrm_comp/compress/wire.py"))
old = importlib.util.module_from_spec(spec); sys.modules["old_wire"] = old; spec.loader.exec_module(old)
rng = np.random.default_rng(1)
same = diff = errs = 0
H = wire.HEADER_DTYPE
fields = [n for n in H.names]
for case in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3000):
    T = int(rng.integers(1, 6)); D = int(rng.choice([1, 4, 8])); B = int(rng.integers(1, 20))
    rows = rng.integers(1, B + 1, T).astype(np.int64)
    layout = ChunkLayout([list(range(T))], [rows], [(0, B)], D, True)
    x = torch.from_numpy(rng.standard_normal((int(rows.sum()), D)).astype(np.float32) * 0.05)
    if case % 5 == 1: x[:2] = 1.0
    if case % 7 == 2: x[0, 0] = 3e38
    eb = torch.from_numpy(rng.choice([0.02, 1e-4, 0.0], T).astype(np.float64))
    coder = ["zstd", "identity", "zlib"][case % 3]
    plan = DirectionPlan("codec", T, message_path="host", coders=[get_lossless(coder if t % 2 else "zstd") for t in range(T)],
                         bitpack=[bool(case % 4 == 3 and t % 2 == 0) for t in range(T)])
    cls = SzCodec if case % 11 == 0 else QuantCodec
    msg = bytearray(cls(plan, CodecCache()).encode(x, eb, layout).messages[0])
    n_chunks = struct.unpack_from("<H", msg, 4)[0]
    h = np.frombuffer(msg, dtype=H, count=n_chunks, offset=wire.PREAMBLE).copy()
    # forge: change 1-2 fields of 1-2 chunks (or none)
    for _ in range(int(rng.integers(0, 3))):
        c = int(rng.integers(0, n_chunks)); f = fields[int(rng.integers(0, len(fields)))]
        if f in ("minimum", "step"): continue
        info = np.iinfo(H[f])
        v = int(h[f][c]) + int(rng.choice([-1, 1, 2, 8, 17]))
        h[f][c] = min(max(v, info.min), info.max) if rng.random() < 0.8 else int(rng.integers(0, min(info.max, 300) + 1))
    msg[wire.PREAMBLE:wire.PREAMBLE + n_chunks * wire.CHUNK_HEADER] = h.tobytes()
    m_rows = struct.unpack_from("<I", msg, 8)[0]
    if rng.random() < 0.1:
        struct.pack_into("<I", msg, 8, m_rows + int(rng.choice([-1, 1])))
    struct.pack_into("<I", msg, 16, zlib.adler32(bytes(msg[wire.PREAMBLE:wire.PREAMBLE + n_chunks * wire.CHUNK_HEADER])))
    want = rows if rng.random() < 0.8 else (int(rows[0]) if rng.random() < 0.5 else rows + (rng.random(T) < 0.2))
    dt = torch.float32 if rng.random() < 0.95 else torch.float16
    out = []
    for mod in (old, wire):
        try:
            p = mod.parse(bytes(msg), want, D, CodecCache(), expect_chunks=T, expect_dtype=dt)
            out.append(("ok", p.primary.tobytes(), p.high.tobytes(), p.rest.tobytes(), [a.tolist() for a in p.at], sorted((k, v.tobytes()) for k, v in p.sz.items())))
        except CorruptPayloadError as e:
            out.append(("err", str(e)))
    if out[0] == out[1]:
        same += 1; errs += out[0][0] == "err"
    else:
        diff += 1
        if diff < 5: print("DIFF", out[0][:2], out[1][:2])
print("same", same, "diff", diff, "errors among same", errs)
