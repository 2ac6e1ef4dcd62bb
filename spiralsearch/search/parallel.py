"""Data-parallel trials (docs/design.md §4): with `resources.workers: K > 1` a trial trains on
K processes under DDP, as a Ray Train `TorchTrainer` that its Ray Tune trial launches and
waits for (Ray 2.60's Train V2 pattern: the Tune trial is the Train run's driver).

    Tune trial (run_trial; memory only) --TorchTrainer--> K workers (cpu, gpu, memory_gb each)
          ^ every evaluation's row, then the result              | rank 0
          +------------------------ _Relay actor <----------------+

Each worker runs `training.loop.train_data_parallel` on its rank (gloo on CPU, NCCL on
CUDA): worker r of K takes rows [rB/K, (r+1)B/K) of every step's batch, so the trial sees
the data, and takes the steps, of a one-worker run. Rank 0 evaluates and checkpoints into
the trial's folder, which every worker must reach (one node, or `storage:` on a shared
filesystem; it resumes from there), and hands each evaluation's row to a small relay actor,
which the Tune trial drains into its own `tune.report` (ASHA and the store read those), then
the final result. Train's own `ray.train.report` is not used: it is a barrier that every
rank must reach, and only rank 0 has anything to report.

Failures keep their true reason: a worker's own exception is raised in the Tune trial as
itself (run_trial records it `raised`, or, out of memory, has Ray retry it); a worker whose
process or node died is raised as `WorkersLost` with Ray's words, which Tune retries
(search.max_failures) from the last checkpoint and failures.classify names. Train never
retries by itself (FailureConfig(max_failures=0)). When Tune stops the trial (ASHA, a
signal), its workers are killed at once, so their CPUs and GPUs go to the next trial.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path

from spiralsearch.config import TrialConfig
from spiralsearch.search.cluster import ClusterError
from spiralsearch.search.failures import GIB, is_oom, memory_limit
from spiralsearch.search.space import Resources
from spiralsearch.search.storage import is_uri, join, mirrored, parent

__all__ = ["DRIVER_BYTES", "WorkersLost", "check_workers", "driver_resources",
           "fit_data_parallel", "trainer", "worker_error", "worker_resources"]

# What the Tune trial of a data-parallel trial asks of Ray: memory for its process, no CPU
# or GPU (its workers ask for those). Ray needs something in a bundle, and a CPU would keep
# K workers of c cores each from ever fitting a node of K*c cores.
DRIVER_BYTES = 512 * 2**20
POLL_S = 1.0  # how long the Tune trial waits on the relay before checking the run is alive
HALT_S = 5.0  # after killing a stopped trial's workers, how long to wait for Train to end


class WorkersLost(RuntimeError):
    """A data-parallel trial's worker process or node died, or Ray Train itself failed (not
    an exception of the training code): raised to Ray Tune, which retries the trial from
    its last checkpoint and records why."""


def driver_resources(resources: Resources) -> dict[str, float]:
    """Ray resources of a data-parallel trial's Tune trial, the driver of its Train run:
    DRIVER_BYTES of memory, no CPU or GPU."""
    return {"cpu": 0.0, "gpu": 0.0, "memory": float(DRIVER_BYTES)}


def worker_resources(resources: Resources) -> dict[str, float]:
    """Ray resources of one Train worker: resources.cpu, .gpu and .memory_gb (bytes)."""
    out = {"CPU": resources.cpu, "GPU": resources.gpu}
    if resources.memory_gb:
        out["memory"] = resources.memory_gb * GIB
    return {k: v for k, v in out.items() if v}


def check_workers(resources: Resources, have: dict[str, float], where: str) -> None:
    """Refuse (ClusterError) K workers whose CPUs or GPUs together exceed what `have`
    (Ray's resource names) holds: the Train run would wait forever. One worker's own fit
    on a node is the per-trial check's (cluster.check_resources)."""
    k = resources.workers
    if k == 1:
        return
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        each, total = getattr(resources, key), getattr(resources, f"trial_{key}")
        if total > have.get(name, 0):
            raise ClusterError(f"resources.workers: {k} workers ({each:g} {name} each) "
                               f"need {total:g} {name}s per trial but {where} has "
                               f"{have.get(name, 0):g}; lower workers, or run on a cluster "
                               f"that has them (--address)")


def trainer(resources: Resources, checkpoints: str | Path):
    """The function run_trial trains a trial with, `train`'s signature (config, out_dir=,
    callback=, gpu_share=): `train` itself for one worker, else fit_data_parallel on
    `resources.workers` (its Train run's files beside the sweep's checkpoints folder). An
    out_dir that is a URI is mirrored (storage.py), by every worker where it runs."""
    if resources.workers == 1:
        from spiralsearch.training.loop import train

        return mirrored(train) if is_uri(checkpoints) else train
    storage = str(join(parent(checkpoints), "ray"))
    return functools.partial(fit_data_parallel, resources=resources, storage=storage)


def fit_data_parallel(config: TrialConfig, *, out_dir: str | Path, callback=None,
                      gpu_share: float | None = None, resources: Resources, storage: str):
    """Train `config` on `resources.workers` Ray Train workers (DDP) into `out_dir`, calling
    `callback(row)` here with rank 0's row at every evaluation, in order; returns rank 0's
    TrainResult. Runs inside a Ray Tune trial (or any Ray driver); `storage` is the folder
    for Ray Train's own files. Raises a worker's own exception as itself, WorkersLost when
    a worker died. If `callback` raises (Tune stopping the trial raises SystemExit there),
    the workers are killed before it propagates."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cuda = config.train.device == "cuda"  # placed: auto became cuda or cpu; cuda:N refused
    relay = ray.remote(num_cpus=0)(_Relay).remote()
    trial = str(out_dir).rstrip("/").rsplit("/", 1)[-1]  # its folder's name, local or a URI
    loop = dict(config=config, out_dir=str(out_dir), relay=relay, cuda=cuda,
                gpu_share=gpu_share, memory_gb=resources.memory_gb)
    run = _Fit(TorchTrainer(
        _worker, train_loop_config=loop,
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=cuda,
                                               resources_per_worker=worker_resources(resources)),
        run_config=ray.train.RunConfig(
            name=f"train-{trial}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage, failure_config=ray.train.FailureConfig(max_failures=0))))
    run.start()
    try:
        result = _drain(relay, run, callback)
    finally:
        if run.is_alive():  # stopped by Tune, or the relay failed: free the workers now
            _halt(relay)
            run.join(HALT_S)
        ray.kill(relay)
    if run.error is not None:
        raise worker_error(run.error) from None
    if result is None:
        raise WorkersLost("Ray Train ended without rank 0's result")
    return result


def worker_error(error: BaseException) -> BaseException:
    """What a failed Train run raises in the Tune trial: a worker's own exception (an
    out-of-memory one first, else the lowest rank's) as itself; WorkersLost, with Ray's
    words, when a worker's process or node died (which also explains the others' broken
    collectives) or Ray Train failed in itself."""
    failures = getattr(error, "worker_failures", None) or {}
    lost = {r: e for r, e in failures.items() if _from_ray(e)}
    own = {r: e for r, e in sorted(failures.items()) if r not in lost}
    if lost or not own:
        rank, e = min(lost.items()) if lost else (None, error)
        who = "Ray Train" if rank is None else f"data-parallel worker {rank} lost"
        return WorkersLost(f"{who}: {type(e).__name__}: {e}")
    oom = [e for e in own.values() if is_oom(e)]
    return oom[0] if oom else next(iter(own.values()))


def _from_ray(e: BaseException) -> bool:
    """Whether a worker's failure is Ray's (a dead actor, a failed health check) rather
    than an exception its training raised: its class is Ray's own."""
    return type(e).__module__.split(".")[0] == "ray"


