"""What earlier runs of a sweep left in its results file, so a re-run skips complete trials,
teaches Optuna their results and resumes the unfinished ones first (docs/design.md §4).
Unfinished: `running` or `pending` (the driver was killed) and `interrupted` (Ctrl-C or
SIGTERM); with --retry-failed, `failed` too. Replicates (re-runs of a cell's selected point
with other seeds) are kept apart: they never count against a group's search quota nor teach
its searcher.

A trial_id is the hash of its config, so a complete trial of another sweep in the same file
whose config one of this sweep's groups gives (a sweep started anew with --force-new, or
another YAML run into the file) is the same experiment: it counts as done here too, and
keeps its row (and `sweep`) as it is.
"""


from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spiralsearch.schema import FINAL_STATUSES, REPLICATE_KEYS, SUMMARY_KEYS, Status, pick
from spiralsearch.search.space import (
    Group,
    SearchSpace,
    SpaceError,
    resolve,
    trial_config,
)
from spiralsearch.search.worker import OBJECTIVE
from spiralsearch.store import load

_STORED_METRIC = {"val_loss": "final_val_loss", "best_val_loss": "best_val_loss",
                  "final_val_bpb": "final_val_bpb"}  # search metric -> trials column


@dataclass(frozen=True)
class Stored:
    """One stored trial of a current group: a search trial (replicate 0) or a replicate."""

    group: int
    replicate: int
    params: dict
    status: str
    objective: float | None  # the search metric, for a complete trial
    point_id: str | None  # as stored (None in files from before replicates)
    selected: bool | None
    sweep: str = ""  # the sweep whose row it is (another one's, for an adopted trial)
    train_flops: float | None = None  # training FLOPs it ran (progress counts them)


@dataclass
class Previous:
    """What earlier runs of this sweep left in the results file, by group index. `done`,
    `finished`, `evaluated` and `unfinished` are the search trials' (replicate 0): what the
    search quota and the searchers see; `trials` holds every stored trial, replicates too."""

    done: dict[str, dict] = field(default_factory=dict)  # complete: trial_id -> final result
    group_of: dict[str, int] = field(default_factory=dict)  # complete: trial_id -> group
    finished: dict[int, int] = field(default_factory=dict)  # trials with a final status
    evaluated: dict[int, list[tuple[dict, float]]] = field(default_factory=dict)
    unfinished: dict[int, list[dict]] = field(default_factory=dict)  # killed mid-run
    trials: dict[str, Stored] = field(default_factory=dict)  # every trial, replicates too
    retry: frozenset[str] = frozenset()  # final statuses to run again (--retry-failed)

    def settled(self, status: str) -> bool:
        """Whether a stored trial with this status is left alone by this run."""
        return status in FINAL_STATUSES and status not in self.retry

    @classmethod
    def load(cls, results: Path, space: SearchSpace, groups: list[Group], *,
             retry_failed: bool = False) -> Previous:
        """Read the results file (nothing when it does not exist). `retry_failed`: failed
        trials count as unfinished, so they run again (from their checkpoints if kept)."""
        prev = cls(retry=frozenset({Status.FAILED.value}) if retry_failed else frozenset())
        if not results.exists():
            return prev
        df = load(results)
        for r in df.to_dict("records") if len(df) else []:
            if r["sweep"] != space.name and r["status"] != Status.COMPLETE:
                continue  # another sweep's unfinished trial: that sweep resumes it
            config = r["config"] if isinstance(r["config"], dict) else json.loads(r["config"])
            rep = _replicate_of(r)
            g = _group_of(r, config, space, groups, rep)
            if g is None:  # the YAML changed since: not part of this sweep's groups now
                continue
            prev._add(r, g, rep, _params(config, groups[g].optuna_space(space)), space)
        return prev

    def _add(self, r: dict, g: int, rep: int, params: dict, space: SearchSpace) -> None:
        status, tid = r["status"], r["trial_id"]
        value = r[_STORED_METRIC[space.search.metric]] if status == Status.COMPLETE else None
        sel = r.get("selected")
        self.trials[tid] = Stored(
            g, rep, params, status, value,
            r["point_id"] if isinstance(r.get("point_id"), str) else None,
            bool(sel) if isinstance(sel, bool | np.bool_) else None, r["sweep"],
            _float(r.get("train_flops")))
        if rep:  # a replicate: a measurement, not part of the search
            return
        if status == Status.COMPLETE:
            result = {k: v for k, v in pick(r, SUMMARY_KEYS).items()
                      if k not in REPLICATE_KEYS}
            result[OBJECTIVE] = value
            self.done[tid] = result
            self.group_of[tid] = g
            self.evaluated.setdefault(g, []).append((params, result[OBJECTIVE]))
        if self.settled(status):
            self.finished[g] = self.finished.get(g, 0) + 1
        else:
            self.unfinished.setdefault(g, []).append(params)

    def counts(self) -> dict[str, int]:
        """Trials of the sweep's current groups by status, replicates included."""
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t.status] = out.get(t.status, 0) + 1
        return out


def _float(v) -> float | None:
    """A stored number, or None for NULL (None, NaN, pd.NA)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _replicate_of(row: dict) -> int:
    """The stored replicate number; 0 (a search trial) when NULL or from before replicates."""
    try:
        return int(row.get("replicate"))
    except (TypeError, ValueError):  # None, NaN, pd.NA
        return 0


def _group_of(row: dict, config: dict, space: SearchSpace, groups: list[Group],
              replicate: int = 0) -> int | None:
    """The index of the stored trial's group: by (budget, group_name), the family for rows
    written before group names, then (with a size axis) the size whose resolved config is
    the very trial (same id, with the replicate's seed), so a group whose definition changed
    does not adopt it; None when no current group gives that trial."""
    name = row.get("group_name")
    if not isinstance(name, str):  # NULL (NaN in pandas): a file from before group names
        name = row["family"]
    try:
        size = int(row.get("size_index"))
    except (TypeError, ValueError):  # NULL (None, NaN, pd.NA): no size axis
        size = None
    for g, grp in enumerate(groups):
        if grp.name != name or grp.budget.to_dict() != config["budget"] or grp.size != size:
            continue
        try:
            params = _params(config, grp.optuna_space(space))
            trial = {"group": g, "params": params, "replicate": replicate}
            if trial_config(space, groups, trial).trial_id == row["trial_id"]:
                return g
        except (SpaceError, KeyError):
            continue
    return None


def _params(config: dict, dists: dict) -> dict:
    """The flat searched options ("train.lr", ...) of a nested trial config."""
    return {k: config[k.split(".")[0]].get(k.split(".", 1)[1]) for k in dists}


class KnownTrials:
    """Tells the grouped searcher which suggestions completed in an earlier run."""

    def __init__(self, space: SearchSpace, groups: list[Group], done: dict[str, dict]):
        self.space, self.groups, self.done = space, groups, done

    def __call__(self, g: int, params: dict) -> dict | None:
        return self.done.get(resolve(self.space, self.groups[g], params).trial_id)
