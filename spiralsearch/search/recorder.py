"""The sweep driver's view of its trials: the single writer of the results file, and the
live progress table (docs/design.md §4). Both are Ray Tune callbacks' state, kept in the driver.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from ray.tune import Callback

from spiralsearch.config import TrialConfig
from spiralsearch.schema import (
    CELL_KEYS,
    METRIC_KEYS,
    REPLICATE_KEYS,
    SUMMARY_KEYS,
    Status,
    pick,
)
from spiralsearch.search.space import Group, SearchSpace, size_target, trial_config
from spiralsearch.store import ResultsStore


class StoreCallback(Callback):
    """The single writer: trial rows and metrics into DuckDB in short, batched transactions
    (at most every `flush_s` seconds, and at every trial end). Opens nothing until the first
    write, as Ray pickles callbacks with the run config."""

    def __init__(self, store: ResultsStore, sweep: str, space: SearchSpace, groups: list[Group],
                 view: LiveView | None = None, flush_s: float = 2.0):
        self.store, self.sweep, self.space, self.groups = store, sweep, space, groups
        self.view, self.flush_s = view, flush_s
        self._trials: list[dict] = []
        self._metrics: dict[str, list[dict]] = defaultdict(list)
        self._best: dict[str, float] = {}  # lowest val loss reported so far, per trial
        self._last_flush = 0.0

    def _group(self, trial) -> Group:
        return self.groups[trial.config["group"]]

    def _config(self, trial) -> TrialConfig:
        return trial_config(self.space, self.groups, trial.config)

    def _row(self, trial, **fields) -> dict:
        """The trial's row. A search trial's `selected` is the driver's to set once its
        cell's search is done (replicates.mark_selected); a replicate is selected."""
        config, group = self._config(trial), self._group(trial)
        spec, r = str(config.model.spec), _replicate(trial)
        return dict(sweep=self.sweep, trial_id=config.trial_id, config=config.to_dict(),
                    family=self.space.family_of(spec), group_name=group.name,
                    size_index=group.size,
                    size_target=size_target(self.space, group, trial.config["params"]),
                    spec=spec, replicate=r, point_id=config.point_id) \
            | ({"selected": True} if r else {}) | fields

    def _view(self, trial, tid: str | None, status: str, loss: float | None = None) -> None:
        if self.view:
            self.view.update(self._group(trial), tid, status, loss, replicate=_replicate(trial))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trials.append(self._row(trial, status=Status.RUNNING.value))
        self._view(trial, self._config(trial).trial_id, "running")
        self._flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("status") == Status.RUNNING and "step" in result:
            tid = result["config_hash"]
            self._metrics[tid].append(pick(result, METRIC_KEYS))
            self._best[tid] = min(self._best.get(tid, math.inf), result["val_loss"])
        if time.monotonic() - self._last_flush > self.flush_s:
            self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        status = r.get("status", Status.FAILED.value)
        if status == Status.RUNNING:  # the scheduler (ASHA) stopped it early
            status = Status.STOPPED.value
        fields = {k: v for k, v in pick(r, SUMMARY_KEYS).items()
                  if k not in ("family", "spec", *CELL_KEYS, *REPLICATE_KEYS)}
        if status == Status.STOPPED:
            fields |= dict(final_val_loss=r.get("val_loss"), final_val_bpb=r.get("val_bpb"),
                           best_val_loss=self._best.get(r.get("config_hash"), math.nan))
        if "step" in r and r.get("status") != Status.RUNNING and not r.get("cached"):
            self._metrics[r["config_hash"]].append(pick(r, METRIC_KEYS))
        self._trials.append(self._row(trial, **(fields | dict(status=status))))
        self._view(trial, r.get("config_hash"), status, r.get("final_val_loss"))
        self._flush(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            error = trial.get_error()
        except Exception:  # noqa: BLE001 — the message is a courtesy; the status is what counts
            error = None
        error = error or "the trial's process died (out of memory?)"
        self._trials.append(self._row(trial, status=Status.FAILED.value,
                                      error=str(error)[-2000:]))
        self._view(trial, self._config(trial).trial_id, "failed")
        self._flush(force=True)

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_flush < self.flush_s:
            return
        if self._trials or self._metrics:
            self.store.write(trials=self._trials, metrics=dict(self._metrics))
        self._trials, self._metrics = [], defaultdict(list)
        self._last_flush = time.monotonic()


def _replicate(trial) -> int:
    return trial.config.get("replicate", 0)


class LiveView:
    """A live table: trials done / running / failed per (budget, group), best loss so far
    (search trials), and with search.replicates > 1 the replicates done."""

    def __init__(self, space: SearchSpace, enabled: bool = True):
        self.space, self.enabled = space, enabled
        self.status: dict[tuple, dict[str, str]] = defaultdict(dict)
        self.replicas: dict[tuple, dict[str, str]] = defaultdict(dict)
        self.best: dict[tuple, float] = {}
        self.live = None

    def __getstate__(self) -> dict:  # Ray pickles callbacks; the live display stays here
        return self.__dict__ | {"live": None}

    def __enter__(self) -> LiveView:
        if self.enabled:
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            print()

    def update(self, group: Group, tid: str | None, status: str, loss: float | None = None,
               replicate: int = 0):
        key = (group.budget.value, group.label)
        if replicate:  # a measurement of the selected point, not a search trial
            self.replicas[key][tid or f"?{len(self.replicas[key])}"] = status
            if self.live is not None:
                self.live.update(self._table())
            return
        self.status[key][tid or f"?{len(self.status[key])}"] = status
        if loss is not None and math.isfinite(loss):
            self.best[key] = min(loss, self.best.get(key, math.inf))
        if self.live is not None:
            self.live.update(self._table())

    def _table(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.space.name}")
        reps = self.space.search.replicates - 1
        for c in ("budget", "group", "done", "running", "failed/rejected", "best val loss",
                  *(("replicates",) if reps else ())):
            t.add_column(c, justify="right")
        for g in self.space.groups():
            key = (g.budget.value, g.label)
            st = list(self.status[key].values())
            done = sum(s in ("complete", "stopped", "diverged") for s in st)
            bad = sum(s in ("failed", "rejected") for s in st)
            best = self.best.get(key)
            extra = ()
            if reps:
                rs = list(self.replicas[key].values())
                extra = (f"{sum(s not in ('running', 'pending') for s in rs)}/{reps}",)
            t.add_row(f"{g.budget.value:.3g}", g.label, f"{done}/{g.n_samples(self.space)}",
                      str(st.count("running")), str(bad), "-" if best is None else f"{best:.4f}",
                      *extra)
        return t
