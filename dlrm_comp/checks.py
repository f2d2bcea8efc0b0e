"""`ConfigError` and the value checks that every config section and every component owning a
config (decay schedule, table bounds, bound controller, Blosc2 stage, Btune) shares, so that one
wording names the key and the accepted values everywhere. No project imports: any layer may use it."""
from __future__ import annotations

from typing import Any, Sequence


class ConfigError(ValueError):
    """A bad configuration value; the CLI turns it into exit status 2."""


def choice(key: str, value: Any, accepted: Sequence[str], *, upper: bool = False) -> Any:
    """``value`` if it is one of ``accepted`` (compared upper-cased with ``upper``: Blosc2's and
    Btune's names are case-insensitive), which is returned."""
    v = str(value).upper() if upper else value
    if v not in accepted:
        raise ConfigError(f"{key}: {value!r} is not one of: {', '.join(accepted)}")
    return v


def positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: {value} must be > 0")


def non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}: {value} must be >= 0")


def parse_widths(key: str, text: str, example: str = "13-512-256-64-16") -> list[int]:
    """An MLP in upstream's dash notation: `13-512-256-64-16` -> [13, 512, 256, 64, 16]; `example`
    is one of this key's own (a top MLP ends in 1)."""
    try:
        widths = [int(part) for part in str(text).split("-")]
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a dash-separated list of widths like {example!r}") from None
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise ConfigError(f"{key}: {text!r} needs at least two positive widths")
    return widths


def positive_count(text: str) -> int:
    """argparse `type=` for a count of workers or runs: 0 or less would run nothing, silently."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
