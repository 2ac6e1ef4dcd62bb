"""Sweeps: a YAML search space run by Ray Tune with Optuna, results in DuckDB (DESIGN.md §4).

Every (budget, family) group of the space runs `samples_per_budget` trials proposed by its
own Optuna study, with its own ASHA rungs, so each family gets the same number of shots at
each budget (fair frontiers); all groups share one Tuner, so trial slots never idle. Trial
workers only report to Ray Tune; the driver's `StoreCallback` is the single writer of the
results file. A trial's identity is the hash of its resolved config: a re-run skips trials
already complete, warm-starts Optuna with their results, and resumes interrupted ones from
their checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from spiralsearch.recorder import LiveView, StoreCallback
from spiralsearch.schema import FINAL_STATUSES, METRIC_KEYS, SUMMARY_KEYS, Status, pick
from spiralsearch.space import (
    Group,
    SearchSpace,
    check_candidates,
    load_space,
    make_sampler,
    resolve,
)
from spiralsearch.store import ResultsStore, load, store_path

OBJECTIVE = "objective"  # the search metric, in every report (Optuna and ASHA read it)


# --- the trial, run inside a Ray worker ------------------------------------------------------


def objective(metric: str, row: dict, best_val_loss: float) -> float:
    """The search metric at an evaluation: val loss (nats/token), the best val loss so far,
    or val bits per byte."""
    if metric == "best_val_loss":
        return best_val_loss
    return row.get("val_bpb" if metric == "final_val_bpb" else "val_loss", math.nan)


def run_trial(trial: dict, *, space: SearchSpace, groups: list[Group], done: dict[str, dict],
              checkpoints: str, report=None) -> None:
    """Train one sampled configuration ({"group": index, "params": flat sampled options}),
    reporting every evaluation to Ray Tune.

    Never raises for a trial's own failure: a refused budget, a divergence or an exception
    becomes a final report with its status and error, so the sweep goes on."""
    if report is None:
        from ray import tune

        report = tune.report
    group = groups[trial["group"]]
    config = resolve(space, group, trial["params"])
    tid = config.trial_id
    # Ray stamps its own `trial_id` on every result, so ours travels as `config_hash`.
    base = dict(config_hash=tid, family=group.family, budget_target=group.budget.value)
    if tid in done:  # complete in an earlier run of this sweep
        report(base | done[tid] | {"cached": True})
        return
    from spiralsearch.train import prepare, train

    nan = math.nan
    failed = {OBJECTIVE: nan, "val_loss": nan, "final_val_loss": nan, "best_val_loss": nan,
              "final_val_bpb": nan}
    try:
        # Threads and device follow the trial's resources (not part of its identity); an
        # explicit device in the space wins.
        run = dict(threads=max(1, int(space.resources.cpu)))
        if config.train.device == "auto":
            run["device"] = "cuda" if space.resources.gpu > 0 else "cpu"
        cfg = config.replace(train=config.train.replace(**run))
        _, plan = prepare(cfg)
    except ValueError as e:  # refused before training (budget, data)
        report(base | failed | dict(status=Status.REJECTED.value, error=str(e)))
        return
    # known before training, so even a trial ASHA stops early has them in the store
    base |= dict(params_non_embedding=plan.params_non_embedding,
                 flops_per_token=plan.flops_per_token, budget_kind=plan.kind)
    out = Path(checkpoints) / tid

    best = [math.inf]

    def on_eval(row: dict) -> None:
        best[0] = min(best[0], row["val_loss"])
        report(base | dict(status=Status.RUNNING.value) | row
               | {OBJECTIVE: objective(space.search.metric, row, best[0])})

    try:
        result = train(cfg, out_dir=out, callback=on_eval)
    except Exception as e:  # noqa: BLE001 — any crash is this trial's failure, not the sweep's
        report(base | failed | dict(status=Status.FAILED.value,
                                    error=f"{type(e).__name__}: {e}"))
        return
    s = result.summary
    last = result.metrics[-1] if result.metrics else {}
    report(base | pick(last, METRIC_KEYS) | pick(s, SUMMARY_KEYS)
           | {OBJECTIVE: objective(space.search.metric, last, s["best_val_loss"])})
    if s["status"] == Status.COMPLETE:
        shutil.rmtree(out, ignore_errors=True)  # the store keeps what matters


# --- the driver -------------------------------------------------------------------------------


@dataclass
class SweepReport:
    """What a sweep run did: results path and trial counts by status."""

    name: str
    results: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0


def _quiet() -> None:
    """Our live table replaces Ray's and Optuna's console output (errors still show)."""
    import optuna

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a local run
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment boxes
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def start_ray(address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None) -> bool:
    """Connect to a cluster at `address`, or start a local Ray (dashboard off). Returns True
    when this call started or joined Ray (and so should shut it down), False if Ray was
    already up (e.g. in tests)."""
    import ray

    _quiet()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:  # "local": always a fresh Ray for this run, even if a `ray start` cluster is up
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return True


_STORED_METRIC = {"val_loss": "final_val_loss", "best_val_loss": "best_val_loss",
                  "final_val_bpb": "final_val_bpb"}  # search metric -> trials column


@dataclass
class Previous:
    """What earlier runs of this sweep left in the results file, by group index."""

    done: dict[str, dict] = field(default_factory=dict)  # complete: trial_id -> final result
    finished: dict[int, int] = field(default_factory=dict)  # trials with a final status
    evaluated: dict[int, list[tuple[dict, float]]] = field(default_factory=dict)
    unfinished: dict[int, list[dict]] = field(default_factory=dict)  # killed mid-run

    @classmethod
    def load(cls, results: Path, space: SearchSpace, groups: list[Group]) -> Previous:
        prev = cls()
        if not results.exists():
            return prev
        df = load(results)
        for r in df[df["sweep"] == space.name].to_dict("records") if len(df) else []:
            config = r["config"] if isinstance(r["config"], dict) else json.loads(r["config"])
            g = next((i for i, grp in enumerate(groups) if grp.family == r["family"]
                      and grp.budget.to_dict() == config["budget"]), None)
            if g is None:  # the YAML changed since: not part of this sweep's groups now
                continue
            params = _params(config, groups[g].optuna_space(space))
            status = r["status"]
            if status == Status.COMPLETE:
                result = pick(r, SUMMARY_KEYS)
                result[OBJECTIVE] = r[_STORED_METRIC[space.search.metric]]
                prev.done[r["trial_id"]] = result
                prev.evaluated.setdefault(g, []).append((params, result[OBJECTIVE]))
            if status in FINAL_STATUSES:
                prev.finished[g] = prev.finished.get(g, 0) + 1
            else:
                prev.unfinished.setdefault(g, []).append(params)
        return prev


def _params(config: dict, dists: dict) -> dict:
    """The flat searched options ("train.lr", ...) of a nested trial config."""
    return {k: config[k.split(".")[0]].get(k.split(".", 1)[1]) for k in dists}


def _git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    names = ("spiralsearch", "torch", "ray", "optuna", "duckdb", "fvcore")
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:  # noqa: BLE001 — a missing distribution is just not listed
            pass
    return out


def _searcher(space: SearchSpace, g: int, group: Group, prev: Previous):
    """The group's own Optuna study, warm-started with its trials completed before."""
    from ray.tune.search.optuna import OptunaSearch

    from spiralsearch.grouped import FixedSearch

    dists = group.optuna_space(space)
    if not dists:
        return FixedSearch(metric=OBJECTIVE, mode=space.search.mode)
    known = prev.evaluated.get(g, [])
    return OptunaSearch(dists, metric=OBJECTIVE, mode=space.search.mode,
                        sampler=make_sampler(space.search, space.search.seed, search_space=dists),
                        points_to_evaluate=[p for p, _ in known] or None,
                        evaluated_rewards=[v for _, v in known] or None)


