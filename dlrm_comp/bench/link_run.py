"""One training run per (config, mode) across a ``VethLink``, and what its run directory says.

Each run starts ``ranks_per_node`` ranks per namespace, a namespace standing for a node
(``torchrun --nnodes=2 --node_rank=i --nproc_per_node=N``, rendezvous on the first namespace's
address, gloo bound to the veth by ``GLOO_SOCKET_IFNAME``: ranks of one namespace reach each other
over its loopback, unshaped, and the other namespace's over the shaped veth), trains a fixed
number of iterations, evaluates once at the end, and is read back into one row: step time and
breakdown over the measured intervals (the first print interval is warm-up), the wire ratio
per direction, the codec's throughput, the AUC, and the bytes ``tc`` counted on the two veth
ends against the bytes the recorder reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

from dlrm_comp.bench.netns import VethLink
from dlrm_comp.config import CompressConfig
from dlrm_comp.train.breakdown import PHASES
from dlrm_comp.train.logging import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("link_worker.py")
PORT = 29531  # the namespaces' own port space: no other process listens there
INTERVALS = 10  # print intervals per run; the first is warm-up, the rest are measured (auto decides at each)

# the configs: the debug model, and a Kaggle-shape one (the reference's dims, batch 2048, tables
# capped at 200k rows: the exchanged bytes do not depend on table size, memory and checkpoints do)
CONFIGS = {
    "debug": ("configs/debug.yaml", ["data.num_val_samples=16384"]),
    "kaggle": ("configs/kaggle.yaml", ["data.batch_size=2048", "data.max_ind_range=200000",
                                       "data.num_val_samples=32768", "data.eval_batch_size=16384"]),
}
COMMON = ["train.eval_every=0", "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false",
          "train.threads=1", "train.device=cpu", "compress.print_tables=false", "dist.backend=gloo"]


def modes() -> dict[str, list[str]]:
    """Mode label -> config overrides; ``codec+bwd+dedup`` where the config has ``compress.dedup``."""
    table = {
        "off": ["compress.mode=off"],
        "fp16": ["compress.mode=fp16"],
        "fp8": ["compress.mode=fp8"],
        "int8": ["compress.mode=int8"],
        "codec": ["compress.mode=codec"],
        "codec+bwd": ["compress.mode=codec", "compress.backward.mode=codec"],
    }
    table["powersgd"] = ["compress.mode=off", "dist.allreduce_compression=powersgd"]  # the exchange uncompressed
    if "dedup" in {f.name for f in dataclasses.fields(CompressConfig)}:  # once the dedup issue lands
        on = "true" if typing.get_type_hints(CompressConfig)["dedup"] is bool else "on"
        table["codec+bwd+dedup"] = [*table["codec+bwd"], f"compress.dedup={on}"]
        table["codec+bwd+dedup+cache"] = [*table["codec+bwd+dedup"], "compress.row_cache=on"]  # the row cache
    table["codec+bwd+inter_node"] = [*table["codec+bwd"], "compress.peers=inter_node"]
    if "codec+bwd+dedup" in table:
        table["codec+bwd+dedup+inter_node"] = [*table["codec+bwd+dedup"], "compress.peers=inter_node"]
        table["codec+bwd+dedup+powersgd"] = [*table["codec+bwd+dedup"], "dist.allreduce_compression=powersgd"]
        table["codec+bwd+dedup+powersgd+inter_node"] = [*table["codec+bwd+dedup+powersgd"], "compress.peers=inter_node"]
        # 16 bits everywhere: both exchange directions, deduplicated, and the dense allreduce
        table["fp16+bwd+dedup+fp16_allreduce"] = ["compress.mode=fp16", "compress.backward.mode=fp16",
                                                  f"compress.dedup={on}", "dist.allreduce_compression=fp16"]
        # compress.peers=auto: per class of peer and direction, compressed where the model says it pays
        table["codec+bwd+dedup+auto"] = [*table["codec+bwd+dedup"], "compress.peers=auto"]
        table["codec+bwd+dedup+powersgd+auto"] = [*table["codec+bwd+dedup+powersgd"], "compress.peers=auto"]
    for name, overrides in table.items():  # `auto` chooses the dense allreduce's setting too, by measurement
        if "auto" in name:
            table[name] = [o for o in overrides if not o.startswith("dist.allreduce_compression=")] + \
                ["dist.allreduce_compression=auto"]
    return table


# codec+bwd+dedup+powersgd+auto is left out: with the allreduce chosen by `auto` it runs what
# codec+bwd+dedup+auto runs (its table entry stays, for --modes and earlier results' names)
HEADLINE = ["off", "fp16", "fp8", "int8", "codec", "codec+bwd", "codec+bwd+dedup", "codec+bwd+dedup+powersgd",
            "codec+bwd+dedup+powersgd+inter_node", "fp16+bwd+dedup+fp16_allreduce", "codec+bwd+dedup+auto"]


def default_modes(ranks_per_node: int) -> list[str]:
    """The headline's modes: the earlier ones, PowerSGD, the fixed combinations (PowerSGD, and a
    rank's message to itself raw: it never crosses a link; 16 bits everywhere, deduplicated) and
    ``auto``; with several ranks per
    node, compressing only between nodes too (``--modes`` picks any of ``modes()``)."""
    extra = ["codec+bwd+dedup+inter_node"] if ranks_per_node > 1 else []
    return [m for m in modes() if m in HEADLINE or m in extra]


def overrides_for(config: str, mode: str, iterations: int) -> list[str]:
    every = max(1, iterations // INTERVALS)
    return [*CONFIGS[config][1], *COMMON, f"train.iterations={iterations}", f"train.print_every={every}",
            *modes()[mode]]


class RunFailed(RuntimeError):
    pass


def run_training(link: VethLink, config: str, mode: str, iterations: int, out: Path,
                 timeout_s: float = 1800, ranks_per_node: int = 1, extra: tuple[str, ...] = ()) -> Path:
    """Train one mode across the link (``extra``: more overrides); returns its run directory
    (every rank writes there)."""
    out.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    try:
        for side in (0, 1):
            dev = link.dev[side]
            env = {**os.environ, "GLOO_SOCKET_IFNAME": dev, "LINK_DEV": dev, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
            cmd = [*link.exec_prefix(side), sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   f"--node_rank={side}", f"--nproc_per_node={ranks_per_node}", f"--master_addr={link.addr[0]}",
                   f"--master_port={PORT}", str(WORKER), "--config", str(ROOT / CONFIGS[config][0]),
                   "--set", *overrides_for(config, mode, iterations), *extra, "--out", str(out)]
            log = open(out / f"rank{side}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{config}/{mode}: no result within {timeout_s:.0f} s") from None
    finally:
        for p in procs:  # a failed or interrupted run leaves nothing behind in the namespaces
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    bad = [(side, p.returncode) for side, p in enumerate(procs) if p.returncode]
    if bad:
        side, code = bad[0]
        tail = (out / f"rank{side}.log").read_text().strip().splitlines()[-15:]
        raise RunFailed(f"{config}/{mode}: rank {side} exited with status {code}:\n" + "\n".join(tail))
    return out


def read_run(run: Path, config: str, mode: str) -> dict:
    """One row from a finished run directory (means over the measured intervals)."""
    records = read_jsonl(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    train = [r for r in records if r["kind"] == "train"]
    if len(train) < 2:
        raise RunFailed(f"{config}/{mode}: {len(train)} print interval(s); need 2 (one warm-up, one measured)")
    first, measured = train[0]["iteration"], train[1:]
    steps = measured[-1]["iteration"] - first
    weights = [r["iteration"] - p["iteration"] for p, r in zip(train, measured)]

    def mean(key):
        return sum(r[key] * w for r, w in zip(measured, weights)) / steps
    window = {d: _window_totals(records, d, first, measured[-1]["iteration"]) for d in ("fwd", "bwd")}
    trials = trial_intervals(records)
    settled = [(r, w) for p, r, w in zip(train, measured, weights) if p["iteration"] not in trials]
    settled_steps = sum(w for _, w in settled)
    row = {"config": config, "mode": mode, "iterations": summary["iterations"], "measured_steps": steps,
           "step_s": mean("step_s"), "breakdown": {k: mean(k) for k in PHASES},
           "cpu_s": mean("cpu_s") if all("cpu_s" in r for r in measured) else None,
           "settled_steps": settled_steps,
           "step_s_settled": sum(r["step_s"] * w for r, w in settled) / settled_steps if settled_steps else None,
           "auc": summary["final_eval"]["auc"], "logloss": summary["final_eval"]["logloss"],
           "fwd_cr": window["fwd"]["cr"], "bwd_cr": window["bwd"]["cr"],
           "codec_GBps": {d: window[d]["GBps"] for d in ("fwd", "bwd")}}
    row["wire"] = wire_check(run, summary, {d: window[d]["sent"] for d in window}, first, measured[-1]["iteration"])
    return row


def trial_intervals(records: list[dict]) -> set[int]:
    """The iterations at which an interval began that ran a trial of ``auto`` (a route of
    ``compress.peers=auto`` or a setting of ``dist.allreduce_compression=auto`` measured on
    trial, not chosen): each decision record names what travels in the interval it opens."""
    out = set()
    for r in records:
        if r["kind"] == "allreduce" and r.get("trial"):
            out.add(r["iteration"])
        elif r["kind"] == "peers" and any(isinstance(r.get(d), dict) and r[d].get("trial") for d in ("fwd", "bwd")):
            out.add(r["iteration"])
    return out


def _window_totals(records: list[dict], direction: str, first: int, last: int) -> dict:
    """Wire ratio and codec throughput (GB/s of fp32 input, the ranks' bytes over their summed
    encode and decode times) of one direction over the measured intervals; 1.0 and None where
    the direction travels uncompressed; ``sent``: the recorder's bytes, all destinations."""
    rows = [r for r in records if r["kind"] == "table" and r["direction"] == direction and first < r["iteration"] <= last]
    raw, sent = sum(r["bytes_raw"] for r in rows), sum(r["bytes_sent"] for r in rows)
    enc, dec = sum(r["enc_s"] for r in rows), sum(r["dec_s"] for r in rows)
    if not raw or not sent:
        return {"sent": 0.0, "cr": 1.0, "GBps": None}
    return {"sent": sent, "cr": raw / sent, "GBps": {"encode": raw / enc / 1e9 if enc else None,
                                                     "decode": raw / dec / 1e9 if dec else None}}


