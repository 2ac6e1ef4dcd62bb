"""Bring a results file's trial ids up to date before a sweep continues (docs/design.md §4).

A trial's id is the hash of its config's identity (identity.py). Both can change between
versions of spiralsearch: a new option joins every config with its default, or the rule
drops a setting from the identity (identity.EXECUTION). A stored trial then has an id that
the same trial no longer gets, and a re-run would train it again and store it twice. So the
driver re-keys the file first: each stored trial's config is read back through TrialConfig
(new options at their defaults), and a trial whose id changed moves to its new id with its
metrics, its `point_id` and its checkpoint folder (beside the results file, or in a
`storage:` folder; folders in a URI storage keep their old names, and a trial cut off there
starts over). Imported trials and configs that no longer read are left as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from spiralsearch.config import TrialConfig
from spiralsearch.search.checkpoints import checkpoints_dir, storages
from spiralsearch.store import ResultsStore, load

__all__ = ["rekey"]


def rekey(store: ResultsStore) -> dict[str, str]:
    """Move every stored trial whose id the current identity rule changes to its new id;
    returns {old id: new id} of those moved ({} for a file that does not exist yet)."""
    if not store.path.is_file():
        return {}
    df = load(store.path)
    changes = {}
    for r in df.to_dict("records") if len(df) else []:
        config = r["config"] if isinstance(r["config"], dict) else json.loads(r["config"])
        if "imported" in config:  # its id names the CSV row it came from
            continue
        try:
            cfg = TrialConfig.from_dict(config)
        except (ValueError, TypeError):  # a config this version no longer reads
            continue
        if cfg.trial_id == r["trial_id"]:
            continue
        row = dict(sweep=r["sweep"], config=cfg.to_dict())
        if isinstance(r.get("point_id"), str):
            row["point_id"] = cfg.point_id
        changes[r["trial_id"]] = row
    moved = store.rekey(changes)
    for storage in (None, *storages(store.path)):
        root = checkpoints_dir(store.path, storage)
        if isinstance(root, Path):
            _rename(root, moved)
    return moved


def _rename(root: Path, moved: dict[str, str]) -> None:
    """Rename the trial folders of moved trials under a local checkpoints folder."""
    for old, new in moved.items():
        if (root / old).is_dir() and not (root / new).exists():
            (root / old).rename(root / new)
