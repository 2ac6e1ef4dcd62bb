"""Sweeps: a YAML search space run by Ray Tune with Optuna, results in DuckDB (docs/design.md
§4). Every (budget, group) of the space (groups per search.group_by: families by default)
runs `samples_per_budget` trials proposed by its own Optuna study, with its own ASHA rungs, so
each group gets the same number of shots at each budget (fair frontiers); all groups share
one Tuner, so trial slots never idle. With search.replicates = R > 1, a second phase then
re-runs each cell's selected point R - 1 times with other seeds (replicates.py). Trial
workers only report to Ray Tune; the driver's `StoreCallback` is the single writer of the
results file. Last, the checkpoints that search.keep_checkpoints does not keep are deleted
(checkpoints.py).

Before the first trial it checks what the run needs (preflight.py) and which sweep of the
results file it continues (history.py: an edited YAML is refused unless force_new). A
trial's worker that dies is retried search.max_failures times, then recorded with its
reason (failures.py); SIGINT or SIGTERM stops the sweep with its running trials recorded
`interrupted` (interrupts.py), and a re-run resumes them.
"""


from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from spiralsearch.schema import Status
from spiralsearch.search import replicates
from spiralsearch.search.candidates import cell_costs, check_candidates
from spiralsearch.search.checkpoints import check_storage, checkpoints_dir, prune
from spiralsearch.search.cluster import (
    _check_cluster,
    ray_nodes,
    slots,
    start_ray,
    trial_resources,
)
from spiralsearch.search.history import sweep_name
from spiralsearch.search.interrupts import Interrupts, OnSignal, SweepInterrupted
from spiralsearch.search.parallel import driver_resources
from spiralsearch.search.preflight import cell_flops, check_data
from spiralsearch.search.progress import plan_of
from spiralsearch.search.recorder import LiveView, StoreCallback
from spiralsearch.search.rekey import rekey
from spiralsearch.search.resume import KnownTrials, Previous
from spiralsearch.search.samplers import make_sampler
from spiralsearch.search.space import (
    Group,
    SearchSpace,
    load_space,
)
from spiralsearch.search.storage import join
from spiralsearch.search.worker import OBJECTIVE, run_trial
from spiralsearch.store import ResultsStore, store_path


@dataclass
class SweepReport:
    """What a sweep run did: results path, trial counts by status (every trial of the
    sweep's groups, earlier runs' included), how many were complete before this run, and
    a note when it ran under another name than the YAML's (history.py)."""

    name: str
    results: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0
    note: str | None = None


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


def _run_all(space: SearchSpace, *, store: ResultsStore, prev: Previous,
             checkpoints: Path | str, storage: Path | str, max_concurrent: int | None,
             view: LiveView | None, interrupts: Interrupts, callbacks: tuple = ()) -> int:
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
         max_concurrent=max_concurrent, view=view, interrupts=interrupts, callbacks=callbacks)
    return sum(quotas)


def _run_replicates(space: SearchSpace, points: list[dict], *, store: ResultsStore,
                    checkpoints: Path | str, storage: Path | str,
                    max_concurrent: int | None, view: LiveView | None,
                    interrupts: Interrupts, callbacks: tuple = ()) -> int:
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
         storage=storage, max_concurrent=max_concurrent, view=view, interrupts=interrupts,
         callbacks=callbacks)
    return len(points)


