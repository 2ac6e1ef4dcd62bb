import json
import time

import pytest
from models import space_yaml

from spiralsearch.search.cluster import trial_resources
from spiralsearch.search.driver import run_sweep
from spiralsearch.search.space import load_space, parse_space
from spiralsearch.store import config_hash, load, query

pytestmark = pytest.mark.slow  # every test here starts Ray or runs a sweep


def space_text(name="e2e", lr="3.0e-3", extra="", sampler="tpe", samples=1):
    return space_yaml(name, lr=lr, train=extra,
                      search=f"sampler: {sampler}, scheduler: none, "
                      f"samples_per_budget: {samples}, seed: 0")


def write_space(tmp_path, name="e2e", **kw):
    path = tmp_path / f"{name}.yaml"
    path.write_text(space_text(name, **kw))
    return path


@pytest.mark.slow
def test_sweep_end_to_end_and_idempotent_rerun(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    space = write_space(tmp_path)
    db = tmp_path / "e2e.duckdb"
    report = run_sweep(space, results=db, progress=False)
    assert report.counts == {"complete": 2}
    trials = load(db)
    assert sorted(trials["family"]) == ["plain", "spiral"]
    for row in trials.to_dict("records"):
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        assert row["trial_id"] == config_hash(config)
        assert row["budget_achieved"] == 1024 and row["final_val_loss"] > 0
        assert row["model_d_model"] == 32 and row["train_batch_size"] == 4  # config columns
    metrics = query(db, "SELECT trial_id, count(*) AS n FROM metrics GROUP BY trial_id")
    assert sorted(metrics["n"]) == [2, 2]  # both evaluations of both trials
    assert set(metrics["trial_id"]) == set(trials["trial_id"])
    m = load(db, "metrics")  # every evaluation stores throughput and MFU (no peak on a CPU)
    assert (m["tokens_per_s"] > 0).all() and m["mfu"].isna().all()
    sweeps = load(db, "sweeps")
    assert sweeps["status"].tolist() == ["complete"] and sweeps["ended_at"].notna().all()

    # the same YAML again: nothing new trains, nothing is duplicated
    again = run_sweep(space, results=db, progress=False)
    assert again.skipped == 2 and again.counts == {"complete": 2}
    assert len(load(db)) == 2 and len(load(db, "metrics")) == 4

    # a file an older version wrote (other ids), continued with smaller micro-batches (how
    # steps run, not what they compute): re-keyed, nothing trains again or is duplicated
    import duckdb

    ids = sorted(trials["trial_id"])
    with duckdb.connect(str(db)) as con:
        for tid in ids:
            for table in ("trials", "metrics"):
                con.execute(f"UPDATE {table} SET trial_id = ? WHERE trial_id = ?",
                            ["old-" + tid, tid])
    space.write_text(space_text().replace("eval_batches: 1", "eval_batches: 1, "
                                          "micro_batch: 2"))
    later = run_sweep(space, results=db, progress=False)
    assert later.skipped == 2 and later.counts == {"complete": 2}
    assert "2 stored trial(s) moved to the ids this version gives them" in later.note
    assert sorted(load(db)["trial_id"]) == ids and len(load(db, "metrics")) == 4


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_sweep_goes_on(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    # a trial pinned to a CUDA device on this CPU machine raises inside training (Ray's
    # GPUs here are logical: the session's Ray counts 2 that do not exist)
    space = write_space(tmp_path, name="failing", extra="device: {choice: [cpu, cuda]}",
                        sampler="grid", samples=2)
    space.write_text(space.read_text().replace("gpu: 0", "gpu: 0.5"))
    db = tmp_path / "failing.duckdb"
    report = run_sweep(space, results=db, progress=False)
    assert report.counts == {"complete": 2, "failed": 2}
    failed = query(db, "SELECT error, train_device FROM trials WHERE status = 'failed'")
    assert set(failed["train_device"]) == {"cuda"}
    assert all("CUDA" in e or "cuda" in e for e in failed["error"])


@pytest.mark.slow
def test_fractional_gpus_are_packed(ray_session, tmp_path):
    """gpu: 0.5 per trial on 2 (logical) GPUs: four trials run at once, two per GPU."""
    from ray import tune

    space = parse_space(space_text("gpu").replace("gpu: 0", "gpu: 0.5"))
    assert trial_resources(space) == {"cpu": 1.0, "gpu": 0.5}

    def report_gpus(config):
        import ray

        time.sleep(3)  # overlap, so Ray has to pack them
        tune.report({"gpu_ids": [str(i) for i in ray.get_gpu_ids()]})

    res = trial_resources(space) | {"cpu": 0.5}  # 4 trials fit the session's 2 CPUs
    tuner = tune.Tuner(tune.with_resources(report_gpus, res),
                       tune_config=tune.TuneConfig(num_samples=4),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0))
    ids = [r.metrics["gpu_ids"] for r in tuner.fit()]
    assert all(len(i) == 1 for i in ids)
    assert sorted(i[0] for i in ids) == ["0", "0", "1", "1"]


def test_shipped_spaces_load():
    for name in ("quickstart", "paper-160m", "recurrence-ratio"):
        assert load_space(f"search_spaces/{name}.yaml").name == name


@pytest.mark.slow
def test_sweep_joins_a_running_ray_cluster(tmp_path, monkeypatch):
    """`ray start --head` on 127.0.0.1, then `spiralsearch sweep --address` against it."""
    import subprocess

    from clusters import BIN, ENV, ray_cluster

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    with ray_cluster((2, 0)) as address:
        space = write_space(tmp_path, name="cluster")
        db = tmp_path / "cluster.duckdb"
        run = subprocess.run([str(BIN / "spiralsearch"), "sweep", str(space), "--address",
                              address, "--db", str(db), "--no-progress"],
                             env=ENV, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 complete" in run.stdout
        assert sorted(load(db)["status"]) == ["complete", "complete"]
        # --dry-run checks one trial's resources against that cluster (it has no GPUs)
        greedy = tmp_path / "greedy.yaml"
        greedy.write_text(space_text("greedy").replace("gpu: 0", "gpu: 1"))
        dry = subprocess.run([str(BIN / "spiralsearch"), "sweep", str(greedy), "--dry-run",
                              "--address", address],
                             env=ENV, capture_output=True, text=True, timeout=300)
        assert dry.returncode == 2 and len(dry.stderr.strip().splitlines()) == 1, dry.stderr
        assert f"asks 1 GPUs but the Ray cluster at {address} has 0" in dry.stderr


class _FakeTrial:
    """What StoreCallback reads from a Ray Tune trial."""

    def __init__(self, config, last_result=None, error=None):
        self.config, self.last_result, self._error = config, last_result, error
        self.trial_id = f"fake{id(self)}"

    def get_error(self):
        return self._error


def test_store_callback_records_stopped_crashed_and_interrupted_trials(tmp_path):
    """Without Ray: a trial ASHA stops keeps its last and best losses as 'stopped'; a trial
    whose worker died is 'failed', killed, with Ray's exit detail and not its guesses; a
    trial still running when the driver is told to stop is 'interrupted' with its last
    metrics."""
    from spiralsearch.search.interrupts import Interrupts
    from spiralsearch.search.recorder import StoreCallback
    from spiralsearch.store import ResultsStore

    space = parse_space(space_text("cb", lr="{loguniform: [1.0e-3, 1.0e-2]}", samples=2))
    groups = space.groups()
    store = ResultsStore(tmp_path / "cb.duckdb")
    store.begin_sweep("cb", space.yaml_text)
    interrupts = Interrupts()
    cb = StoreCallback(store, "cb", space, groups, flush_s=0.0, interrupts=interrupts)
    stopped = _FakeTrial({"group": 0, "params": {"train.lr": 2e-3}})
    died = _FakeTrial({"group": 1, "params": {"train.lr": 5e-3}}, error=(
        "The actor is dead because its worker process has died. Worker exit type: "
        "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error "
        "code 2. End of file. Some common causes include: (1) the process was killed by "
        "the OOM killer due to high memory usage"))
    cut = _FakeTrial({"group": 1, "params": {"train.lr": 3e-3}})
    for t in (stopped, died, cut):
        cb.on_trial_start(0, [], t)
    from spiralsearch.search.space import resolve

    tid = resolve(space, groups[0], stopped.config["params"]).trial_id
    for step, loss in ((2, 3.0), (4, 2.5), (6, 2.7)):
        row = dict(config_hash=tid, status="running", step=step, val_loss=loss, val_bpb=loss)
        cb.on_trial_result(0, [], stopped, row)
        stopped.last_result = row
    cb.on_trial_complete(0, [], stopped)
    cb.on_trial_error(0, [], died)
    cut_id = resolve(space, groups[1], cut.config["params"]).trial_id
    row = dict(config_hash=cut_id, status="running", step=20, val_loss=3.1, val_bpb=4.0,
               tokens=2560, train_flops=1e9)
    cb.on_trial_result(0, [], cut, row)
    interrupts.signum = 2  # SIGINT, as the handler sets it
    assert cb.interrupt() == 1  # only the trial still running
    trials = load(tmp_path / "cb.duckdb").set_index("trial_id")
    assert trials.loc[tid, "status"] == "stopped"
    assert trials.loc[tid, "final_val_loss"] == 2.7 and trials.loc[tid, "best_val_loss"] == 2.5
    dead = trials.loc[resolve(space, groups[1], died.config["params"]).trial_id]
    assert dead["status"] == "failed" and dead["failure"] == "killed"
    assert dead["error"].endswith("Worker exit detail: Worker unexpectedly exits with a "
                                  "connection error code 2. End of file.")
    assert "OOM" not in dead["error"]
    c = trials.loc[cut_id]
    assert c["status"] == "interrupted" and c["steps"] == 20 and c["final_val_loss"] == 3.1
    assert c["error"] == "interrupted by SIGINT at step 20; a re-run resumes it"
    assert len(load(tmp_path / "cb.duckdb", "metrics")) == 4


@pytest.mark.slow
def test_unrunnable_sweeps_stop_before_any_trial(ray_session, tmp_path):
    """A data file that is not there, or more GPUs per trial than the cluster has: a clear
    error before anything runs, and no results file."""
    from spiralsearch.data.dataset import DataError
    from spiralsearch.search.cluster import ClusterError

    missing = parse_space(space_text("nodata").replace("corpus:sotu", "text:/no/such/file"))
    with pytest.raises(DataError, match="/no/such/file"):
        run_sweep(missing, results=tmp_path / "a.duckdb", progress=False)
    greedy = parse_space(space_text("greedy").replace("cpu: 1, gpu: 0",
                                                      "cpu: 0.5, gpu: 1, workers: 4"))
    with pytest.raises(ClusterError, match="need 4 GPUs per trial but the Ray cluster has 2"):
        run_sweep(greedy, results=tmp_path / "b.duckdb", progress=False)
    assert not (tmp_path / "a.duckdb").exists() and not (tmp_path / "b.duckdb").exists()


def test_a_relative_data_path_is_read_from_the_sweeps_folder(ray_session, tmp_path,
                                                              monkeypatch):
    """Ray runs each trial in a folder of its own: `tokens:data/tiny.bin` must still mean the
    folder the sweep was started from (every trial used to be rejected, 'no such file'). The
    stored config keeps the path as written."""
    import numpy as np

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (np.arange(20_000, dtype=np.uint16) % 251).tofile(tmp_path / "data" / "tiny.bin")
    space = parse_space(space_yaml("relpath", specs=("2",),
                                   source="tokens:data/tiny.bin:vocab=256"))
    report = run_sweep(space, results=tmp_path / "rel.duckdb", progress=False)
    assert report.counts == {"complete": 1}
    (config,) = [json.loads(c) if isinstance(c, str) else c
                 for c in load(tmp_path / "rel.duckdb")["config"]]
    assert config["data"]["source"] == "tokens:data/tiny.bin:vocab=256"


def test_packed_fake_gpus_run_four_at_once_and_record_the_cuda_error(ray_session, tmp_path,
                                                                     monkeypatch):
    """2 logical GPUs at gpu: 0.5 (and cpu: 0.5): 4 trials at once, the fewest of CPU and
    GPU slots (trained on the CPU here: Ray only counts the GPUs). With the device left to
    the trial's GPU share there is no CUDA to find, so each trial fails, and the store
    says why."""
    from ray.tune import Callback

    class InFlight(Callback):
        def __init__(self):
            self.now, self.most = 0, 0

        def on_trial_start(self, iteration, trials, trial, **info):
            self.now += 1
            self.most = max(self.most, self.now)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.now -= 1

        on_trial_error = on_trial_complete

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))

    def packed(device: str):
        return parse_space(space_yaml(
            f"packed-{device}", specs=("2",), lr="{loguniform: [1.0e-3, 1.0e-2]}",
            resources="cpu: 0.5, gpu: 0.5", train=f"device: {device}", budgets="[4096]",
            search="sampler: random, scheduler: none, samples_per_budget: 4, seed: 0"))

    seen = InFlight()
    report = run_sweep(packed("cpu"), results=tmp_path / "cpu.duckdb", progress=False,
                       callbacks=(seen,))
    assert report.counts == {"complete": 4} and seen.most == 4
    report = run_sweep(packed("auto"), results=tmp_path / "gpu.duckdb", progress=False)
    assert report.counts == {"failed": 4}
    trials = load(tmp_path / "gpu.duckdb")
    assert (trials["failure"] == "raised").all()
    assert trials["error"].str.contains("CUDA", case=False).all(), list(trials["error"])
