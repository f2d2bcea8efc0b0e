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
# not config keys: `--resume-allow data.sources` accepts data files whose fingerprint changed
EXTRA_ALLOW_KEYS = frozenset({"data.sources"})
# what tells one version of a data file from another (summary.json's data.sources)
DATA_FINGERPRINT = ("name", "size", "mtime_ns", "head_tail_sha256", "rows")
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
    known = set(flatten(RunConfig().to_dict())) | EXTRA_ALLOW_KEYS
    for key in allow:
        if key not in known:
            raise ConfigError(f"--resume-allow: {key!r} is not a config key (e.g. compress.mode, train.lr) "
                              "nor data.sources")


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


def data_fingerprint(sources: Any) -> list[dict[str, Any]] | None:
    """The identity of the data files a run reads (None: generated data, the config is its identity)."""
    if not sources:
        return None
    return [{k: src.get(k) for k in DATA_FINGERPRINT} for src in sources]


def check_data_identity(state: Mapping[str, Any], sources: list[dict] | None, allow: Iterable[str] = ()) -> None:
    """Raise ConfigError (exit 2) when the data files (`data_fingerprint`) changed since the checkpoint was written:
    the same path with other rows would continue the run on other data."""
    if "data" not in state or "data.sources" in set(allow):  # a checkpoint from before the data was recorded
        return
    saved, now = state["data"], sources
    if saved == now:
        return
    if saved is None or now is None or len(saved) != len(now):
        what = f"{len(saved or [])} data file(s) in the checkpoint, {len(now or [])} now"
    else:
        i = next(i for i, (a, b) in enumerate(zip(saved, now)) if a != b)
        keys = [k for k in DATA_FINGERPRINT if saved[i].get(k) != now[i].get(k)]
        what = f"{now[i]['name']} differs ({', '.join(keys)})"
    raise ConfigError(f"--resume: the data changed since the checkpoint was written ({what}); the run would "
                      "continue on other rows. Restore the files, start a new --out, or accept it with "
                      "--resume-allow data.sources")


def check_shapes(saved: Mapping[str, Any], current: Mapping[str, Any], allow: Iterable[str]) -> None:
    """Raise ConfigError before loading a checkpoint whose parameters another model shape wrote
    (an accepted model.* change): load_state_dict would stop with a size-mismatch traceback."""
    missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    odd = [k for k in sorted(set(saved) & set(current)) if _shape(saved[k]) != _shape(current[k])]
    if not (missing or extra or odd):
        return
    if odd:
        k = odd[0]
        what = f"{k}: {_shape(saved[k])} in the checkpoint, {_shape(current[k])} now"
    else:
        what = f"parameters {', '.join((missing or extra)[:3])} " + ("are new" if missing else "are gone")
    accepted = [k for k in allow if k.startswith("model.")]
    why = f" (accepted with --resume-allow {' '.join(accepted)})" if accepted else ""
    raise ConfigError(f"--resume: the model's shape changed{why}: {what}. A checkpoint continues only a model of "
                      "its own shape; keep the model keys as they were, or start a new --out")


def _shape(value: Any) -> list[int] | None:
    size = getattr(value, "size", None)
    return list(size()) if callable(size) and hasattr(value, "dtype") else None