def _fit(space: SearchSpace, groups: list[Group], searcher, scheduler, n: int, *, name: str,
         store: ResultsStore, done: dict[str, dict],
         checkpoints: Path | str, storage: Path | str,
         max_concurrent: int | None, view: LiveView | None, interrupts: Interrupts,
         callbacks: tuple) -> None:
    """One Tuner run of `n` trials proposed by `searcher`, recorded by a StoreCallback. A
    signal ends it (OnSignal); the trials it cut off are then recorded `interrupted`."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    s = space.search
    limit = slots(space, ray_nodes(), max_concurrent)
    trainable = tune.with_parameters(run_trial, space=space, groups=groups, done=done,
                                     checkpoints=str(checkpoints), base_dir=str(Path.cwd()))
    # a data-parallel trial's Tune trial only drives its Train workers, which ask their own
    resources = trial_resources(space) if space.resources.workers == 1 else \
        driver_resources(space.resources)
    recorder = StoreCallback(store, space.name, space, groups, view, interrupts=interrupts)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, limit),
                                    scheduler=scheduler, num_samples=n,
                                    metric=OBJECTIVE, mode=s.mode,
                                    reuse_actors=True),  # no new process (torch import) per trial
        run_config=tune.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage),
            verbose=0, callbacks=[recorder, *callbacks], stop=OnSignal(interrupts),
            # a trial whose worker dies runs again, from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=s.max_failures)))
    interrupts.tuning = True
    try:
        tuner.fit()
    finally:
        interrupts.tuning = False
        if interrupts.signum is not None:
            recorder.interrupt()


def run_sweep(space: SearchSpace | str | Path, *, results: str | Path | None = None,
              address: str | None = None, max_concurrent: int | None = None,
              progress: bool | str | None = True, callbacks: tuple = (),
              retry_failed: bool = False, force_new: bool = False) -> SweepReport:
    """Run every (budget, group) of a search space; returns counts by status.

    Results go to `results` (default results/NAME.duckdb). Ray: joins `address`, or uses
    the Ray already initialised in this process, or starts a local one for the run. Extra
    Ray Tune `callbacks` see every trial (benchmarks use this). `progress`: True (a live
    table on a terminal, else plain lines), 'live', 'plain', or False/None. `retry_failed`:
    failed trials run again. `force_new`: start a new sweep name (NAME-2, ...) rather than
    continue the file's sweep of this name; without it, a sweep of this name that ran
    another YAML is refused (history.SweepChanged).

    SIGINT/SIGTERM raise SweepInterrupted once the trials cut off are recorded
    `interrupted` and the sweep is stamped so; a re-run resumes them."""
    t0 = time.perf_counter()
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    path = Path(results) if results else store_path(space.name)
    path = path.resolve()
    store = ResultsStore(path)
    space, note = sweep_name(store, space, force_new=force_new)
    moved = rekey(store)  # ids from an older identity rule: before anything reads them
    if moved:
        note = "; ".join(filter(None, [note, f"{len(moved)} stored trial(s) moved to the "
                                       f"ids this version gives them (rekey.py)"]))
    check_candidates(space)  # a (budget, group) that no candidate can run: refuse now
    groups = space.groups()
    prev = Previous.load(path, space, groups, retry_failed=retry_failed)
    plan = plan_of(space, cell_flops(cell_costs(space)))
    owns_ray = start_ray(address)
    status, begun = "interrupted", False
    try:
        with Interrupts() as interrupts:
            _check_cluster(space)
            runs = check_storage(path, space.storage)
            check_data(space)
            store.begin_sweep(space.name, space.yaml_text, git_revision=_git_revision(),
                              versions=_versions())
            begun = True
            mode = "auto" if progress is True else (progress or None)
            with LiveView(space, mode=mode, plan=plan) as view:
                _show_previous(view, prev, groups)
                run = dict(store=store, max_concurrent=max_concurrent, view=view,
                           interrupts=interrupts, callbacks=callbacks,
                           checkpoints=checkpoints_dir(path, space.storage),
                           storage=join(runs, "ray"))
                _run_all(space, prev=prev, **run)
                interrupts.check()
                # the cells' searches are done: select each one's point from what is stored
                searched = Previous.load(path, space, groups, retry_failed=retry_failed)
                selected = replicates.select(space, searched)
                replicates.mark_selected(store, space, groups, searched, selected)
                _run_replicates(space, replicates.pending(space, groups, searched, selected),
                                **run)
                interrupts.check()
            # selection is final only now; an interrupted run prunes nothing (the next one will)
            prune(store, space)
            status = "complete"
    except SweepInterrupted as e:
        if begun:
            store.end_sweep(space.name, status)
            begun = False
        raise SweepInterrupted(e.signum, _interrupted(space, path, e)) from None
    finally:
        if begun:
            store.end_sweep(space.name, status)
        if owns_ray:
            import ray

            ray.shutdown()
    after = Previous.load(path, space, groups)
    return SweepReport(space.name, path, after.counts(), _complete(prev),
                       time.perf_counter() - t0, note)


def _show_previous(view: LiveView, prev: Previous, groups: list[Group]) -> None:
    """Put what earlier runs finished into the progress display."""
    for tid, t in prev.trials.items():
        if prev.settled(t.status) and (t.replicate or t.status == Status.COMPLETE):
            view.update(groups[t.group], tid, t.status,
                        prev.done.get(tid, {}).get("final_val_loss"), replicate=t.replicate,
                        flops=t.train_flops, before=True)


def _complete(prev: Previous) -> int:
    """Trials of the sweep's groups that were complete before this run."""
    return sum(t.status == Status.COMPLETE for t in prev.trials.values())


def _interrupted(space: SearchSpace, path: Path, e: SweepInterrupted) -> str:
    """What an interrupted sweep left, and how to resume it."""
    counts = Previous.load(path, space, space.groups()).counts() if path.exists() else {}
    shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    return (f"sweep {space.name} interrupted by {e.name}: {shown} in {path}; run the same "
            f"command again to resume (interrupted trials continue from their checkpoints)")
