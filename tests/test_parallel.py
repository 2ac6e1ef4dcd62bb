"""Data-parallel trials (resources.workers: K): what validation refuses, how a Train run's
failures become the trial's, how Ray is asked for resources, and, end to end on two CPU
workers over gloo, a sweep whose stored loss curve is the one-worker run's."""

import json
import time

import pytest
from models import space_yaml

from spiralsearch.config import TrialConfig
from spiralsearch.search.cluster import slots
from spiralsearch.search.failures import classify
from spiralsearch.search.parallel import (
    DRIVER_BYTES,
    WorkersLost,
    check_workers,
    driver_resources,
    fit_data_parallel,
    trainer,
    worker_error,
    worker_resources,
)
from spiralsearch.search.space import Resources, SpaceError, parse_space
from spiralsearch.search.worker import placed


def space(resources="cpu: 1, gpu: 0", train="", batch_size=16, name="dp", **kw) -> str:
    return space_yaml(name, specs=("1+2x{1/4,1/2,1}+1",), resources=resources, train=train,
                      batch_size=batch_size, **kw)


REFUSED = [
    (dict(resources="cpu: 1, gpu: 2"), "resources.gpu: expected a fraction in [0, 1] (for K "
     "GPUs per trial, use resources.workers: K with gpu: 1), got 2.0"),
    (dict(resources="cpu: 1, gpu: 1", train="device: cuda:1"), "train.device: 'cuda:1' names "
     "one GPU, but a sweep's trial sees only the GPUs Ray gives it"),
    (dict(resources="cpu: 1, gpu: 0", train="device: {choice: [cpu, cuda]}"),
     "train.device: cuda with resources.gpu: 0 would put trials that Ray gave no GPU on GPU 0"),
    (dict(resources="cpu: 1, gpu: 0.5, workers: 2"), "resources.gpu: 0.5 with "
     "resources.workers: 2; a data-parallel worker needs a whole GPU"),
    (dict(resources="cpu: 1, workers: 3"), "train.batch_size: 16 sequences do not split evenly "
     "over resources.workers: 3 data-parallel workers"),
    (dict(resources="cpu: 1, workers: 2", batch_size=12, train="micro_batch: 4"),
     "train.micro_batch: 4 does not divide the 6 sequences of batch_size 12 that each of "
     "resources.workers: 2 data-parallel workers takes"),
    (dict(resources="cpu: 1, workers: 0"), "resources.workers: expected >= 1, got 0"),
]


