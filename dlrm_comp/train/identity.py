"""What makes a checkpoint part of *this* run: the whole resolved config, the world size and the
iteration. Comparing the whole config (not a list of keys) means a key added later is covered
without anyone remembering to add it here; only presentation and cadence keys may differ."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from dlrm_comp.config import ConfigError, RunConfig

# keys that change how a run reports and saves itself, not what it computes
ALLOWED_TO_DIFFER = frozenset({"train.progress", "train.tensorboard", "train.print_every", "train.eval_every",
                               "train.checkpoint_every", "train.keep_checkpoints"})
# allowed when the run gets longer (so a finished run can be extended), not when it gets shorter
LENGTH_KEYS = frozenset({"train.iterations", "train.epochs"})
_MISSING = object()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value) \
                and not key.endswith("params"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: Mapping[str, Any], now: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, now)} for every differing key; a key the checkpoint predates counts at its default."""
    defaults = flatten(RunConfig().to_dict())
    old, new = flatten(saved), flatten(now.to_dict())
    diff = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key, _MISSING)), new.get(key, _MISSING)
        if a != b:
            diff[key] = (a, b)
    return diff


def check_allow_keys(allow: Iterable[str]) -> None:
    known = set(flatten(RunConfig().to_dict()))
    for key in allow:
        if key not in known:
            raise ConfigError(f"--resume-allow: {key!r} is not a config key (e.g. compress.mode, train.lr)")


def check_resume_identity(state: Mapping[str, Any], cfg: RunConfig, world_size: int, iterations: int,
                          allow: Iterable[str] = ()) -> None:
    """Raise ConfigError (exit 2) unless the checkpoint `state` continues the run `cfg` describes."""
    allow = set(allow)
    check_allow_keys(allow)
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise ConfigError(f"--resume: the checkpoint was written by {saved_world} process(es), this run has "
                          f"{world_size}; resume at the same world size (re-sharding is not supported)")
    done = int(state["iteration"])
    if iterations < done:
        raise ConfigError(f"train.iterations: the checkpoint is at iteration {done}, past this run's "
                          f"{iterations} iterations; resume with train.iterations >= {done} or start a new --out")
    saved_cfg = state.get("config") or {}
    saved_total = state.get("iterations", (saved_cfg.get("train") or {}).get("iterations"))
    diff = config_differences(saved_cfg, cfg)
    refused = {}
    for key, (old, new) in diff.items():
        if key in ALLOWED_TO_DIFFER or key in allow:
            continue
        if key in LENGTH_KEYS and saved_total is not None and iterations >= saved_total:
            continue
        refused[key] = (old, new)
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, (a, b) in refused.items())
        flags = " ".join(f"--resume-allow {k}" for k in refused)
        raise ConfigError(f"--resume: this run's config differs from the checkpoint's ({listed}). A checkpoint "
                          f"continues only the run that wrote it: use a new --out, or accept the change with {flags}")


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)
