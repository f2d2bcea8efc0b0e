"""model.backend=torchrec (torchrec 1.8.0, fbgemm-gpu-cpu): skipped where torchrec is absent
(`make torchrec` installs it; `make test` does so first)."""
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchrec")
pytest.importorskip("fbgemm_gpu")

from multiproc import ROOT, final_state, straight_and_resumed, together, torchrun, train_cli  # noqa: E402
from dlrm_comp.config import ConfigError, load_config  # noqa: E402
from dlrm_comp.data.synthetic import SyntheticCriteo  # noqa: E402
from dlrm_comp.model import DLRM  # noqa: E402
from dlrm_comp.model.torchrec_backend import batch_to_kjt, embedding_bag_collection, feature_name  # noqa: E402

DEBUG = ("configs/debug.yaml",)
DEBUG_SHORT = ("train.eval_every=0", "train.checkpoint_every=0", "data.num_val_samples=4096",
               "data.eval_batch_size=4096")


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_kjt_of_a_batch_pools_like_embedding_bags():
    """The KeyedJaggedTensor built from a Batch, through an (unsharded) EmbeddingBagCollection
    holding the pure-torch model's initial tables, gives the pure-torch model's pooled outputs."""
    cards = [7, 30, 5]
    source = SyntheticCriteo(cards, seed=3, pooling_factor=3)
    batch = source.batch("train", 0, 16)
    model = DLRM(cards, 4, "13-4", "8-1", seed=5)
    ebc = embedding_bag_collection(cards, 4, device="cpu")
    with torch.no_grad():
        for t, table in enumerate(model.embeddings):
            ebc.embedding_bags[f"t{t}"].weight.copy_(table.weight)
    out = ebc(batch_to_kjt(batch)).to_dict()
    for t, want in enumerate(model.lookup(batch.indices, batch.offsets)):
        assert torch.allclose(out[feature_name(t)], want, atol=1e-7), t