@pytest.mark.parametrize("kw,message", REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_validation_refuses_what_a_trial_cannot_run(kw, message):
    with pytest.raises(SpaceError) as err:
        parse_space(space(**kw), "dp.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_workers_and_gpus_that_fit_are_accepted():
    s = parse_space(space("cpu: 2, gpu: 1, workers: 4", train="device: cuda"))
    r = s.resources
    assert (r.workers, r.trial_cpu, r.trial_gpu) == (4, 8.0, 4.0)
    assert parse_space(space("cpu: 1, gpu: 0.25")).resources.trial_gpu == 0.25


def test_a_trial_asks_ray_for_k_workers_and_a_light_driver():
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    r = Resources(cpu=2, gpu=1, workers=4, memory_gb=3)
    assert worker_resources(r) == {"CPU": 2, "GPU": 1, "memory": 3 * 2**30}
    assert worker_resources(Resources(cpu=1)) == {"CPU": 1}
    # Tune accepts a bundle of memory alone: the driver holds no CPU the workers need
    pgf = resource_dict_to_pg_factory(driver_resources(r))
    assert pgf.required_resources == {"memory": DRIVER_BYTES}
    # trials at once count every worker's CPUs
    s = parse_space(space("cpu: 2, workers: 2"))
    assert slots(s, [{"CPU": 8}]) == 2 and slots(parse_space(space("cpu: 2")), [{"CPU": 8}]) == 4
    assert slots(s, [{"CPU": 4}, {"CPU": 4}]) == 2  # a trial's workers may span nodes
    from spiralsearch.search.cluster import ClusterError

    check_workers(s.resources, {"CPU": 4}, "here")
    with pytest.raises(ClusterError, match=r"^resources.workers: 2 workers \(2 CPU each\) "
                       r"need 4 CPUs per trial but here has 3"):
        check_workers(s.resources, {"CPU": 3}, "here")


def test_one_worker_trains_in_process_and_k_workers_through_ray_train(tmp_path):
    from spiralsearch.training.loop import train

    assert trainer(Resources(), tmp_path / "checkpoints") is train
    fit = trainer(Resources(workers=2), tmp_path / "checkpoints")
    assert fit.func is fit_data_parallel and fit.keywords["storage"] == str(tmp_path / "ray")
    # a URI storage: the trial is mirrored there, and Ray Train's files go there too
    assert trainer(Resources(), "s3://b/x.runs/checkpoints") is not train
    fit = trainer(Resources(workers=2), "s3://b/x.runs/checkpoints?region=r")
    assert fit.keywords["storage"] == "s3://b/x.runs/ray?region=r"


def test_a_workers_own_exception_is_the_trials_and_a_lost_worker_is_rays():
    import ray.exceptions
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    own = ValueError("bad batch")
    broken = RuntimeError("[gloo] Connection closed by peer")
    assert worker_error(WorkerGroupError("x", {1: broken, 0: own})) is own  # lowest rank
    oom = MemoryError("out of memory")
    assert worker_error(WorkerGroupError("x", {0: broken, 1: oom})) is oom  # Ray retries it
    died = WorkerHealthCheckFailedError("Worker health check failed",
                                        failure=ray.exceptions.ActorDiedError())
    lost = worker_error(WorkerGroupError("x", {0: broken, 1: died}))
    assert isinstance(lost, WorkersLost) and str(lost).startswith("data-parallel worker 1 lost")
    failure, reason = classify(lost, None)
    assert failure == "killed" and "actor died" in reason
    other = worker_error(RuntimeError("controller failed"))
    assert isinstance(other, WorkersLost) and "controller failed" in str(other)


def test_run_trial_records_a_workers_exception_and_lets_ray_retry_a_lost_one(monkeypatch,
                                                                             tmp_path):
    from spiralsearch.search import parallel
    from spiralsearch.search.worker import run_trial

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    s = parse_space(space("cpu: 1, workers: 2"))
    groups = s.groups()
    trial = {"group": 0, "params": {}}

    def raising(error):
        def fit(config, **kw):
            raise error
        return lambda resources, checkpoints: fit

    monkeypatch.setattr(parallel, "trainer", raising(ValueError("rank 0 broke")))
    reports = []
    run_trial(trial, space=s, groups=groups, done={}, checkpoints=str(tmp_path),
              report=reports.append)
    assert reports[-1]["status"] == "failed" and reports[-1]["failure"] == "raised"
    assert reports[-1]["error"] == "ValueError: rank 0 broke"
    monkeypatch.setattr(parallel, "trainer", raising(WorkersLost("worker 1 lost")))
    with pytest.raises(WorkersLost):
        run_trial(trial, space=s, groups=groups, done={}, checkpoints=str(tmp_path),
                  report=reports.append)


def test_a_gpu_trial_out_of_memory_is_retried_with_advice(monkeypatch, tmp_path):
    """CUDA's allocator failing is raised to Ray (which retries it), saying what to change:
    micro-batches continue the sweep (not part of a trial's identity)."""
    import torch

    from spiralsearch.search import parallel
    from spiralsearch.search.failures import TrialOutOfMemory
    from spiralsearch.search.worker import run_trial

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    s = parse_space(space("cpu: 1, gpu: 0.5"))

    def fit(config, **kw):
        assert config.train.device == "cuda"  # placed on its GPU share
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(parallel, "trainer", lambda resources, checkpoints: fit)
    with pytest.raises(TrialOutOfMemory) as err:
        run_trial({"group": 0, "params": {}}, space=s, groups=s.groups(), done={},
                  checkpoints=str(tmp_path), report=lambda row: None)
    assert str(err.value) == ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 "
                              "GiB; lower train.micro_batch (the sweep goes on with the "
                              "trials it has) or give each trial a larger resources.gpu share")


# --- on Ray, two CPU workers over gloo --------------------------------------------------------

def _config(steps: int = 12, **train) -> TrialConfig:
    """A tiny trial of `steps` steps of 16 x 32 tokens, placed as a sweep places it."""
    return placed(TrialConfig.from_dict(dict(
        model=dict(spec="1+2x{1/4,1/2,1}+1", preset="tiny", d_model=32, n_heads=2),
        data=dict(source="corpus:sotu", seq_len=32),
        train=dict(batch_size=16, lr=3e-3, evals=3, eval_batches=1) | train,
        budget=dict(kind="tokens", value=16 * 32 * steps))), Resources(cpu=1))


def _wait_for_cpus(ray, n: float, timeout_s: float = 30.0) -> float:
    """Ray's free CPUs once `n` are free again, or after `timeout_s` seconds."""
    deadline = time.perf_counter() + timeout_s
    while ray.available_resources().get("CPU", 0) < n and time.perf_counter() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


@pytest.mark.slow
@pytest.mark.parametrize("in_uri", [False, True], ids=["local", "uri-storage"])
def test_data_parallel_sweep_stores_the_one_worker_loss_curve(ray_session, tmp_path,
                                                              monkeypatch, in_uri):
    """Also with `storage:` a URI: every worker pulls the trial's folder where it runs,
    rank 0 pushes its checkpoints there, Ray Train writes its files there."""
    import torch

    from spiralsearch.search.driver import run_sweep
    from spiralsearch.store import load, query
    from spiralsearch.training.loop import train

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "dp.yaml"
    path.write_text(space("cpu: 1, gpu: 0, workers: 2", evals=3, budgets=f"[{16 * 32 * 12}]",
                          search="sampler: random, scheduler: none, samples_per_budget: 1")
                    + (f"storage: {(tmp_path / 'bucket').as_uri()}\n" if in_uri else ""))
    db = tmp_path / "dp.duckdb"
    assert run_sweep(path, results=db, progress=False).counts == {"complete": 1}
    (row,) = load(db).to_dict("records")
    config = TrialConfig.from_dict(json.loads(row["config"]) if isinstance(row["config"], str)
                                   else row["config"])
    metrics = query(db, "SELECT * FROM metrics ORDER BY step").to_dict("records")
    assert [m["step"] for m in metrics] == [4, 8, 12]  # every evaluation, once

    before = torch.get_num_threads()
    try:  # the same trial on one worker, as a sweep's worker places it: one thread
        one = train(placed(config, Resources(cpu=1)))
    finally:
        torch.set_num_threads(before)
    for m, o in zip(metrics, one.metrics, strict=True):
        assert m["tokens"] == o["tokens"]  # the same global batch
        assert m["train_loss"] == pytest.approx(o["train_loss"], rel=1e-6)
        assert m["val_loss"] == pytest.approx(o["val_loss"], rel=1e-6)
    assert row["final_val_loss"] == pytest.approx(one.summary["final_val_loss"], rel=1e-6)
    assert row["final_test_loss"] == pytest.approx(one.summary["final_test_loss"], rel=1e-6)
    runs = tmp_path / "bucket" / "dp.runs" if in_uri else tmp_path / "dp.runs"
    assert (runs / "checkpoints" / row["trial_id"] / "checkpoints" / "last.pt").is_file()
    assert list((runs / "ray").glob(f"train-{row['trial_id']}-*"))  # a Ray Train run did it


@pytest.mark.slow
def test_a_stopped_data_parallel_trial_frees_its_workers_at_once(ray_session, tmp_path,
                                                                 monkeypatch):
    """Tune stops a trial by raising SystemExit in its report: its workers are killed then
    and there, so rank 0 never reaches the next evaluation (whose checkpoint would show it)
    and the CPUs are free long before the budget (50,000 steps) could be spent."""
    import torch

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    config = _config(steps=50_000, evals=500)  # an evaluation every 100 steps
    rows = []

    def stop(row):
        rows.append(row)
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        fit_data_parallel(config, out_dir=tmp_path / "run", callback=stop,
                          resources=Resources(cpu=1, workers=2), storage=str(tmp_path / "ray"))
    assert _wait_for_cpus(ray_session, 2) == 2
    assert [r["step"] for r in rows] == [100]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 100


@pytest.mark.slow
def test_a_workers_exception_ends_the_run_as_itself(ray_session, tmp_path, monkeypatch):
    """Rank 0 cannot write its checkpoint (its folder is a file): the trial raises that
    error, not Ray's wrapper, while rank 1 waits in a collective and is torn down."""
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        fit_data_parallel(_config(), out_dir=tmp_path / "file" / "run",
                          resources=Resources(cpu=1, workers=2), storage=str(tmp_path / "ray"))
    assert _wait_for_cpus(ray_session, 2) == 2


def test_the_estimate_takes_k_workers_as_k_times_one_process(monkeypatch):
    """The dry run times one process; a K-worker trial trains K times as fast (ideal), so
    its estimate is 1/K of one worker's. Stored speeds are whole trials' and stay as they
    are."""
    from spiralsearch.search import preflight
    from spiralsearch.search.candidates import cell_costs

    timed = preflight.Rate("m", 1e6, 16, 1000.0)
    monkeypatch.setattr(preflight, "measure", lambda *a, **k: timed)
    one, two = (parse_space(space(f"cpu: 1, workers: {k}")) for k in (1, 2))
    e1 = preflight.estimate(one, cell_costs(one), slots=1)
    e2 = preflight.estimate(two, cell_costs(two), slots=1)
    assert (e1.workers, e2.workers) == (1, 2)
    assert e2.serial_s == pytest.approx(e1.serial_s / 2) and e1.serial_s > 0
    stored = preflight.estimate(two, cell_costs(two), slots=1, rates=[timed])
    assert stored.workers == 1 and stored.serial_s == pytest.approx(e1.serial_s)


def test_dry_run_refuses_more_workers_than_the_machine_holds(tmp_path, capsys):
    from spiralsearch.cli import main

    path = tmp_path / "wide.yaml"
    path.write_text(space("cpu: 1, workers: 1024", batch_size=1024, name="wide",
                          budgets=f"[{1024 * 32}]"))
    assert main(["sweep", str(path), "--dry-run", "--db", str(tmp_path / "w.duckdb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spiralsearch sweep: error: resources.workers: 1024 workers (1 CPU "
                          "each) need 1024 CPUs per trial but this machine has ")
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_two_node_cluster_checks_per_node_and_spreads_a_trials_workers(tmp_path,
                                                                         monkeypatch):
    """Two Ray nodes of 1 CPU each (`ray start` twice on this machine): one trial asking 2
    CPUs is refused though the cluster has 2 in all; a trial on 2 workers of 1 CPU must put
    one on each node, and with `storage:` a URI each pulls the trial's folder where it runs
    and rank 0 pushes its checkpoints there. Its loss curve is one worker's."""
    import subprocess

    from clusters import BIN, ENV, ray_cluster

    from spiralsearch.store import query
    from spiralsearch.training.loop import train

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    env = ENV | {"SPIRALSEARCH_CACHE": str(tmp_path / "cache")}
    bucket = tmp_path / "bucket"
    wide = tmp_path / "wide.yaml"
    wide.write_text(space("cpu: 2, gpu: 0", name="wide"))
    dp = tmp_path / "dp.yaml"
    dp.write_text(space("cpu: 1, gpu: 0, workers: 2", evals=3, budgets=f"[{16 * 32 * 12}]",
                        search="sampler: random, scheduler: none, samples_per_budget: 1")
                  + f"storage: {bucket.as_uri()}\n")
    db = tmp_path / "dp.duckdb"
    with ray_cluster((1, 0), (1, 0)) as address:
        dry = subprocess.run([str(BIN / "spiralsearch"), "sweep", str(wide), "--dry-run",
                              "--address", address], env=env, capture_output=True, text=True,
                             timeout=300)
        assert dry.returncode == 2 and len(dry.stderr.strip().splitlines()) == 1, dry.stderr
        assert "asks 2 CPUs" in dry.stderr
        run = subprocess.run([str(BIN / "spiralsearch"), "sweep", str(dp), "--address",
                              address, "--db", str(db), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stderr[-3000:]
    (row,) = query(db, "SELECT trial_id, status, config FROM trials").to_dict("records")
    assert row["status"] == "complete"
    runs = bucket / "dp.runs"
    assert (runs / "checkpoints" / row["trial_id"] / "checkpoints" / "last.pt").is_file()
    assert list((runs / "ray").glob(f"train-{row['trial_id']}-*"))  # Ray Train wrote there
    metrics = query(db, "SELECT * FROM metrics ORDER BY step").to_dict("records")
    config = TrialConfig.from_dict(json.loads(row["config"]) if isinstance(row["config"], str)
                                   else row["config"])
    one = train(placed(config, Resources(cpu=1)))
    assert [m["val_loss"] for m in metrics] == pytest.approx(
        [o["val_loss"] for o in one.metrics], rel=1e-6)
