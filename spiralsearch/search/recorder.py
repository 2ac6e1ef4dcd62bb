"""The sweep driver's view of its trials: the single writer of the results file, and what it
tells the progress display (docs/design.md §4). Both are Ray Tune callbacks' state, kept in
the driver. Every way a trial ends lands here: complete, stopped (ASHA), diverged, rejected
or raised (the worker's own final report), its worker lost (Ray's error, classified by
failures.py, after search.max_failures retries), or interrupted (a signal to the driver).
"""

from __future__ import annotations

import json
import math
import signal
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
from spiralsearch.search.failures import classify
from spiralsearch.search.interrupts import Interrupts
from spiralsearch.search.progress import LiveView
from spiralsearch.search.space import Group, SearchSpace, size_target, trial_config
from spiralsearch.store import ResultsStore

__all__ = ["LiveView", "StoreCallback"]


class StoreCallback(Callback):
    """The single writer: trial rows and metrics into DuckDB in short, batched transactions
    (at most every `flush_s` seconds, and at every trial end). Opens nothing until the first
    write, as Ray pickles callbacks with the run config. `interrupts`: once a signal came,
    a trial whose worker dies is `interrupted`, not failed (a Ctrl-C reaches the workers
    too), and `interrupt()` marks the trials still running."""

    def __init__(self, store: ResultsStore, sweep: str, space: SearchSpace, groups: list[Group],
                 view: LiveView | None = None, flush_s: float = 2.0,
                 interrupts: Interrupts | None = None):
        self.store, self.sweep, self.space, self.groups = store, sweep, space, groups
        self.view, self.flush_s, self.interrupts = view, flush_s, interrupts
        self._trials: list[dict] = []
        self._metrics: dict[str, list[dict]] = defaultdict(list)
        self._best: dict[str, float] = {}  # lowest val loss reported so far, per trial
        self._live: dict[str, object] = {}  # Ray trial id -> trial, started and not ended
        self._last: dict[str, dict] = {}  # Ray trial id -> its last evaluation report
        self._retries: dict[str, list[str]] = defaultdict(list)  # why earlier attempts ended
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
                    spec=spec, replicate=r, point_id=config.point_id,
                    attempts=_attempts(trial)) \
            | ({"selected": True} if r else {}) | fields

    def _view(self, trial, status: str, loss: float | None = None, **kw) -> None:
        if self.view:
            self.view.update(self._group(trial), self._config(trial).trial_id, status, loss,
                             replicate=_replicate(trial), **kw)

    def _interrupted(self) -> bool:
        return self.interrupts is not None and self.interrupts.signum is not None

    def _history(self, trial, error: str | None) -> str | None:
        """The trial's error, after why its earlier attempts ended (if it was retried)."""
        earlier = self._retries.get(trial.trial_id)
        if not earlier:
            return error
        return "; ".join(([error] if error else []) + earlier)[-2000:]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._live[trial.trial_id] = trial
        self._trials.append(self._row(trial, status=Status.RUNNING.value,
                                      error=self._history(trial, None)))
        self._view(trial, "running")
        self._flush(force=True)  # readers see what runs; a killed driver leaves it `running`

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("status") == Status.RUNNING and "step" in result:
            tid = result["config_hash"]
            self._metrics[tid].append(pick(result, METRIC_KEYS))
            self._best[tid] = min(self._best.get(tid, math.inf), result["val_loss"])
            self._last[trial.trial_id] = result
            if self.view:
                self.view.step(tid, result["step"], result.get("planned_steps"),
                               result.get("train_flops"))
        if time.monotonic() - self._last_flush > self.flush_s:
            self._flush()

    def on_step_end(self, iteration, trials, **info):
        if self.view:
            self.view.tick()

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Ray will run the trial again (search.max_failures): it resumes from its last
        checkpoint. Recorded as still running, with why this attempt ended."""
        failure, reason = classify(*_error(trial))
        n = _attempts(trial, ended=True)  # the attempt that just ended
        self._retries[trial.trial_id].append(f"attempt {n} ended ({failure}): {reason}")
        self._trials.append(self._row(trial, status=Status.RUNNING.value,
                                      error=self._history(trial, "retrying from its last "
                                                          "checkpoint")))
        self._flush(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._live.pop(trial.trial_id, None)
        r = trial.last_result or {}
        status = r.get("status", Status.FAILED.value)
        if status == Status.RUNNING:  # the scheduler (ASHA) stopped it early
            status = Status.STOPPED.value
        fields = {k: v for k, v in pick(r, SUMMARY_KEYS).items()
                  if k not in ("family", "spec", "attempts", *CELL_KEYS, *REPLICATE_KEYS)}
        if status == Status.STOPPED:
            fields |= _so_far(r, self._best.get(r.get("config_hash"), math.nan))
        if "step" in r and r.get("status") != Status.RUNNING and not r.get("cached"):
            self._metrics[r["config_hash"]].append(pick(r, METRIC_KEYS))
        for row in json.loads(r.get("history") or "[]"):  # all of a finished trial's evaluations
            self._metrics[r["config_hash"]].append(pick(row, METRIC_KEYS))
        fields["error"] = self._history(trial, fields.get("error"))
        if status != Status.FAILED:
            fields["failure"] = None
        self._trials.append(self._row(trial, **(fields | dict(status=status))))
        self._view(trial, status, fields.get("final_val_loss", r.get("final_val_loss")),
                   seconds=r.get("wall_seconds"), flops=r.get("train_flops"),
                   failure=fields.get("failure"))
        self._flush(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        """Ray gave up on the trial: its worker died, ran out of memory or lost its node,
        max_failures times over. After a signal to the driver it was interrupted."""
        self._live.pop(trial.trial_id, None)
        if self._interrupted():
            self._mark_interrupted(trial)
            return
        failure, reason = classify(*_error(trial))
        self._trials.append(self._row(trial, status=Status.FAILED.value, failure=failure,
                                      attempts=_attempts(trial, ended=True),
                                      error=self._history(trial, reason)))
        self._view(trial, "failed", failure=failure)
        self._flush(force=True)

    def interrupt(self) -> int:
        """Mark every trial still running `interrupted`, with its last metrics (a re-run
        resumes it from its checkpoint); returns how many."""
        n = 0
        for trial in list(self._live.values()):
            self._mark_interrupted(trial)
            n += 1
        self._live.clear()
        self._flush(force=True)
        return n

    def _mark_interrupted(self, trial) -> None:
        signum = self.interrupts.signum if self.interrupts else None
        what = signal.Signals(signum).name if signum else "a signal"
        last = self._last.get(trial.trial_id, {})
        fields = _so_far(last, self._best.get(last.get("config_hash"), math.nan)) \
            if last else {}
        at = f" at step {last['step']}" if "step" in last else " before its first evaluation"
        fields |= {k: last[k] for k in ("tokens", "train_flops", "wall_seconds",
                                        "params_non_embedding", "flops_per_token",
                                        "budget_kind") if k in last}
        if "step" in last:
            fields["steps"] = last["step"]
        self._trials.append(self._row(trial, status=Status.INTERRUPTED.value, **fields,
                                      error=self._history(trial, f"interrupted by {what}{at}"
                                                          "; a re-run resumes it")))
        self._view(trial, "interrupted")

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_flush < self.flush_s:
            return
        if self._trials or self._metrics:
            self.store.write(trials=self._trials, metrics=dict(self._metrics))
        self._trials, self._metrics = [], defaultdict(list)
        self._last_flush = time.monotonic()


def _so_far(r: dict, best: float) -> dict:
    """A trial cut short (stopped, interrupted): its last evaluation as its final losses."""
    return dict(final_val_loss=r.get("val_loss"), final_val_bpb=r.get("val_bpb"),
                best_val_loss=best)


def _attempts(trial, ended: bool = False) -> int:
    """Times the trial's worker started: one per failure Ray counted, plus the start that
    is running (unless `ended`: the last failure ended it)."""
    try:
        failures = int(trial.run_metadata.num_failures)
    except (AttributeError, TypeError, ValueError):
        failures = 0
    return max(1, failures + (0 if ended else 1))


def _error(trial) -> tuple[BaseException | None, str | None]:
    """The exception Ray pickled for the trial's latest failure, and Ray's error text of
    it (read from the trial's local folder: the storage copy may not be synced yet)."""
    exc = text = None
    try:
        import cloudpickle

        if trial.pickled_error_file:
            with open(trial.pickled_error_file, "rb") as f:
                exc = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 — the text below is enough to classify
        exc = None
    try:
        if trial.error_file:
            with open(trial.error_file) as f:
                text = f.read().rsplit("Failure # ", 1)[-1]  # the latest failure only
    except (OSError, AttributeError):
        text = None
    if exc is None and text is None:
        try:
            text = trial.get_error()
        except Exception:  # noqa: BLE001 — no message: classify says so
            text = None
    return exc, text


def _replicate(trial) -> int:
    return trial.config.get("replicate", 0)
