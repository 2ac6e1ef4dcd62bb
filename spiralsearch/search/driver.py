"""Sweeps: a YAML search space run by Ray Tune with Optuna, results in DuckDB (docs/design.md
§4). Every (budget, group) of the space (groups per search.group_by: families by default)
runs `samples_per_budget` trials proposed by its own Optuna study, with its own ASHA rungs, so
each group gets the same number of shots at each budget (fair frontiers); all groups share
one Tuner, so trial slots never idle. With search.replicates = R > 1, a second phase then
re-runs each cell's selected point R - 1 times with other seeds (replicates.py). Trial
workers only report to Ray Tune; the driver's `StoreCallback` is the single writer of the
results file. Last, the checkpoints that search.keep_checkpoints does not keep are deleted
(checkpoints.py).
"""


from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from spiralsearch.schema import FINAL_STATUSES, Status
from spiralsearch.search import replicates
from spiralsearch.search.candidates import check_candidates
from spiralsearch.search.checkpoints import checkpoints_dir, prune, runs_dir
from spiralsearch.search.cluster import _check_cluster, _slots, start_ray, trial_resources
from spiralsearch.search.recorder import LiveView, StoreCallback
from spiralsearch.search.resume import KnownTrials, Previous
from spiralsearch.search.samplers import make_sampler
from spiralsearch.search.space import (
    Group,
    SearchSpace,
    load_space,
)
from spiralsearch.search.worker import OBJECTIVE, run_trial
from spiralsearch.store import ResultsStore, store_path


@dataclass
class SweepReport:
    """What a sweep run did: results path and trial counts by status."""

    name: str
    results: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0


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

    from spiralsearch.search.grouped import FixedSearch

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


def _run_all(space: SearchSpace, *, store: ResultsStore, prev: Previous, checkpoints: Path,
             storage: Path, max_concurrent: int | None, view: LiveView | None,
             callbacks: tuple = ()) -> int:
    """One Tuner for every group, each with its own searcher and ASHA rungs (see grouped.py);
    returns how many trials it launched. Trials an earlier run left unfinished go first and
    resume from their checkpoints."""
    from ray.tune.schedulers import FIFOScheduler

    from spiralsearch.search.grouped import GroupedASHA, GroupedSearch

    s, groups = space.search, space.groups()
    quotas = [_quota(space, g, grp, prev) for g, grp in enumerate(groups)]
    if sum(quotas) == 0:
        return 0
    searcher = GroupedSearch([_searcher(space, g, grp, prev) for g, grp in enumerate(groups)],
                             quotas, metric=OBJECTIVE, mode=s.mode,
                             first=[prev.unfinished.get(g, []) for g in range(len(groups))],
                             known=KnownTrials(space, groups, prev.done))
    scheduler = (GroupedASHA(len(groups), OBJECTIVE, s.mode, s.grace_evals)
                 if s.scheduler == "asha" else FIFOScheduler())
    _fit(space, groups, searcher, scheduler, sum(quotas), name=space.name, store=store,
         done=prev.done, checkpoints=checkpoints, storage=storage,
         max_concurrent=max_concurrent, view=view, callbacks=callbacks)
    return sum(quotas)


def _run_replicates(space: SearchSpace, points: list[dict], *, store: ResultsStore,
                    checkpoints: Path, storage: Path,
                    max_concurrent: int | None, view: LiveView | None,
                    callbacks: tuple = ()) -> int:
    """The second phase: the replicates of each cell's selected point ({"group", "params",
    "replicate"} each), in one Tuner with no early stopping (they measure, not search);
    returns how many it launched."""
    from ray.tune.schedulers import FIFOScheduler

    from spiralsearch.search.grouped import PointSearch

    if not points:
        return 0
    searcher = PointSearch(points, metric=OBJECTIVE, mode=space.search.mode)
    _fit(space, space.groups(), searcher, FIFOScheduler(), len(points),
         name=f"{space.name}-replicates", store=store, done={}, checkpoints=checkpoints,
         storage=storage, max_concurrent=max_concurrent, view=view, callbacks=callbacks)
    return len(points)