def test_torchrec_codecs_need_the_torchrec_backend_and_do_not_mix_with_ours():
    with pytest.raises(ConfigError, match="model.backend=torchrec"):
        load_config([], ["compress.mode=torchrec_qcomm:fp16"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config([], ["model.backend=torchrec", "compress.mode=codec",
                         "compress.backward.mode=torchrec_qcomm:int8"])
    with pytest.raises(ConfigError, match="dist.torchrec_plan"):
        load_config([], ["model.backend=torchrec", "dist.torchrec_plan=rowwise"])


def test_fp8_on_cpu_is_a_startup_error(tmp_path):
    proc = subprocess.run([sys.executable, *train_cli(tmp_path / "run", "model.backend=torchrec",
                                                      "compress.mode=torchrec_qcomm:fp8")],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CPU kernel" in proc.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()


PLANS = ("ours", "planner")


@pytest.fixture(scope="module")
def exchange_checks():
    """One launch of 2 ranks checking every plan in turn (the checks print a line per plan)."""
    return torchrun(2, str(ROOT / "tests/torchrec_exchange_check.py"), *PLANS)


@pytest.mark.multiprocess
@pytest.mark.parametrize("plan", PLANS)
def test_exchange_as_output_dist_bound_and_exactness(plan, exchange_checks):
    """Every received value within its bound; exact through our output dist == TorchRec's own."""
    proc = exchange_checks
    assert proc.stdout.count(f"torchrec exchange checks passed ({plan} plan") == 2, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.multiprocess
def test_off_matches_the_torch_backend_after_300_iterations(tmp_path):
    """2 gloo ranks, the debug config for 300 SGD steps, same seeds: the two backends' parameters
    agree within rtol 1e-4, atol 1e-6. At lr 0.05: at the debug config's lr 0.2 training is chaotic
    enough that fbgemm's one-rounding update of a repeated row (the sum of its gradients, then the
    step) against torch's sparse SGD (one step per occurrence) drifts past that (README: TorchRec)."""
    runs = {}
    launch = lambda backend: lambda: torchrun(2, *train_cli(  # noqa: E731
        tmp_path / backend, *DEBUG_SHORT, "train.iterations=300", "train.lr=0.05", "compress.mode=off",
        f"model.backend={backend}", base=(), configs=DEBUG))
    for backend, proc in zip(("torch", "torchrec"), together(launch("torch"), launch("torchrec"))):
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[backend] = summary(tmp_path / backend)
    cards = runs["torch"]["data"]["cardinalities"]
    a = final_state(tmp_path / "torch", 300, 2, cards, dim=16)
    b = final_state(tmp_path / "torchrec", 300, 2, cards, dim=16)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(b[key], a[key], rtol=1e-4, atol=1e-6), (key, (a[key] - b[key]).abs().max())
    assert runs["torchrec"]["final_eval"]["auc"] == pytest.approx(runs["torch"]["final_eval"]["auc"], abs=1e-4)


@pytest.mark.multiprocess
def test_codec_bound_and_wire_ratio_match_the_torch_backend(tmp_path):
    comp = {}
    launch = lambda backend: lambda: torchrun(2, *train_cli(  # noqa: E731
        tmp_path / backend, *DEBUG_SHORT, "train.iterations=100", "compress.mode=codec", f"model.backend={backend}",
        base=(), configs=DEBUG))
    for backend, proc in zip(("torch", "torchrec"), together(launch("torch"), launch("torchrec"))):
        assert proc.returncode == 0, proc.stderr[-3000:]
        comp[backend] = summary(tmp_path / backend)["compression"]
    ours, theirs = comp["torch"], comp["torchrec"]
    assert theirs["bytes_raw"] == ours["bytes_raw"] == 100 * 128 * 16 * 4 * 26
    assert 0 < theirs["max_err_ratio"] <= 1
    assert theirs["cr"] == pytest.approx(ours["cr"], rel=0.01) and theirs["cr"] > 4


@pytest.mark.multiprocess
def test_torchrec_qcomm_fp16_is_a_baseline_side_by_side(tmp_path):
    proc = torchrun(2, *train_cli(tmp_path / "run", "model.backend=torchrec", "compress.mode=torchrec_qcomm:fp16",
                                  "compress.backward.mode=torchrec_qcomm:fp16"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    comp = summary(tmp_path / "run")["compression"]
    assert comp["mode"] == "torchrec_qcomm:fp16" and comp["max_err_ratio"] is None
    assert comp["bytes_raw"] == 40 * 32 * 4 * 4 * 8  # training steps only: evaluation is not compressed
    assert comp["cr"] == 2.0 and comp["backward"]["cr"] == 2.0


@pytest.mark.multiprocess
def test_torchrec_resume_matches_uninterrupted(tmp_path):
    """Kill after 25 of 40 codec steps (Adagrad: fbgemm's fused optimizer state travels too), resume."""
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, "model.backend=torchrec", "compress.mode=codec",
                                            "train.optimizer=adagrad")
    assert a.keys() == b.keys() and any(k.startswith("embeddings.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sa["compression"]["bytes_sent"] == sb["compression"]["bytes_sent"]


@pytest.mark.parametrize("dedup", ["off", "on"])
def test_one_process_runs_the_same_code_on_a_one_rank_group(tmp_path, dedup):
    """Plain `python launch/train.py`: DMP on a one-rank gloo group, the exchange on the loopback
    transport with compress.chunks virtual destinations, as the pure-torch backend does (bag
    deduplication included: the same distinct bags, the same bytes)."""
    comp = {}
    launch = lambda backend: lambda: subprocess.run(  # noqa: E731
        [sys.executable, *train_cli(tmp_path / backend, f"model.backend={backend}", "compress.mode=codec",
                                    "compress.chunks=2", f"compress.dedup={dedup}")],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    for backend, proc in zip(("torch", "torchrec"), together(launch("torch"), launch("torchrec"))):
        assert proc.returncode == 0, proc.stderr[-3000:]
        comp[backend] = summary(tmp_path / backend)["compression"]
    assert comp["torchrec"]["bytes_raw"] == comp["torch"]["bytes_raw"]
    assert comp["torchrec"]["cr"] == pytest.approx(comp["torch"]["cr"], rel=0.01)
    assert comp["torchrec"]["distinct_fraction"] == comp["torch"]["distinct_fraction"]
    assert (comp["torchrec"]["distinct_fraction"] < 1) == (dedup == "on")


@pytest.mark.multiprocess
def test_torchrec_powersgd_allreduce_resumes_exactly(tmp_path):
    """dist.allreduce_compression=powersgd on TorchRec's dense DDP head: it compresses, and a run
    killed after 25 of 40 steps resumes to the uninterrupted run's parameters exactly."""
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, "model.backend=torchrec", "compress.mode=codec",
                                            "dist.allreduce_compression=powersgd", "dist.powersgd_start_iter=5")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sa["allreduce"] == sb["allreduce"] and sa["allreduce"]["cr"] > 1.5


@pytest.mark.multiprocess
def test_torchrec_auto_keeps_powersgd_on_ddps_buckets_in_step_with_the_all_to_all(tmp_path):
    """model.backend=torchrec with TorchRec's own all-to-all (on the default group) and auto
    choosing PowerSGD (injected measurements) from iteration 15 on, the top MLP larger than DDP's
    first bucket: bucket 0 is ready before the backward launches its all-to-all, while PowerSGD
    launches its later collectives from completion callbacks. DDP's collectives travel on a group
    of their own, so the ranks stay in step (on one group gloo paired the all-to-all with a
    PowerSGD allreduce and the run hung)."""
    cli = train_cli(tmp_path / "run", "model.backend=torchrec", "dist.allreduce_compression=auto",
                    "dist.powersgd_start_iter=5", "model.top_mlp=512-512-1", "train.print_every=5",
                    "train.eval_every=0")
    cli[0] = str(ROOT / "tests/allreduce_auto_run.py")
    times = {"off": 0.010, "fp16": 0.0098, "powersgd": 0.0050}
    proc = torchrun(2, *cli, env={"ALLREDUCE_AUTO_TIMES": json.dumps(times), "ALLREDUCE_AUTO_RETRIAL": "100"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    by = summary(tmp_path / "run")["allreduce"]["by_setting"]
    assert by["powersgd"]["steps"] == 25 and by["powersgd"]["bytes_sent"] * 1.5 < by["powersgd"]["bytes_raw"]
    saved = torch.load(tmp_path / "run/checkpoints/ckpt_000000040.rank0.pt", weights_only=False)
    assert set(saved["extensions"]["allreduce"]["powersgd"]["layout"]) == {0, 1}
