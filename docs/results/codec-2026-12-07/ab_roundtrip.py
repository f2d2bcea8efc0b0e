# The three interleaved pairs of docs/results/codec-2026-12-07 (README, "The CPU codec without padding"):
# for t in <worktree of b6d957f> <this tree>; do PYTHONPATH=$t python ab_roundtrip.py 40; done
# prints, per step shape, the best encode and decode ms of offline.roundtrip over 40 calls and the ratio.
import sys, json, ctypes, torch, numpy as np
ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 30); ctypes.CDLL("libc.so.6").mallopt(-1, 1 << 30)
torch.set_num_threads(1)
from dlrm_comp.compress.codecs.offline import roundtrip
g = torch.Generator().manual_seed(0)
ebs = ([0.01, 0.03, 0.05] * 9)[:26]
def shape(rows_per_chunk, dim):
    return [torch.randn(r, dim, generator=g) * 0.05 for r in rows_per_chunk]
rng = np.random.default_rng(0)
sets = {"debug_step": (shape([64] * 52, 16), [26, 26]),
        "terabyte_step": (shape([1024] * 52, 64), [26, 26]),
        "kaggle_dedup": (shape(list(rng.integers(3, 500, 26)) * 2, 16), [26, 26])}
out = {}
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
for name, (chunks, counts) in sets.items():
    r = roundtrip("codec", chunks, ebs * 2, counts=counts, reps=reps)
    out[name] = (round(r.enc_s * 1e3, 3), round(r.dec_s * 1e3, 3), round(r.cr, 3))
print(json.dumps(out))
