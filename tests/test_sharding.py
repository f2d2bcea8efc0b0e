"""Table placement and launcher detection (no processes needed)."""
import pytest
import torch

from dlrm_comp.config import ConfigError
from dlrm_comp.distributed.env import detect_launcher, resolve_backend
from dlrm_comp.distributed.sharding import place_tables, tables_of
from dlrm_comp.train.parallel import check_divisible

KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306,
          10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def test_contiguous_matches_upstream_blocks():
    assert place_tables([1] * 7, 4, 3, "contiguous") == [0, 0, 0, 1, 1, 2, 2]
    assert place_tables([1] * 4, 4, 4, "contiguous") == [0, 1, 2, 3]


@pytest.mark.parametrize("world", [2, 3, 4, 8, 26])
def test_balanced_every_rank_owns_a_table_and_load_is_even(world):
    owners = place_tables(KAGGLE, 16, world, "balanced")
    assert sorted(set(owners)) == list(range(world))
    loads = [sum(KAGGLE[t] for t in tables_of(owners, r)) for r in range(world)]
    contiguous = place_tables(KAGGLE, 16, world, "contiguous")
    c_loads = [sum(KAGGLE[t] for t in tables_of(contiguous, r)) for r in range(world)]
    assert max(loads) <= max(c_loads)
    assert max(loads) <= max(max(KAGGLE), sum(KAGGLE) / world * 1.5)


def test_more_ranks_than_tables_and_unknown_strategy():
    with pytest.raises(ConfigError, match="more ranks than embedding tables"):
        place_tables([5, 5], 4, 3)
    with pytest.raises(ConfigError, match="dist.sharding"):
        place_tables([5, 5], 4, 2, "random")


def test_launcher_detection():
    assert detect_launcher({}) == "single"
    assert detect_launcher({"RANK": "0", "WORLD_SIZE": "2"}) == "torchrun"
    assert detect_launcher({"PMI_SIZE": "2"}) == "mpi"
    assert detect_launcher({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"


def test_backend_must_fit_device():
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("auto", torch.device("cuda")) == "nccl"
    with pytest.raises(ConfigError, match="nccl"):
        resolve_backend("nccl", torch.device("cpu"))


def test_batch_must_divide_by_world_size(tiny_cfg):
    cfg = tiny_cfg("data.batch_size=30", "data.eval_batch_size=512")
    check_divisible(cfg, 2)
    check_divisible(cfg, 3)  # evaluation slices may be unequal: only the training batch must divide
    with pytest.raises(ConfigError, match="data.batch_size"):
        check_divisible(tiny_cfg("data.batch_size=32"), 3)
