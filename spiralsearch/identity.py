"""A config's identity: the hash of its canonical JSON (docs/design.md §5). A trial's id is
`TrialConfig.trial_id`, which calls `config_hash`; nothing else should hash configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_config", "canonical_json", "config_hash"]


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


def config_hash(config: Mapping[str, Any], n_hex: int = 16) -> str:
    """Stable id of a config dict: sha256 of its canonical JSON, first `n_hex` hex digits.
    Note 1 and 1.0 hash differently. A trial's id is `TrialConfig.trial_id`, which calls
    this on its identity dict; nothing else should hash configs."""
    return hashlib.sha256(canonical_json(canonical_config(config)).encode()).hexdigest()[:n_hex]


