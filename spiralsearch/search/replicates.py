"""Replicates (search.replicates = R, docs/design.md §4): after a cell's search, its selected
point is measured R times.

A cell is a (budget, group). Its **selected point** is its best complete search trial by
`search.metric` and `search.mode` (validation, never test; ties go to the lower trial_id),
recomputed from the store on every run, so a re-run selects the same point. That trial is
replicate 0; replicates 1 .. R - 1 are the same config with train.seed + 1 .. + R - 1, run as
a second phase of the sweep without early stopping (a measurement, not a search). Every trial
row carries `replicate`, `point_id` (TrialConfig.point_id: the config hash less train.seed)
and `selected` (true for the R runs of each cell's selected point, false otherwise).
"""

from __future__ import annotations

import math

from spiralsearch.schema import Status
from spiralsearch.search.resume import Previous
from spiralsearch.search.space import Group, SearchSpace, trial_config
from spiralsearch.store import ResultsStore


def select(space: SearchSpace, prev: Previous) -> dict[int, str]:
    """Group index -> trial_id of its selected point: the best complete search trial
    (replicate 0) by the search metric and mode, the lower trial_id on a tie. A group with
    no complete search trial selects nothing."""
    sign = 1.0 if space.search.mode == "min" else -1.0
    best: dict[int, tuple[float, str]] = {}
    for tid, t in prev.trials.items():
        if t.replicate or t.status != Status.COMPLETE or t.objective is None \
                or not math.isfinite(t.objective):
            continue
        key = (sign * t.objective, tid)
        if t.group not in best or key < best[t.group]:
            best[t.group] = key
    return {g: tid for g, (_, tid) in best.items()}


def pending(space: SearchSpace, groups: list[Group], prev: Previous,
            selected: dict[int, str]) -> list[dict]:
    """Tuner trial configs ({"group", "params", "replicate"}) of the replicates still to run:
    1 .. R - 1 of each selected point, less those stored with a final status (failed ones
    run again with --retry-failed). Those an earlier run left unfinished come first (they
    resume from their checkpoints)."""
    out: list[tuple[bool, dict]] = []
    for g, tid in sorted(selected.items()):
        for r in range(1, space.search.replicates):
            trial = {"group": g, "params": prev.trials[tid].params, "replicate": r}
            stored = prev.trials.get(trial_config(space, groups, trial).trial_id)
            if stored is None or not prev.settled(stored.status):
                out.append((stored is None, trial))
    return [t for _, t in sorted(out, key=lambda x: x[0])]


def mark_selected(store: ResultsStore, space: SearchSpace, groups: list[Group],
                  prev: Previous, selected: dict[int, str]) -> int:
    """Write `replicate`, `point_id` and `selected` to every stored trial of the current
    groups whose stored values differ (rows from before replicates get them too). A search
    trial is selected if it is its cell's selected trial; a replicate if it re-runs that
    point and r < R. Returns how many rows it wrote."""
    point = {g: trial_config(space, groups, _trial(prev, tid)).point_id
             for g, tid in selected.items()}
    rows = []
    for tid, t in prev.trials.items():
        config = trial_config(space, groups, _trial(prev, tid))
        if t.replicate == 0:
            sel = selected.get(t.group) == tid
        else:
            sel = t.replicate < space.search.replicates \
                and point.get(t.group) == config.point_id
        if (t.point_id, t.selected) != (config.point_id, sel):
            rows.append(dict(sweep=t.sweep or space.name, config=config.to_dict(),
                             replicate=t.replicate,
                             point_id=config.point_id, selected=sel))
    if rows:
        store.write(trials=rows)
    return len(rows)


def _trial(prev: Previous, tid: str) -> dict:
    t = prev.trials[tid]
    return {"group": t.group, "params": t.params, "replicate": t.replicate}
