"""A real bandwidth-limited link on one machine: two network namespaces joined by a veth pair,
each end shaped by a token bucket (``tbf``, optionally behind a ``netem`` delay).

Names carry the creating process's id (two runs never collide); the addresses belong to a
private /24 that exists only inside the two namespaces. ``VethLink`` deletes both namespaces
(and with them the veth pair) on every exit path: ``__exit__``, ``atexit``, and SIGTERM/SIGHUP
turned into ``SystemExit`` while a link is up. Needs root and iproute2 (``ip``, ``tc``);
``unavailable()`` says why not, where not.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Sequence

SUBNET = "10.213.0"  # /24, only inside the namespaces this module creates
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_LIVE: set[str] = set()  # namespaces of this process still to delete


def parse_rate(text: str) -> float:
    """'150mbit' -> 1.5e8 bits/s; ValueError naming the accepted form otherwise."""
    m = _RATE.match(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate like 500kbit, 150mbit or 1gbit")
    return float(m.group(1)) * _UNITS[m.group(2)]


def format_rate(bits_per_s: float) -> str:
    """1.5e8 -> '150mbit' (tc's own units, whole numbers where possible)."""
    for unit in ("gbit", "mbit", "kbit"):
        value = bits_per_s / _UNITS[unit]
        if value >= 1 and abs(value - round(value)) < 1e-9:
            return f"{int(round(value))}{unit}"
    return f"{int(round(bits_per_s / 1e3))}kbit"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return proc


def unavailable() -> str | None:
    """Why a veth link cannot be built here (None: it can): not Linux, not root, no iproute2,
    or namespaces refused (a container without CAP_SYS_ADMIN)."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux network namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (ip netns add, tc qdisc); run as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2: {' and '.join(missing)} not found on PATH"
    probe = f"dlkprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode:
        return f"cannot create a network namespace (ip netns add: {made.stderr.strip()})"
    _run("ip", "netns", "del", probe, check=False)
    return None


def _delete(namespaces: Sequence[str]) -> None:
    for ns in namespaces:
        _run("ip", "netns", "del", ns, check=False)
        _LIVE.discard(ns)


def _delete_all_live() -> None:
    _delete(sorted(_LIVE))


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally and __exit__


atexit.register(_delete_all_live)


class VethLink:
    """Namespaces ``ns[0]``, ``ns[1]`` with veth ends ``dev[0]``, ``dev[1]`` at ``addr[0]``,
    ``addr[1]``; ``set_rate`` shapes both directions alike."""

    def __init__(self, tag: str | None = None):
        tag = tag or str(os.getpid())
        self.ns = [f"dlk{tag}a", f"dlk{tag}b"]
        self.dev = list(self.ns)  # a veth end is named after its namespace (<= 15 characters)
        if len(self.dev[0]) > 15:
            raise ValueError(f"link tag {tag!r} is too long for an interface name")
        self.addr = [f"{SUBNET}.1", f"{SUBNET}.2"]
        self.rate = None
        self._handlers: dict = {}

    def __enter__(self) -> "VethLink":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._handlers[sig] = signal.signal(sig, _terminate)
        try:
            for ns in self.ns:
                _run("ip", "netns", "add", ns)
                _LIVE.add(ns)
            _run("ip", "link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
            for ns, dev, addr in zip(self.ns, self.dev, self.addr):
                _run("ip", "link", "set", dev, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _delete(self.ns)
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}

    def set_rate(self, rate: str, delay_ms: float = 0.0) -> None:
        """``tbf rate RATE`` on both ends (burst: 10 ms of the rate, at least 256 KiB), behind
        ``netem delay`` when ``delay_ms`` > 0. Replaces what was there, so counters restart."""
        bits = parse_rate(rate)
        burst = max(256 * 1024, int(bits / 8 / 100))
        for ns, dev in zip(self.ns, self.dev):
            _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]
            if delay_ms > 0:
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                     "delay", f"{delay_ms}ms")
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:", "handle", "2:", *tbf)
            else:
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf)
        self.rate = rate

    def exec_prefix(self, side: int) -> list[str]:
        """The command prefix that runs a program inside namespace ``side``."""
        return ["ip", "netns", "exec", self.ns[side]]

    def sent_bytes(self, side: int) -> int:
        """Bytes the root qdisc of ``dev[side]`` has sent (that end's egress, headers included)."""
        return qdisc_bytes(self.dev[side], self.ns[side])


def qdisc_bytes(dev: str, ns: str | None = None) -> int:
    """``tc -s qdisc`` byte counter of ``dev``'s root qdisc (from inside its namespace when ns is None)."""
    cmd = ["tc"] + (["-n", ns] if ns else []) + ["-s", "-j", "qdisc", "show", "dev", dev]
    for q in json.loads(_run(*cmd).stdout or "[]"):
        if q.get("root"):
            return int(q["bytes"])
    raise RuntimeError(f"{dev}: no root qdisc")


def remaining(prefix: str = "dlk") -> list[str]:
    """Namespaces whose names start with ``prefix`` (what tests check is gone)."""
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
