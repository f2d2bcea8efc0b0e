"""The link benchmark: a short run across a real veth/tbf link where root and iproute2 allow it
(bytes counted by tc against the bytes the recorder reports, namespaces gone afterwards), its
skip path, its argument errors, and the reference-rate search's arithmetic. No timing or
speedup is asserted."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_comp.bench.link_search import find_reference_rate, next_rate, round_rate
from dlrm_comp.bench.netns import format_rate, parse_rate, remaining, unavailable

ROOT = Path(__file__).resolve().parents[1]
LINK = ROOT / "benchmarks" / "link.py"
# tc counts what crossed the veth: the payloads plus the collectives' framing (TCP/IP headers on
# every ~1.4 KB segment, ACKs of the other direction, gloo's headers, the small per-interval
# gathers). Measured ~1.05-1.07 on the debug and Kaggle shapes; the codec's cross-link share is
# taken as (W-1)/W of its bytes (the two halves of a batch compress alike, not identically).
WIRE_MARGIN = (0.95, 1.30)


def _reason() -> str | None:
    return unavailable()


def run_link(*args: str, env: dict | None = None, timeout: int = 170) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LINK), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


SHARED_MODES = ["codec+bwd+dedup", "codec+bwd+dedup+powersgd", "codec+bwd+dedup+auto"]


@pytest.fixture(scope="module")
def link_run(tmp_path_factory):
    """One short run across a 1gbit veth, one rank per node, shared by the tests below (a link
    run costs its set-up, a rate probe and `off` before any mode): (payload, out dir)."""
    reason = _reason()
    if reason:
        pytest.skip(f"no veth link here: {reason}")
    out = tmp_path_factory.mktemp("link")
    proc = run_link("--configs", "debug", "--rates", "1gbit", "--modes", *SHARED_MODES, "--iterations", "40",
                    "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # the first to ask runs the shared link run
def test_short_run_counts_the_recorders_bytes_on_the_wire(link_run):
    payload, out = link_run
    assert [r["mode"] for r in payload["results"]] == ["off", *SHARED_MODES]
    for row in payload["results"]:
        for key in ("config", "rate", "mode", "step_s", "speedup_vs_off", "modeled_speedup", "ideal_speedup",
                    "link_rate_measured_mbit", "fwd_cr", "bwd_cr", "auc", "breakdown", "comm_free_limit",
                    "fraction_of_limit", "cpu_s"):
            assert key in row, key
        assert row["cpu_s"] > 0
        assert set(row["breakdown"]) == {"fwd_a2a_s", "bwd_a2a_s", "allreduce_s", "compute_s", "codec_s"}
    low, high = WIRE_MARGIN
    off, codec = payload["results"][:2]
    for row in (off, codec):
        assert low <= row["wire"]["tc_over_expected"] <= high, row["wire"]
    assert off["fwd_cr"] == off["bwd_cr"] == 1.0 and codec["fwd_cr"] > 1.0 and codec["bwd_cr"] > 1.0
    assert codec["wire"]["payload_bytes_per_step"] < off["wire"]["payload_bytes_per_step"]
    for name in ("report.md", "link_breakdown.png", "results.json"):
        assert (out / name).is_file()
    assert not set(payload["link"]["namespaces"]) & set(remaining())
    assert payload["ranks_per_node"] == 1
    limit = off["step_s"] / off["breakdown"]["compute_s"]
    assert off["comm_free_limit"] == codec["comm_free_limit"] == pytest.approx(limit)
    assert codec["fraction_of_limit"] == pytest.approx(codec["speedup_vs_off"] / limit)


@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # the first to ask runs the shared link run
def test_auto_probes_a_real_link_and_its_bytes_are_accounted(link_run):
    """compress.peers=auto across the veth: the probe's rate is the link's order of magnitude
    (not a burst's), every decision is a record, and what crossed (probes included) is what the
    run accounts for, within the usual margin."""
    payload, out = link_run
    auto = next(r for r in payload["results"] if r["mode"] == "codec+bwd+dedup+auto")
    low, high = WIRE_MARGIN
    assert low <= auto["wire"]["tc_over_expected"] <= high, auto["wire"]
    assert auto["wire"]["probe_bytes_per_step"] > 0  # probed at the first decision, and at the 9th: in the window
    records = [json.loads(line) for line in (out / "runs/modes/debug/1gbit/codec+bwd+dedup+auto/metrics.jsonl")
               .read_text().splitlines()]
    peers = [r for r in records if r["kind"] == "peers"]
    assert len(peers) == 10  # one per print interval (4 steps)
    probed = [i for i, r in enumerate(peers) if r["probe_bytes"]]
    assert probed == [0, 8]  # the link is probed at the first decision and every 8th after it
    assert auto["settled_steps"] <= auto["measured_steps"] and auto["step_s_settled"] > 0
    assert 0.2e9 / 8 < peers[0]["link_Bps"]["remote"] < 2e9 / 8  # a 1gbit link, both ways at once
    assert all(r[d]["compress"]["local"] is False for r in peers for d in ("fwd", "bwd"))  # the rank itself


@pytest.mark.multiprocess
def test_two_nodes_of_two_ranks_cross_the_link_between_nodes_only(tmp_path):
    """--ranks-per-node 2: four ranks, two per namespace; tc on the veth sees only what crosses
    between the nodes (each namespace's counter once: half of every rank's exchange, the ring
    allreduce's two node boundaries; compress.peers=inter_node: the codec's messages to the other
    node only), within the same margin as one rank per node."""
    reason = _reason()
    if reason:
        pytest.skip(f"no veth link here: {reason}")
    proc = run_link("--configs", "debug", "--rates", "1gbit", "--modes", "off", "codec+bwd+inter_node",
                    "--iterations", "40", "--ranks-per-node", "2", "--out", str(tmp_path), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    assert payload["ranks_per_node"] == 2
    summary = json.loads((tmp_path / "runs/modes/debug/1gbit/codec+bwd+inter_node/summary.json").read_text())
    assert summary["world_size"] == 4
    off, routed = payload["results"]
    assert routed["wire"]["payload_bytes_per_step"] < off["wire"]["payload_bytes_per_step"]
    low, high = WIRE_MARGIN
    for row in payload["results"]:
        assert low <= row["wire"]["tc_over_expected"] <= high, row["wire"]
    assert "2 rank(s) per namespace" in (tmp_path / "report.md").read_text()


@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # the first to ask runs the shared link run
def test_powersgd_allreduce_crosses_the_link_at_the_bytes_its_hook_handed_over(link_run):
    """dist.allreduce_compression=powersgd (from iteration 4 of 40: every measured step): the
    bytes tc stops seeing against the same mode without it are the ring allreduce's saving the
    hook's counts predict. (With PowerSGD so few bytes cross per step on the debug shape that the
    messages' fixed framing, ~14 KB a step, is most of what tc adds: the difference cancels it.)"""
    rows = {r["mode"]: r for r in link_run[0]["results"]}
    plain, psgd = rows["codec+bwd+dedup"], rows["codec+bwd+dedup+powersgd"]
    low, high = WIRE_MARGIN
    assert low <= plain["wire"]["tc_over_expected"] <= high, plain["wire"]
    assert psgd["wire"]["allreduce_bytes_per_step"] < plain["wire"]["allreduce_bytes_per_step"] / 4
    saved_tc = plain["wire"]["tc_bytes_per_step"] - psgd["wire"]["tc_bytes_per_step"]
    saved_expected = plain["wire"]["expected_bytes_per_step"] - psgd["wire"]["expected_bytes_per_step"]
    assert 0.9 <= saved_tc / saved_expected <= 1.2, (plain["wire"], psgd["wire"])


@pytest.mark.multiprocess
def test_namespaces_are_deleted_on_sigterm():
    reason = _reason()
    if reason:
        pytest.skip(f"no veth link here: {reason}")
    code = ("import sys, time; from dlrm_comp.bench.netns import VethLink\n"
            "with VethLink() as link:\n    print(link.ns[0], link.ns[1], flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    names = proc.stdout.readline().split()
    assert len(names) == 2 and set(names) <= set(remaining())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not set(names) & set(remaining())


def test_without_iproute2_it_says_so_and_exits_0(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_link("--out", str(tmp_path / "out"), env={"PATH": str(empty)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert set(payload) == {"skipped"} and payload["skipped"]


@pytest.mark.parametrize("args, named", [
    (["--rates", "150mbps"], "--rates"),
    (["--modes", "zip"], "--modes"),
    (["--configs", "huge"], "--configs"),
    (["--iterations", "3"], "--iterations"),
    (["--reference-rate", "reference"], "--reference-rate"),
    (["--rates", "-5mbit"], "'-5mbit' is negative"),
    (["--delay-ms", "inf"], "finite number"),
    (["--delay-ms", "-3"], "--delay-ms"),
    (["--ranks-per-node", "0"], "--ranks-per-node"),
    (["--repeat", "0"], "--repeat"),
])
def test_bad_arguments_exit_2_naming_them(args, named, capsys):
    """In this process (the argument checks run before anything starts; a subprocess per case
    cost 4-8 s of interpreter start-up), through the script's own ``main``."""
    spec = importlib.util.spec_from_file_location("link_cli", LINK)
    link_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(link_cli)
    with pytest.raises(SystemExit) as stopped:
        link_cli.main(args)
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err


def test_rates_parse_and_print_in_tc_units():
    assert parse_rate("150mbit") == 150e6 and parse_rate("1gbit") == 1e9 and parse_rate("500kbit") == 5e5
    assert format_rate(150e6) == "150mbit" and format_rate(1e9) == "1gbit" and format_rate(1.5e9) == "1500mbit"
    for bad in ("150", "1 gbit", "-3mbit", "0mbit", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert round_rate(137e6) == "140mbit" and round_rate(1.26e9) == "1300mbit"


def test_reference_search_moves_towards_sixty_percent():
    # a model link: 0.3 s of all-to-all at 100 Mbit/s scaling as 1/rate, 0.05 s of the rest (80% at 150mbit)
    def off_at(rate):
        a2a = 0.3 * 100e6 / parse_rate(rate)
        return {"step_s": a2a + 0.05, "breakdown": {"fwd_a2a_s": a2a / 2, "bwd_a2a_s": a2a / 2, "allreduce_s": 0.0}}
    rate, tries = find_reference_rate(off_at, start="150mbit")
    shares = [t["a2a_share"] for t in tries]
    assert abs(shares[-1] - 0.6) < abs(shares[0] - 0.6)
    assert abs(min(shares, key=lambda s: abs(s - 0.6)) - 0.6) <= 0.04
    assert rate in [t["rate"] for t in tries]
    assert next_rate([{"rate": "100mbit", "a2a_share": 0.9}]) > 100e6  # too much link: go faster
    assert next_rate([{"rate": "100mbit", "a2a_share": 0.2}]) < 100e6


def test_the_dedup_mode_appears_once_the_config_has_the_key(monkeypatch):
    import dataclasses

    import dlrm_comp.bench.link_run as link_run
    from dlrm_comp.config import CompressConfig
    has_key = "dedup" in {f.name for f in dataclasses.fields(CompressConfig)}
    assert ("codec+bwd+dedup" in link_run.modes()) == has_key

    @dataclasses.dataclass
    class WithDedup(CompressConfig):
        dedup: str = "off"
    monkeypatch.setattr(link_run, "CompressConfig", WithDedup)
    assert link_run.modes()["codec+bwd+dedup"][-1] == "compress.dedup=on"
    assert list(link_run.modes())[:6] == ["off", "fp16", "fp8", "int8", "codec", "codec+bwd"]


def test_the_headline_modes():
    """The default modes: off, the best fixed combination (PowerSGD, a rank's own message raw) and
    auto beside the earlier ones; compressing only between nodes too with several ranks a node."""
    from dlrm_comp.bench.link_run import HEADLINE, default_modes, modes
    assert default_modes(1) == HEADLINE and set(HEADLINE) <= set(modes())
    assert default_modes(2) == [m for m in modes() if m in {*HEADLINE, "codec+bwd+dedup+inter_node"}]
    assert modes()["codec+bwd+dedup+inter_node"] == [*modes()["codec+bwd+dedup"], "compress.peers=inter_node"]
    assert modes()["codec+bwd+dedup+powersgd"][-1] == "dist.allreduce_compression=powersgd"
    assert modes()["codec+bwd+dedup+powersgd+inter_node"] == [*modes()["codec+bwd+dedup+powersgd"],
                                                               "compress.peers=inter_node"]
    # compressing no peer beside the same allreduce: what compress.peers=inter_node is set against
    assert modes()["powersgd"] == ["compress.mode=off", "dist.allreduce_compression=powersgd"]


def test_auto_modes_run_by_default_at_any_ranks_per_node():
    """A mode named `auto` chooses the peers' routes and the allreduce's setting; with the
    allreduce chosen, the PowerSGD variant runs what the plain one runs: off the headline."""
    from dlrm_comp.bench.link_run import default_modes, modes
    for n in (1, 2):
        assert "codec+bwd+dedup+auto" in default_modes(n) and "codec+bwd+dedup+powersgd+auto" not in default_modes(n)
    assert modes()["codec+bwd+dedup+auto"] == [*modes()["codec+bwd+dedup"], "compress.peers=auto",
                                               "dist.allreduce_compression=auto"]
    assert modes()["codec+bwd+dedup+powersgd+auto"] == modes()["codec+bwd+dedup+auto"]


def test_the_wire_check_adds_auto_probes_bytes(tmp_path):
    """compress.peers=auto's link probes cross the veth: the bytes its ranks' probes sent to the
    other node (the counter rows' fifth field) are expected on the wire too."""
    from dlrm_comp.bench.link_run import wire_check
    summary = {"world_size": 2, "iterations": 20, "compression": {"bytes_meta": 0}}

    def check(probe: list[int]) -> dict:
        for r in (0, 1):
            counts = [[10, 0, 0, None, probe[0]], [20, 10_000, 0, None, probe[1]]]
            (tmp_path / f"link.rank{r}.json").write_text(json.dumps(
                {"rank": r, "dev": f"veth{r}", "dense_param_bytes": 100, "counts": counts, "tables": 2,
                 "batch_size": 8, "emb_dim": 4}))
        return wire_check(tmp_path, summary, {"fwd": 0.0, "bwd": 0.0}, 10, 20)

    plain, probed = check([0, 0]), check([1000, 3000])
    assert plain["probe_bytes_per_step"] == 0
    assert probed["probe_bytes_per_step"] == 2 * 2000 / 10
    assert probed["expected_bytes_per_step"] - plain["expected_bytes_per_step"] == pytest.approx(400)


def test_auto_rows_are_also_measured_outside_their_trials():
    """An interval that opened with a trial (a peers route or an allreduce setting on trial) is
    left out of ``step_s_settled``; the report lists the auto rows again over the rest."""
    from dlrm_comp.bench.link_report import _settled, compare
    from dlrm_comp.bench.link_run import trial_intervals
    records = [{"kind": "peers", "iteration": 10, "fwd": {"trial": False}, "bwd": {"trial": True}},
               {"kind": "peers", "iteration": 20, "fwd": {"trial": False}, "bwd": {"trial": False}},
               {"kind": "allreduce", "iteration": 20, "trial": False},
               {"kind": "allreduce", "iteration": 30, "trial": True}, {"kind": "train", "iteration": 30}]
    assert trial_intervals(records) == {10, 30}
    breakdown = {"fwd_a2a_s": 0.03, "bwd_a2a_s": 0.03, "allreduce_s": 0.01, "compute_s": 0.03, "codec_s": 0.0}
    base = {"link_rate_measured_mbit": 1000.0, "fwd_cr": 1.0, "bwd_cr": 1.0, "auc": 0.7, "breakdown": breakdown,
            "codec_GBps": {"fwd": None, "bwd": None}, "measured_steps": 40}
    rows = [{**base, "mode": "off", "step_s": 0.1, "settled_steps": 40, "step_s_settled": 0.1},
            {**base, "mode": "codec+auto", "step_s": 0.09, "settled_steps": 20, "step_s_settled": 0.08}]
    compare(rows)
    assert rows[1]["speedup_settled"] == pytest.approx(0.1 / 0.08)
    text = "\n".join(_settled(rows))
    assert "| codec+auto | 20 of 40 | 80.0 | 1.250 |" in text and "| off |" not in text


def test_repeated_passes_report_medians_of_paired_ratios(tmp_path):
    """``--repeat``: each pass is compared with its own ``off``; the medians are of those
    paired ratios (a pass where the machine ran slow moves ``off`` and the mode together), and
    the report and the plot show every pass."""
    from dlrm_comp.bench.link_report import across_repeats, compare, markdown, plot
    breakdown = {"fwd_a2a_s": 0.03, "bwd_a2a_s": 0.03, "allreduce_s": 0.01, "compute_s": 0.03, "codec_s": 0.0}
    base = {"config": "kaggle", "rate": "360mbit", "link_rate_measured_mbit": 360.0, "fwd_cr": 1.0, "bwd_cr": 1.0,
            "auc": 0.7, "breakdown": breakdown, "codec_GBps": {"fwd": None, "bwd": None}, "measured_steps": 40,
            "settled_steps": 40, "wire": {"tc_over_expected": 1.05, "allreduce_bytes_per_step": 1.0,
                                          "expected_bytes_per_step": 2.0}}
    results = []
    for repeat, (off, fast) in enumerate([(0.10, 0.05), (0.20, 0.08), (0.12, 0.04)]):  # pass 2 ran slow
        rows = [{**base, "mode": "off", "step_s": off, "repeat": repeat, "cpu_s": off / 2},
                {**base, "mode": "fp16", "step_s": fast, "repeat": repeat, "auc": 0.7 + 0.001 * repeat,
                 "cpu_s": fast / 2}]
        compare(rows)
        results += rows
    summary = {r["mode"]: r for r in across_repeats(results)}
    fp16 = summary["fp16"]
    assert fp16["repeats"] == 3 and fp16["step_s_runs"] == [0.05, 0.08, 0.04]
    assert fp16["step_s"] == 0.05
    assert fp16["speedup_vs_off_runs"] == pytest.approx([2.0, 2.5, 3.0])
    assert fp16["speedup_vs_off"] == pytest.approx(2.5)  # the median ratio, not the ratio of the medians (2.4)
    assert fp16["auc_delta_vs_off"] == pytest.approx(0.001)
    assert summary["off"]["speedup_vs_off"] == 1.0
    assert fp16["cpu_s_runs"] == pytest.approx([0.025, 0.04, 0.02]) and fp16["cpu_s"] == pytest.approx(0.025)
    text = markdown({"results": results, "ranks_per_node": 1, "across_repeats": across_repeats(results)}, None)
    assert "## Across 3 passes" in text and "## kaggle @ 360mbit, pass 3 of 3" in text
    assert "| kaggle @ 360mbit | fp16 | 50.0 | 2.500 |" in text and "50.0, 80.0, 40.0" in text
    assert "| 25.0, 40.0, 20.0 |" in text  # each pass's CPU per step
    assert plot(results, tmp_path / "p.png").stat().st_size > 0
    one = markdown({"results": [r for r in results if r["repeat"] == 0], "ranks_per_node": 1}, None)
    assert "Across" not in one and "## kaggle @ 360mbit (link" in one
