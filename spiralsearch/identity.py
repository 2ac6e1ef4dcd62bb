"""A config's identity: the hash of its canonical JSON, less its execution settings
(docs/design.md §8). A trial's id is `TrialConfig.trial_id`, which calls `config_hash`;
nothing else should hash configs.

Execution settings (EXECUTION) say how a trial's steps are run, not what they compute:
compiling, splitting a step into micro-batches, computing the loss in chunks change float
rounding only. They stay in the stored config (a rerun uses them) but not in the id, so a
sweep that lowers `train.micro_batch` after running out of memory goes on with the trials
it has.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["EXECUTION", "canonical_config", "canonical_json", "config_hash", "identity"]

EXECUTION: dict[str, tuple[str, ...]] = {"train": ("compile", "micro_batch", "loss_chunk")}


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so that hashing, flattening and storage see the same plain
    Python values (tuples -> lists, numpy scalars -> Python scalars, int keys -> str)."""

    def default(o: Any) -> Any:
        if hasattr(o, "item"):  # numpy scalar, 0-d array, torch scalar
            return o.item()
        raise TypeError(f"config value {o!r} of type {type(o).__name__} is not JSON")

    return json.loads(json.dumps(config, default=default, allow_nan=False))


def canonical_json(config: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace: the text a config's hash is taken of."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that says what a trial computes: the canonical config less its
    EXECUTION settings."""
    out = canonical_config(config)
    for section, keys in EXECUTION.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def config_hash(config: Mapping[str, Any], n_hex: int = 16) -> str:
    """Stable id of a config dict: sha256 of the canonical JSON of its identity, first
    `n_hex` hex digits. Note 1 and 1.0 hash differently. A trial's id is
    `TrialConfig.trial_id`, which calls this; nothing else should hash configs."""
    return hashlib.sha256(canonical_json(identity(config)).encode()).hexdigest()[:n_hex]


