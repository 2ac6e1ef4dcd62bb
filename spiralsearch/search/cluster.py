"""Ray's lifecycle and resources for a sweep: start or join Ray, each trial's resources,
how many trials fit at once, and refusing a space the cluster can never schedule.
"""


from __future__ import annotations

import logging
import os

from spiralsearch.search.space import (
    SearchSpace,
)


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


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """Ray resources of one trial: CPUs and (fractional) GPUs, so Ray packs trials onto
    GPUs (gpu: 0.5 puts two trials on each GPU)."""
    return {"cpu": space.resources.cpu, "gpu": space.resources.gpu}


def _slots(space: SearchSpace) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // max(space.resources.cpu, 1e-9)))


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
