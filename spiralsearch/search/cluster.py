"""Ray's lifecycle and resources for a sweep: start or join Ray (quietly), each trial's
resources, how many trials fit at once, and refusing a space that the cluster (or, for a
dry run, this machine) can never schedule.
"""


from __future__ import annotations

import logging
import os
import warnings

from spiralsearch.search.failures import GIB
from spiralsearch.search.space import (
    SearchSpace,
)


def _quiet() -> None:
    """Our live table and our store replace Ray's and Optuna's console output. Ray's notes on
    a trial's failure (Tune's traceback, the raylet's "A worker died" line, "Trials did not
    complete") are recorded with the trial instead (recorder.py), so they are not printed;
    other errors still show."""
    import optuna

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a local run
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment boxes
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the store has them
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    tune_log = logging.getLogger("ray.tune")
    tune_log.setLevel(logging.WARNING)
    if not any(isinstance(f, _TrialNotes) for f in tune_log.filters):
        for name in ("ray.tune", "ray.tune.tune", "ray.tune.execution.tune_controller",
                     "ray.tune.search.optuna.optuna_search", "ray.tune.utils.util"):
            logging.getLogger(name).addFilter(_TrialNotes())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a trial that Ray retried reports its first steps again; Optuna keeps the first ones
    warnings.filterwarnings("ignore", message="The reported value is ignored because",
                            category=UserWarning)


class _TrialNotes(logging.Filter):
    """Drops Ray Tune's log records about trials that failed or did not finish (each one
    is a row of the store, with its reason) and about a grid that is done."""

    NOTES = ("Trials did not complete", "Trial task failed", "Stop signal received",
             # Optuna's grid sampler stops its study when the grid is done; under Ray's
             # ask-and-tell that raises, and Ray logs it
             "Study.stop` is supposed to be invoked",
             # Tune's timing of its own loop (a store flush on a loaded machine can take a
             # second): nothing a user can act on
             "may be a performance bottleneck")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(n in msg for n in self.NOTES)


def _mute_raylet_errors() -> None:
    """The driver prints every error the raylet publishes (a dead worker's 'A worker died
    or was killed...', with Ray's guesses at why) to stdout even with log_to_driver off;
    the trial's row holds the true reason, and stdout must stay parseable (--format
    json). Ray has no switch for it, so its printer is wrapped to drop the raylet's."""
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_spiralsearch", False):
        return

    def quiet(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            return None
        return printer(data, *args, **kwargs)

    quiet._spiralsearch = True
    ray_worker.print_to_stdstream = quiet


def start_ray(address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None) -> bool:
    """Connect to a cluster at `address`, or start a local Ray (dashboard off). Returns True
    when this call started or joined Ray (and so should shut it down), False if Ray was
    already up (e.g. in tests)."""
    import ray

    _quiet()
    if ray.is_initialized():
        _mute_raylet_errors()
        return False
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:  # "local": always a fresh Ray for this run, even if a `ray start` cluster is up
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    _mute_raylet_errors()
    return True


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """Ray Tune's resources of one (one-worker) trial: the bundle a worker asks
    (`_asks`: CPUs, fractional GPUs, so gpu: 0.5 puts two trials on each GPU, and memory
    when resources.memory_gb says), in Tune's lowercase names."""
    return {name.lower(): v for name, v in _asks(space).items()}


class ClusterError(ValueError):
    """The Ray cluster cannot run one trial of this space (too few CPUs, GPUs or memory)."""


# A node's resources use Ray's names: {"CPU": n, "GPU": n, "memory": bytes}. A trial runs on
# one node, so every check holds per node: a cluster of 2 + 1 GPUs cannot hold a 3-GPU trial.


def machine_resources() -> dict[str, float]:
    """What a local Ray would offer, without starting one: CPUs (as start_ray asks), GPUs
    (torch's count) and physical memory in bytes."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count()),
            "memory": float(memory)}


def ray_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the running Ray cluster."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _asks(space: SearchSpace) -> dict[str, float]:
    """What one trial (one worker of a data-parallel trial) asks of a node, in Ray's names:
    the same bundle its workers ask (parallel.worker_resources), zero amounts left out."""
    from spiralsearch.search.parallel import worker_resources  # parallel imports this module

    return worker_resources(space.resources)


def fits(space: SearchSpace, node: dict[str, float]) -> int:
    """How many trials of the space one node holds at once (Ray packs fractional GPUs)."""
    n = None
    for name, need in _asks(space).items():
        if need > 0:
            k = int(node.get(name, 0) // need + 1e-9)
            n = k if n is None else min(n, k)
    return n if n is not None else 1


def slots(space: SearchSpace, nodes: list[dict[str, float]],
          max_concurrent: int | None = None) -> int:
    """Trials at once: --max-concurrent, search.max_concurrent, else what the nodes hold,
    node by node: the fewest of CPU slots, GPU slots (and memory slots) on each, summed.
    So 16 CPUs and 1 GPU at gpu: 0.25 give 4, not 16 (Optuna gets no proposals it cannot
    run and learn from)."""
    if max_concurrent or space.search.max_concurrent:
        return int(max_concurrent or space.search.max_concurrent)
    # a data-parallel trial's K workers may spread over nodes: K worker slots per trial
    return max(1, sum(fits(space, n) for n in nodes) // space.resources.workers)


def check_resources(space: SearchSpace, nodes: list[dict[str, float]], where: str) -> None:
    """Refuse a space one of whose trials no single node of `nodes` can hold: Ray would wait
    forever. `where` names the machine or cluster in the message."""
    if any(fits(space, n) >= 1 for n in nodes):
        return
    one = len(nodes) == 1
    for name, key, unit, scale in (("CPU", "cpu", "CPUs", 1), ("GPU", "gpu", "GPUs", 1),
                                   ("memory", "memory_gb", "GiB", GIB)):
        need = _asks(space).get(name, 0)
        best = max((n.get(name, 0) for n in nodes), default=0)
        if need > best:
            has = f"{where} has {best / scale:.3g}" if one else (
                f"no node of {where} has that many (the most on one node: {best / scale:.3g})")
            raise ClusterError(f"resources.{key}: each trial asks {need / scale:g} {unit} but "
                               f"{has}; lower it, or run on a cluster that has them "
                               f"(--address)")
    raise ClusterError(f"resources: no node of {where} has the CPUs, GPUs and memory of one "
                       f"trial together ({_asks(space)}); nodes: {nodes}")


def totals(nodes: list[dict[str, float]]) -> dict[str, float]:
    """The cluster's resources, summed over its nodes."""
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _check_cluster(space: SearchSpace) -> list[dict[str, float]]:
    """Refuse a space whose trials the running Ray can never schedule (one worker per node,
    a data-parallel trial's workers over the whole cluster); returns its nodes."""
    from spiralsearch.search.parallel import check_workers

    nodes = ray_nodes()
    check_resources(space, nodes, "the Ray cluster")
    check_workers(space.resources, totals(nodes), "the Ray cluster")
    return nodes