def wire_check(run: Path, summary: dict, sent: dict[str, float], first: int, last: int) -> dict:
    """Bytes per step that ``tc`` counted on both veth ends over the measured steps, against the
    bytes the run accounts for: the exchange's payloads to the other node's ranks (the recorder's
    ``bytes_sent`` x (W-N)/W for N ranks per node, or the fp32 rows of an uncompressed direction),
    the size exchange (``bytes_meta``), and DDP's ring allreduce of the dense gradients (each of
    the ring's W edges carries 2(W-1)/W x their bytes, or x the bytes ``dist.allreduce_compression``'s
    hook handed over; the nodes' M boundaries cross the link).
    ``tc`` adds the collectives' own framing: TCP/IP headers, ACKs, gloo's headers. ``sent``: the
    recorder's bytes per direction over the steps (0 where uncompressed). Each namespace's
    counter is read by all of its ranks and counted once. With ``compress.peers=inter_node`` the
    compressed directions' bytes that stayed inside a node are each rank's own count, subtracted;
    with ``compress.peers=auto`` too, and its link probes' bytes to the other node are added."""
    ranks = [json.loads((run / f"link.rank{r}.json").read_text()) for r in range(summary["world_size"])]
    w = len(ranks)
    nodes = {part["dev"]: part for part in ranks}  # one counter per namespace
    per_node = w // len(nodes)
    counted = 0
    for part in nodes.values():
        at = {c[0]: c[1] for c in part["counts"]}
        counted += at[last] - at[first]
    steps = last - first

    def per_step(column: int) -> float:
        """A counter column's growth over the window, per step, summed over the ranks (0 where absent)."""
        total = 0.0
        for part in ranks:
            at = {c[0]: c[column] if len(c) > column else 0 for c in part["counts"]}
            total += (at[last] - at[first]) / steps
        return total
    local = per_step(2)  # compress.peers=inter_node/auto: what every rank sent uncompressed inside its node
    probe = per_step(4)  # compress.peers=auto: what every rank's link probes sent to the other node
    comp = summary.get("compression") or {}
    shape = ranks[0]
    raw_step = shape["batch_size"] * shape["emb_dim"] * 4 * shape["tables"]  # fp32, one direction, all destinations
    payload = 0.0
    for direction in ("fwd", "bwd"):
        per_step = sent[direction] / steps if sent[direction] else raw_step
        # routed messages are counted exactly (all of them, less the node's own); others by the share of peers
        payload += per_step if local and sent[direction] else per_step * (w - per_node) / w
    payload -= local
    meta = comp.get("bytes_meta", 0) / summary["iterations"] * (w - per_node) / w
    handed = ranks[0]["dense_param_bytes"]  # per rank and step: the gradients, or what the hook handed over
    hooked = {c[0]: c[3] for c in ranks[0]["counts"] if len(c) > 3 and c[3] is not None}
    if hooked:
        handed = (hooked[last] - hooked[first]) / steps
    allreduce = 2 * (w - 1) / w * handed * len(nodes)
    expected = payload + meta + allreduce + probe
    per_step = counted / steps
    return {"tc_bytes_per_step": per_step, "payload_bytes_per_step": payload, "allreduce_bytes_per_step": allreduce,
            "meta_bytes_per_step": meta, "probe_bytes_per_step": probe, "expected_bytes_per_step": expected,
            "tc_over_expected": per_step / expected}


def probe_rate(link: VethLink, seconds: float = 1.5) -> float:
    """The rate a bulk TCP stream reaches across the link, Mbit/s: bytes ``tc`` counted on the
    sending end over the receiver's first-to-last-byte time."""
    server = subprocess.Popen([*link.exec_prefix(1), sys.executable, "-c", _SERVER, link.addr[1], str(PORT + 1)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        before = link.sent_bytes(0)
        subprocess.run([*link.exec_prefix(0), sys.executable, "-c", _CLIENT, link.addr[1], str(PORT + 1),
                        str(seconds)], check=True, timeout=60 + seconds)
        got = json.loads(server.communicate(timeout=60)[0])
        after = link.sent_bytes(0)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return (after - before) * 8 / got["seconds"] / 1e6


_SERVER = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(60)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    t0 = t0 or time.perf_counter(); n += len(b); t1 = time.perf_counter()
print(json.dumps({"bytes": n, "seconds": t1 - t0}))
"""
_CLIENT = """
import socket, sys, time
for _ in range(200):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); break
    except OSError: time.sleep(0.05)
buf = bytes(1 << 16); end = time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end: c.sendall(buf)
c.close()
"""