def _quota(space: SearchSpace, g: int, group: Group, prev: Previous) -> int:
    """Trials still to run in a group: its samples (1 if nothing is searched) minus those
    an earlier run finished."""
    n = group.n_samples(space) if group.optuna_space(space) else 1
    return max(0, n - prev.finished.get(g, 0))


class KnownTrials:
    """Tells the grouped searcher which suggestions completed in an earlier run."""

    def __init__(self, space: SearchSpace, groups: list[Group], done: dict[str, dict]):
        self.space, self.groups, self.done = space, groups, done

    def __call__(self, g: int, params: dict) -> dict | None:
        return self.done.get(resolve(self.space, self.groups[g], params).trial_id)


def _run_all(space: SearchSpace, *, store: ResultsStore, prev: Previous, checkpoints: Path,
             storage: Path, max_concurrent: int | None, view: LiveView | None,
             callbacks: tuple = ()) -> int:
    """One Tuner for every group, each with its own searcher and ASHA rungs (see grouped.py);
    returns how many trials it launched. Trials an earlier run left unfinished go first and
    resume from their checkpoints."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from spiralsearch.grouped import GroupedASHA, GroupedSearch

    s, groups = space.search, space.groups()
    quotas = [_quota(space, g, grp, prev) for g, grp in enumerate(groups)]
    if sum(quotas) == 0:
        return 0
    searcher = GroupedSearch([_searcher(space, g, grp, prev) for g, grp in enumerate(groups)],
                             quotas, metric=OBJECTIVE, mode=s.mode,
                             first=[prev.unfinished.get(g, []) for g in range(len(groups))],
                             known=KnownTrials(space, groups, prev.done))
    limit = max_concurrent or s.max_concurrent or _slots(space)
    scheduler = (GroupedASHA(len(groups), OBJECTIVE, s.mode, s.grace_evals)
                 if s.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_parameters(run_trial, space=space, groups=groups, done=prev.done,
                                     checkpoints=str(checkpoints))
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(space)),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, limit),
                                    scheduler=scheduler, num_samples=sum(quotas),
                                    metric=OBJECTIVE, mode=s.mode,
                                    reuse_actors=True),  # no new process (torch import) per trial
        run_config=tune.RunConfig(
            name=f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage),
            verbose=0, callbacks=[StoreCallback(store, space.name, space, groups, view),
                                  *callbacks],
            failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
    return sum(quotas)


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """Ray resources of one trial: CPUs and (fractional) GPUs, so Ray packs trials onto
    GPUs (gpu: 0.5 puts two trials on each GPU)."""
    return {"cpu": space.resources.cpu, "gpu": space.resources.gpu}


def _slots(space: SearchSpace) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // max(space.resources.cpu, 1e-9)))


def run_sweep(space: SearchSpace | str | Path, *, results: str | Path | None = None,
              address: str | None = None, max_concurrent: int | None = None,
              progress: bool = True, callbacks: tuple = ()) -> SweepReport:
    """Run every (budget, family) group of a search space; returns counts by status.

    Results go to `results` (default results/NAME.duckdb). Ray: joins `address`, or uses
    the Ray already initialised in this process, or starts a local one for the run. Extra
    Ray Tune `callbacks` see every trial (benchmarks use this)."""
    t0 = time.perf_counter()
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    check_candidates(space)  # a (budget, family) group that no candidate can run: refuse now
    path = Path(results) if results else store_path(space.name)
    path = path.resolve()
    store = ResultsStore(path)
    prev = Previous.load(path, space, space.groups())
    owns_ray = start_ray(address)
    status = "interrupted"
    try:
        _check_cluster(space)
        _prepare_data(space)
    except BaseException:
        if owns_ray:
            import ray

            ray.shutdown()
        raise
    store.begin_sweep(space.name, space.yaml_text, git_revision=_git_revision(),
                      versions=_versions())
    work = path.parent / f"{path.stem}.runs"
    try:
        with LiveView(space, enabled=progress) as view:
            for tid, r in prev.done.items():
                group = next(g for g in space.groups() if g.family == r["family"]
                             and g.budget.value == r["budget_target"])
                view.update(group, tid, "complete", r.get("final_val_loss"))
            _run_all(space, store=store, prev=prev, checkpoints=work / "checkpoints",
                     storage=work / "ray", max_concurrent=max_concurrent, view=view,
                     callbacks=callbacks)
        status = "complete"
    finally:
        store.end_sweep(space.name, status)
        if owns_ray:
            import ray

            ray.shutdown()
    return SweepReport(space.name, path, _count(store, space.name), len(prev.done),
                       time.perf_counter() - t0)


class ClusterError(ValueError):
    """The Ray cluster cannot run one trial of this space (too few CPUs or GPUs)."""


def _check_cluster(space: SearchSpace) -> None:
    """Refuse a space whose trials the cluster can never schedule (Ray would wait forever)."""
    import ray

    have = ray.cluster_resources()
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        need = getattr(space.resources, key)
        if need > have.get(name, 0):
            raise ClusterError(f"resources.{key}: each trial asks {need:g} {name}s but the Ray "
                               f"cluster has {have.get(name, 0):g}; lower it, or run on a "
                               f"cluster that has them (--address)")


def _prepare_data(space: SearchSpace) -> None:
    """Load (and on first use tokenize and cache) every data source of the space once, in
    the driver: a missing file stops the sweep before any trial, and trials never race to
    build the same cache."""
    import itertools

    from spiralsearch.config import DataConfig
    from spiralsearch.data import load_dataset
    from spiralsearch.validate import values_of

    keys = ("source", "tokenizer", "val_fraction", "split_seed")
    options = [values_of(space.data.get(k, getattr(DataConfig(), k))) for k in keys]
    for source, tokenizer, val_fraction, seed in itertools.product(*options):
        load_dataset(source, tokenizer, val_fraction=val_fraction, seed=seed)


def _count(store: ResultsStore, sweep: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in store.trial_status(sweep).values():
        counts[s] += 1
    return dict(counts)
