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

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


class FixedSearch(Searcher):
    """A 'search' over nothing: suggests the empty params (a group with no free options)."""

    def suggest(self, trial_id: str) -> dict:
        return {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass


class GroupedSearch(Searcher):
    """Round-robin over per-group searchers, each with a quota of trials."""

    def __init__(self, searchers: list[Searcher], quotas: list[int], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.left = searchers, list(quotas)
        self.owner: dict[str, int] = {}
        self._next = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        n = len(self.searchers)
        for k in range(n):
            g = (self._next + k) % n
            if self.left[g] <= 0:
                continue
            params = self.searchers[g].suggest(trial_id)
            if params is None or params == Searcher.FINISHED:
                continue
            self.left[g] -= 1
            self.owner[trial_id], self._next = g, g + 1
            return {"group": g, "params": params}
        return Searcher.FINISHED if sum(self.left) <= 0 else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner.pop(trial_id)].on_trial_complete(trial_id, result, error)


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
