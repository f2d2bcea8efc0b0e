"""``sz``: SZ3 (pysz) per chunk, a CPU byte path with one call per chunk (its stated cost),
verified like the quantizer: SZ3 runs in float64 for float64 data, else float32, and the
receiver's value (SZ3's output cast to the data's dtype) is checked against the bound; a chunk
that fails, or has no usable bound, travels RAW in its own dtype."""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import ChunkKind, error_ratios, round_down_f32
from dlrm_comp.compress.codecs.base import ChunkLayout, pad_chunks
from dlrm_comp.compress.codecs.messages import ByteMessageCodec
from dlrm_comp.compress.wire import HEADER_DTYPE, chunk_planes, padded


class SzCodec(ByteMessageCodec):
    name = "sz"

    def host_chunks(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, sections: list[int]):
        from dlrm_comp.compress.sz import sz_compress, sz_decompress
        rows, tables, dim = layout.chunk_rows, layout.chunk_tables, layout.dim
        x = pad_chunks(x, rows, dim)[0].detach().cpu()
        n, item = x.shape[1], x.element_size()
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        nonfinite = (~torch.isfinite(x)).any(dim=1).sum()
        x64 = x.to(torch.float64)
        mn, mx = (x64.amin(1), x64.amax(1)) if n else (torch.zeros(len(x), dtype=torch.float64),) * 2
        eb_abs = round_down_f32(eb.cpu().to(torch.float64) * (mx - mn)).clamp_max(3.0e38)
        h = np.zeros(len(tables), dtype=HEADER_DTYPE)
        h["table"], h["layout"], h["rows"], h["section"] = tables, 1, rows, sections
        arr, ref = x.to(work).numpy(), x64.numpy()
        bodies, errs = [b""] * len(tables), np.zeros(len(tables))
        for c, bound in enumerate(eb_abs.tolist()):
            r = int(rows[c])
            m = r * dim
            if bound > 0 and np.isfinite(ref[c, :m]).all():
                blob = sz_compress(arr[c, :m].reshape(r, dim), bound)
                y = sz_decompress(blob, arr.dtype, (r, dim)).reshape(-1)
                got = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).to(torch.float64).numpy()
                err = float(np.abs(got - ref[c, :m]).max()) if y.size else 0.0
                if err <= bound and len(blob) < m * item:
                    bodies[c], h["kind"][c], errs[c] = blob, ChunkKind.SZ, err
        raw = padded(x.contiguous().view(torch.uint8).reshape(len(h), -1).numpy())
        none = (np.zeros(0, np.uint8), np.zeros(len(h), np.int64))  # no codes: SZ bodies and RAW values only
        hc = chunk_planes(h, dim, item, none, None, raw, sz=bodies)
        return hc, None, error_ratios(torch.from_numpy(errs), eb_abs), nonfinite