def _fit(space: SearchSpace, groups: list[Group], searcher, scheduler, n: int, *, name: str,
         store: ResultsStore, done: dict[str, dict], checkpoints: Path, storage: Path,
         max_concurrent: int | None, view: LiveView | None, callbacks: tuple) -> None:
    """One Tuner run of `n` trials proposed by `searcher`, recorded by a StoreCallback."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    s = space.search
    limit = max_concurrent or s.max_concurrent or _slots(space)
    trainable = tune.with_parameters(run_trial, space=space, groups=groups, done=done,
                                     checkpoints=str(checkpoints))
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(space)),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, limit),
                                    scheduler=scheduler, num_samples=n,
                                    metric=OBJECTIVE, mode=s.mode,
                                    reuse_actors=True),  # no new process (torch import) per trial
        run_config=tune.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage),
            verbose=0, callbacks=[StoreCallback(store, space.name, space, groups, view),
                                  *callbacks],
            failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()


def run_sweep(space: SearchSpace | str | Path, *, results: str | Path | None = None,
              address: str | None = None, max_concurrent: int | None = None,
              progress: bool = True, callbacks: tuple = ()) -> SweepReport:
    """Run every (budget, group) of a search space; returns counts by status.

    Results go to `results` (default results/NAME.duckdb). Ray: joins `address`, or uses
    the Ray already initialised in this process, or starts a local one for the run. Extra
    Ray Tune `callbacks` see every trial (benchmarks use this)."""
    t0 = time.perf_counter()
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    check_candidates(space)  # a (budget, group) that no candidate can run: refuse now
    path = Path(results) if results else store_path(space.name)
    path = path.resolve()
    store = ResultsStore(path)
    groups = space.groups()
    prev = Previous.load(path, space, groups)
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
    work = runs_dir(path)
    try:
        with LiveView(space, enabled=progress) as view:
            for tid, r in prev.done.items():
                view.update(groups[prev.group_of[tid]], tid, "complete", r.get("final_val_loss"))
            for tid, t in prev.trials.items():
                if t.replicate and t.status in FINAL_STATUSES:
                    view.update(groups[t.group], tid, t.status, replicate=t.replicate)
            dirs = dict(checkpoints=checkpoints_dir(path), storage=work / "ray")
            _run_all(space, store=store, prev=prev, max_concurrent=max_concurrent, view=view,
                     callbacks=callbacks, **dirs)
            # the cells' searches are done: select each one's point from what is stored
            searched = Previous.load(path, space, groups)
            selected = replicates.select(space, searched)
            replicates.mark_selected(store, space, groups, searched, selected)
            _run_replicates(space, replicates.pending(space, groups, searched, selected),
                            store=store, max_concurrent=max_concurrent,
                            view=view, callbacks=callbacks, **dirs)
        # selection is final only now; an interrupted run prunes nothing (the next one will)
        prune(store, space)
        status = "complete"
    finally:
        store.end_sweep(space.name, status)
        if owns_ray:
            import ray

            ray.shutdown()
    skipped = len(prev.done) + sum(t.replicate > 0 and t.status == Status.COMPLETE
                                   for t in prev.trials.values())
    return SweepReport(space.name, path, _count(store, space.name), skipped,
                       time.perf_counter() - t0)


def _prepare_data(space: SearchSpace) -> None:
    """Load (and on first use tokenize and cache) every data source of the space once, in
    the driver: a missing file stops the sweep before any trial, and trials never race to
    build the same cache."""
    import itertools

    from spiralsearch.config import DataConfig
    from spiralsearch.search.validate import values_of
    from spiralsearch.training.loop import load_split

    keys = ("source", "tokenizer", "val_fraction", "test_fraction", "split_seed")
    options = [values_of(space.data.get(k, getattr(DataConfig(), k))) for k in keys]
    for combo in itertools.product(*options):
        load_split(DataConfig(**dict(zip(keys, combo, strict=True))))


def _count(store: ResultsStore, sweep: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in store.trial_status(sweep).values():
        counts[s] += 1
    return dict(counts)
