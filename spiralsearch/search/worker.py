"""The trial, run inside a Ray worker: resolve its config, train it, report every evaluation
to Ray Tune (docs/design.md §4). A trial's own failure (a refused budget, a divergence, an
exception) becomes a final report with its status and error, so the sweep goes on; running
out of memory is raised to Ray instead, which retries it (search.max_failures, failures.py).
With resources.workers > 1 it trains on that many data-parallel Ray Train workers
(parallel.py) and reports rank 0's evaluations. Its folder (checkpoints and summary.json)
stays when it ends; the driver prunes the folders
that search.keep_checkpoints does not keep once the sweep is done (checkpoints.py).
"""


from __future__ import annotations

import json
import math
from pathlib import Path

from spiralsearch.config import TrialConfig
from spiralsearch.schema import METRIC_KEYS, SUMMARY_KEYS, Status, pick
from spiralsearch.search.failures import TrialOutOfMemory, is_oom, memory_limit
from spiralsearch.search.space import (
    Group,
    Resources,
    SearchSpace,
    size_target,
    trial_config,
)
from spiralsearch.search.storage import join

OBJECTIVE = "objective"  # the search metric, in every report (Optuna and ASHA read it)


def objective(metric: str, row: dict, best_val_loss: float) -> float:
    """The search metric at an evaluation: val loss (nats/token), the best val loss so far,
    or val bits per byte."""
    if metric == "best_val_loss":
        return best_val_loss
    return row.get("val_bpb" if metric == "final_val_bpb" else "val_loss", math.nan)


def placed(config: TrialConfig, resources: Resources,
           base_dir: str | Path | None = None) -> TrialConfig:
    """The trial as a worker trains it: `train.threads` from resources.cpu (whole cores,
    at least 1), an `auto` device from resources.gpu (an explicit device in the space
    wins), and a relative data path anchored to `base_dir`, the folder the sweep was started
    from (Ray runs each trial in a folder of its own). None of these is part of the trial's
    identity, but the thread count changes how float sums are split, so `rerun` places a
    stored trial the same way to reproduce it."""
    run = dict(threads=max(1, int(resources.cpu)))
    if config.train.device == "auto":
        run["device"] = "cuda" if resources.gpu > 0 else "cpu"
    config = config.replace(train=config.train.replace(**run))
    if base_dir is not None:
        from spiralsearch.data.sources import anchored

        source = anchored(config.data.source, base_dir)
        config = config.replace(data=config.data.replace(source=source))
    return config


def run_trial(trial: dict, *, space: SearchSpace, groups: list[Group], done: dict[str, dict],
              checkpoints: str, base_dir: str | None = None, report=None) -> None:
    """Train one sampled configuration ({"group": index, "params": flat sampled options},
    and "replicate": r for re-run r of a selected point: train.seed + r), reporting every
    evaluation to Ray Tune.

    Never raises for a trial's own failure: a refused budget, a divergence or an exception
    becomes a final report with its status and error, so the sweep goes on. Running out of
    memory (past resources.memory_gb, or the machine's) raises TrialOutOfMemory, so Ray
    retries the trial from its last checkpoint."""
    if report is None:
        from ray import tune

        report = tune.report
    group = groups[trial["group"]]
    config = trial_config(space, groups, trial)
    tid = config.trial_id
    # Ray stamps its own `trial_id` on every result, so ours travels as `config_hash`.
    spec = str(config.model.spec)
    base = dict(config_hash=tid, family=space.family_of(spec), group_name=group.name,
                budget_target=group.budget.value, size_index=group.size,
                size_target=size_target(space, group, trial["params"]))
    if tid in done:  # complete in an earlier run of this sweep (maybe before group names)
        report(base | done[tid] | {"cached": True, "group_name": group.name})
        return
    from spiralsearch.training.loop import prepare

    nan = math.nan
    failed = {OBJECTIVE: nan, "val_loss": nan, "final_val_loss": nan, "best_val_loss": nan,
              "final_val_bpb": nan}
    try:
        cfg = placed(config, space.resources, base_dir)
        _, plan = prepare(cfg)
    except ValueError as e:  # refused before training (budget, data)
        report(base | failed | dict(status=Status.REJECTED.value, error=str(e)))
        return
    # known before training, so even a trial ASHA stops early has them in the store
    base |= dict(params_non_embedding=plan.params_non_embedding,
                 flops_per_token=plan.flops_per_token, budget_kind=plan.kind,
                 planned_steps=plan.steps)  # for the progress display
    out = join(checkpoints, tid)  # a folder, or a URI that the trainer mirrors

    best = [math.inf]

    def on_eval(row: dict) -> None:
        best[0] = min(best[0], row["val_loss"])
        report(base | dict(status=Status.RUNNING.value) | row
               | {OBJECTIVE: objective(space.search.metric, row, best[0])})

    from spiralsearch.search.parallel import WorkersLost, trainer

    fit = trainer(space.resources, checkpoints)  # train, or on K data-parallel workers
    try:
        with memory_limit(space.resources.memory_gb if cfg.train.device == "cpu" else None):
            result = fit(cfg, out_dir=out, callback=on_eval)
    except WorkersLost:  # a worker's process or node died: Ray retries and records it
        raise
    except Exception as e:  # noqa: BLE001 — any crash is this trial's failure, not the sweep's
        if is_oom(e):  # the memory is freed by now; Ray retries (and records) it
            raise TrialOutOfMemory(f"{type(e).__name__}: {_first_line(e)}"
                                   + _oom_advice(cfg, space.resources)) from None
        report(base | failed | dict(status=Status.FAILED.value, failure="raised",
                                    error=f"{type(e).__name__}: {e}"))
        return
    s = result.summary
    last = result.metrics[-1] if result.metrics else {}
    # every evaluation again, restored ones included: a report that a kill or a Ctrl-C cut
    # off before it reached the store lands now (metrics upsert by step: no duplicates). As
    # JSON text: Ray's TensorBoard logger warns about a list, and skips text quietly.
    report(base | pick(last, METRIC_KEYS) | pick(s, SUMMARY_KEYS)
           | {OBJECTIVE: objective(space.search.metric, last, s["best_val_loss"]),
              "history": json.dumps(result.metrics)})
    # `out` stays: selection is only known once the sweep is done (checkpoints.prune)


def _oom_advice(config: TrialConfig, resources: Resources) -> str:
    """What to change after a trial ran out of memory: on a GPU its micro-batches (not part
    of its identity, so the sweep goes on with its trials) or its share; on the CPU the
    limit it ran under."""
    if config.train.device == "cuda":
        return ("; lower train.micro_batch (the sweep goes on with the trials it has) or give "
                "each trial a larger resources.gpu share")
    limit = resources.memory_gb
    return f" (limit resources.memory_gb: {limit:g})" if limit else ""


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0][:300] if lines else ""