class _Fit(threading.Thread):
    """`trainer.fit()` in a thread, so the Tune trial's own thread stays free to report
    (and to be stopped there); `error` is what fit raised."""

    def __init__(self, trainer):
        super().__init__(name="spiralsearch-train-fit", daemon=True)
        self.trainer, self.error = trainer, None

    def run(self) -> None:
        try:
            self.trainer.fit()
        except BaseException as e:  # noqa: BLE001 — handed to the Tune trial's thread
            self.error = e


def _drain(relay, run: _Fit, callback):
    """Hand rank 0's rows to `callback` as they come, until the run has ended and the relay
    is empty; returns the TrainResult rank 0 relayed last (None if none)."""
    import ray

    result = None
    while True:
        item = ray.get(relay.get.remote(POLL_S))
        if item is None:
            if run.is_alive():
                continue
            item = ray.get(relay.get.remote(0))  # put just before the run ended
            if item is None:
                return result
        kind, value = item
        if kind == "row":
            if callback is not None:
                callback(value)
        else:
            result = value


def _halt(relay) -> None:
    """Kill the Train workers that enlisted with the relay: Train sees them dead at its
    next health check and ends the run (FailureConfig(max_failures=0))."""
    import ray

    for worker in ray.get(relay.workers.remote()):
        ray.kill(worker, no_restart=True)


def _worker(loop: dict) -> None:
    """One Ray Train worker: enlist with the relay (so a stop can kill it), train this
    rank, and on rank 0 relay every evaluation's row and the result."""
    import ray
    import ray.train
    import torch

    from spiralsearch.training.loop import train_data_parallel

    relay = loop["relay"]
    ray.get(relay.enlist.remote(ray.get_runtime_context().current_actor))
    device = torch.device("cpu")
    if loop["cuda"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)

    def report(row: dict) -> None:  # waits, so the rows arrive in order and before the end
        ray.get(relay.put.remote(("row", row)))

    main = ray.train.get_context().get_world_rank() == 0
    fit = mirrored(train_data_parallel, writer=main)  # a URI out_dir: each rank pulls it
    with memory_limit(loop["memory_gb"] if device.type == "cpu" else None):
        result = fit(loop["config"], out_dir=loop["out_dir"],
                                     callback=report if main else None,
                                     gpu_share=loop["gpu_share"], device=device)
    if result is not None:
        ray.get(relay.put.remote(("result", result)))


class _Relay:
    """A FIFO between rank 0 and the Tune trial (a Ray actor, async so that a waiting
    `get` never blocks a `put`), and the list of workers to kill on a stop."""

    def __init__(self):
        self._items: asyncio.Queue = asyncio.Queue()
        self._workers: list = []

    async def put(self, item) -> None:
        self._items.put_nowait(item)

    async def get(self, timeout: float):
        """The next item, waiting up to `timeout` seconds; None if there is none."""
        if not self._items.empty():
            return self._items.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except TimeoutError:
            return None

    async def enlist(self, worker) -> None:
        self._workers.append(worker)

    async def workers(self) -> list:
        return list(self._workers)
