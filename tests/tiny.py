"""The tiny run config every test trains (well under a second a run on one core), in one place:
as `--set` items for `load_config` and the CLI, and as a base YAML file for the study tools."""
from __future__ import annotations

from pathlib import Path

import yaml

from dlrm_comp.config import yaml_load

TINY_SHAPE = [  # the data and the model
    "data.profile=tiny", "data.batch_size=32", "data.eval_batch_size=512", "data.num_val_samples=1024",
    "data.num_test_samples=1024", "model.emb_dim=4", "model.bottom_mlp=13-8-4", "model.top_mlp=8-1",
]
TINY_OVERRIDES = [*TINY_SHAPE,  # and the run
                  "train.iterations=40", "train.print_every=10", "train.eval_every=20", "train.checkpoint_every=10",
                  "train.progress=false", "train.lr=0.1",
                  "train.device=cpu"]  # pinned: the suite also passes on a GPU host


def tiny_yaml(path: Path, *extra: str, name: str = "tiny") -> Path:
    """Write TINY_OVERRIDES then `extra` (later items win) as a YAML config file at `path`."""
    raw: dict = {"name": name}
    for item in [*TINY_OVERRIDES, *extra]:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml_load(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # safe_dump quotes 'off' for YAML 1.1 readers
    return path
