"""Many independent searches in one Ray Tune run.

A sweep compares families at matched budgets, so every (budget, family) group needs its own
Optuna study and its own early-stopping rungs: a trial must only ever be compared with
trials of the same group. Running one Tuner per group would do that but leaves trial slots
idle between groups (and most GPUs idle when a group has fewer samples than there are
GPUs). These wrappers keep the groups apart inside a single Tuner instead: every trial's
config is {"group": index, "params": {...}}, and each call is routed to that group's own
searcher or scheduler.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


class FixedSearch(Searcher):
    """A 'search' over nothing: suggests the empty params (a group with no free options).
    Nothing is learnt, so a result (a resumed trial's) is taken and dropped."""

    def suggest(self, trial_id: str) -> dict:
        return {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def add_evaluated_point(self, parameters: dict, value: float, error: bool = False,
                            pruned: bool = False, intermediate_values=None) -> None:
        pass


class PointSearch(Searcher):
    """Hands out given trial configs in order, then FINISHED: a measurement of fixed points
    (the replicates of each cell's selected point), not a search; nothing is learnt."""

    def __init__(self, points: list[dict], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.points = list(points)

    def suggest(self, trial_id: str) -> dict | str:
        return self.points.pop(0) if self.points else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class GroupedSearch(Searcher):
    """Round-robin over per-group searchers, each with a quota of trials.

    `first[g]`: params to run before asking group g's searcher (trials an earlier run left
    unfinished); their results are added to the searcher when they complete.
    `known(g, params)`: the result of params that already completed, or None.

    Every trial gets a point no other trial has: a searcher that proposes a completed point
    is told its result and asked again, one that proposes a point already running (a seeded
    sampler replays its first run's points on a re-run) is told it failed and asked again.
    A group whose searcher keeps repeating itself (a small discrete space) stops early."""

    MAX_REPEATS = 20  # repeated points in a row before a group is considered exhausted

    def __init__(self, searchers: list[Searcher], quotas: list[int], metric: str, mode: str,
                 first: list[list[dict]] | None = None,
                 known: Callable[[int, dict], dict | None] | None = None):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.left = searchers, list(quotas)
        self.first = [list(f) for f in (first or [[] for _ in searchers])]
        self.known = known or (lambda g, params: None)
        self.owner: dict[str, tuple[int, str | None, dict]] = {}  # trial -> (group, sub id)
        self.proposed = {_key(g, p) for g, ps in enumerate(self.first) for p in ps}
        self._next = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        n = len(self.searchers)
        for k in range(n):
            g = (self._next + k) % n
            if self.left[g] <= 0:
                continue
            sub_id, params = self._propose(g, trial_id)
            if params is None:
                continue
            self.left[g] -= 1
            self.owner[trial_id], self._next = (g, sub_id, params), g + 1
            return {"group": g, "params": params}
        return Searcher.FINISHED if sum(self.left) <= 0 else None

    def _propose(self, g: int, trial_id: str) -> tuple[str | None, dict | None]:
        if self.first[g]:
            return None, self.first[g].pop(0)
        for attempt in range(self.MAX_REPEATS):
            sub_id = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            params = self.searchers[g].suggest(sub_id)
            if params is None or params == Searcher.FINISHED:
                return None, None
            result = self.known(g, params)
            if result is not None:  # completed before: teach its result, ask again
                self.searchers[g].on_trial_complete(sub_id, result)
            elif _key(g, params) in self.proposed:  # running in this sweep already
                self.searchers[g].on_trial_complete(sub_id, None, error=True)
            else:
                self.proposed.add(_key(g, params))
                return sub_id, params
        self.left[g] = 0  # the searcher only repeats itself: no new points left here
        return None, None

    def save(self, checkpoint_path: str) -> None:
        """Ray checkpoints the searcher with the experiment (resume is ours, from DuckDB, so
        this only has to round-trip)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        g, sub_id, _ = self.owner.get(trial_id, (None, None, None))
        if sub_id is not None:
            self.searchers[g].on_trial_result(sub_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        g, sub_id, params = self.owner.pop(trial_id)
        searcher = self.searchers[g]
        value = (result or {}).get(self.metric)
        if value is None or value != value:  # failed, refused or diverged: no value (NaN)
            result, error = None, True  # Optuna records a failed trial, not a NaN value
        if sub_id is not None:
            searcher.on_trial_complete(sub_id, result, error)
        elif result and not error:  # a resumed trial: its searcher never proposed it
            value = result.get(self.metric)
            if value is not None and value == value:  # teach its result (NaN teaches nothing)
                searcher.add_evaluated_point(params, value)


def _key(g: int, params: dict) -> tuple:
    return g, tuple(sorted((k, repr(v)) for k, v in params.items()))


class GroupedASHA(FIFOScheduler):
    """One asynchronous successive-halving scheduler per group; trials run FIFO."""

    def __init__(self, n_groups: int, metric: str, mode: str, grace_period: int):
        super().__init__()
        self.inner = [AsyncHyperBandScheduler(time_attr="training_iteration", metric=metric,
                                              mode=mode, grace_period=grace_period,
                                              max_t=10**6) for _ in range(n_groups)]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # each inner scheduler already has the sweep's metric and mode

    def _of(self, trial) -> TrialScheduler:
        return self.inner[trial.config["group"]]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)
