"""Sweeps that survive: every way a trial ends is recorded with its true reason, workers that
die are retried from their checkpoints, a killed or interrupted driver resumes without losing
or duplicating a trial, an edited YAML is refused, and --dry-run refuses what the run would.

The kills are real: SIGKILL to a trial's Ray worker, SIGKILL, SIGINT and SIGTERM to a
driver in its own process, an allocation past a real RLIMIT_DATA."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from models import space_yaml

from spiralsearch.cli import main
from spiralsearch.search.failures import classify
from spiralsearch.search.space import parse_space
from spiralsearch.store import ResultsStore, load, query

SEARCHED = "{loguniform: [1.0e-3, 1.0e-2]}"
CLI = [sys.executable, "-m", "spiralsearch.cli"]
# the message Ray 2.60 gives for an actor whose worker got SIGKILL (from a real kill)
RAY_SIGKILL = """Failure # 1 (occurred at 2026-12-07_03-00-12)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: 75c1b2fc443f1c4964ad380101000000
\tpid: 14335
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker \
exit detail: Worker unexpectedly exits with a connection error code 2. End of file. Some \
common causes include: (1) the process was killed by the OOM killer due to high memory usage, \
(2) ray stop --force was called, or (3) the worker crashed unexpectedly due to SIGSEGV or \
another unexpected error. If the process was killed by the kernel OOM killer (verifiable by \
checking for OOM in dmesg of the OOMing node), consider enabling resource isolation via \
--enable-resource-isolation to prevent node deaths by resource contention and significant \
loss of progress by uninformed kernel OOM killing."""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


# --- reasons, without Ray -------------------------------------------------------------------

def test_reasons_are_the_true_ones():
    """A SIGKILLed worker is 'killed' and its reason drops Ray's guesses (OOM killer, ...);
    only Ray's memory monitor, MemoryError or torch's allocator make 'oom'."""
    failure, reason = classify(None, RAY_SIGKILL)
    assert failure == "killed"
    assert "SIGKILL" in reason and "connection error code 2" in reason
    assert "OOM" not in reason and "out of memory" not in reason
    monitor = ("The actor is dead because its worker process has died. Task was killed due "
               "to the node running low on memory.")
    assert classify(None, monitor)[0] == "oom"
    from spiralsearch.search.failures import TrialOutOfMemory, is_oom

    assert classify(TrialOutOfMemory("MemoryError: x"), None) == (
        "oom", "out of memory in training: MemoryError: x")
    assert is_oom(MemoryError()) and not is_oom(ValueError("can't allocate memory"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert classify(None, "NodeDiedError: node 10.0.0.2 died")[0] == "node_lost"


def test_a_trial_resumed_in_a_space_that_searches_nothing_completes():
    """The resume bug: a trial cut off by a killed driver is run first on the re-run, and
    its result is taught to its group's searcher; a group that searches nothing must take
    it (it used to raise NotImplementedError and the trial was stored failed)."""
    from spiralsearch.search.grouped import FixedSearch, GroupedSearch

    search = GroupedSearch([FixedSearch(metric="objective", mode="min")], [1],
                           metric="objective", mode="min", first=[[{}]])
    assert search.suggest("t1") == {"group": 0, "params": {}}
    search.on_trial_complete("t1", {"objective": 2.5})  # must not raise
    assert search.suggest("t2") == "FINISHED"


def test_progress_without_a_terminal_prints_lines_and_heartbeats():
    from spiralsearch.search.progress import LiveView, Plan

    space = parse_space(space_yaml("plain"))
    out = io.StringIO()
    view = LiveView(space, mode="plain", plan=Plan(trials=2, flops=2e9), heartbeat_s=0.0,
                    out=out)
    with view:
        g = space.groups()[0]
        view.update(g, "abcdef0123456789", "running")
        view.step("abcdef0123456789", 4, 8, 5e8)
        view.tick()
        view.update(g, "abcdef0123456789", "complete", 3.25, seconds=7.0, flops=1e9)
    lines = out.getvalue().splitlines()
    beat = "sweep plain: 0/2 trials done, 1 running; 500M/2G FLOPs; elapsed"
    assert lines[0].startswith(beat) and "ETA" in lines[0]
    assert lines[1] == ("trial abcdef012345 group plain budget 1.02e+03 size -: complete, "
                        "val loss 3.2500, 7.0 s")
    assert view.flops() == 1e9 and view.done_trials() == 1


# --- worker faults: real kills through Ray ----------------------------------------------------

class _KillFirstWorker:
    """A Ray Tune callback that SIGKILLs the worker of the first trial at its first
    evaluation (once)."""

    def __new__(cls):
        from ray import tune

        class Kill(tune.Callback):
            killed: str | None = None

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if self.killed is None and result.get("status") == "running":
                    self.killed = result["config_hash"]
                    os.kill(result["pid"], signal.SIGKILL)

        return Kill()


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(ray_session, tmp_path, cache, capfd):
    """A searched space (lr), search.max_failures 1 (the default): the worker of a trial is
    SIGKILLed mid-run; Ray runs the trial again from its checkpoint, it completes, its row
    says why attempt 1 ended, and nothing of Ray's is printed."""
    from spiralsearch.search.driver import run_sweep

    space = _write(tmp_path, "retry", space_yaml(
        "retry", lr=SEARCHED, search="sampler: tpe, scheduler: none, samples_per_budget: 2, "
        "seed: 0"))
    kill = _KillFirstWorker()
    report = run_sweep(space, results=tmp_path / "retry.duckdb", progress=False,
                       callbacks=(kill,))
    assert report.counts == {"complete": 4}
    t = load(tmp_path / "retry.duckdb").set_index("trial_id").loc[kill.killed]
    assert t["status"] == "complete" and t["attempts"] == 2 and t["failure"] is None
    assert t["error"].startswith("attempt 1 ended (killed): the trial's worker process died")
    assert "out of memory" not in t["error"] and "OOM" not in t["error"]
    steps = query(tmp_path / "retry.duckdb",
                  f"SELECT step FROM metrics WHERE trial_id = '{kill.killed}' ORDER BY step")
    assert steps["step"].tolist() == [4, 8]  # the resumed run went on from step 4
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err and "worker died" not in out.out + out.err


@pytest.mark.slow
def test_killed_worker_without_retries_fails_and_retry_failed_reruns_it(ray_session, tmp_path,
                                                                        cache, capfd):
    """A space that searches nothing, search.max_failures 0: the killed trial is `failed`
    (killed, not 'out of memory'), the sweep finishes; a plain re-run keeps it failed and
    skips the complete one; --retry-failed runs it again to complete."""
    from spiralsearch.search.driver import run_sweep

    space = _write(tmp_path, "fixed", space_yaml(
        "fixed", search="sampler: tpe, scheduler: none, samples_per_budget: 1, seed: 0, "
        "max_failures: 0"))
    db = tmp_path / "fixed.duckdb"
    kill = _KillFirstWorker()
    report = run_sweep(space, results=db, progress=False, callbacks=(kill,))
    assert report.counts == {"complete": 1, "failed": 1}
    t = load(db).set_index("trial_id").loc[kill.killed]
    assert (t["status"], t["failure"], t["attempts"]) == ("failed", "killed", 1)
    assert "SIGKILL" in t["error"] and "out of memory" not in t["error"]
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err and "worker died" not in out.out + out.err

    again = run_sweep(space, results=db, progress=False)
    assert again.skipped == 1 and again.counts == {"complete": 1, "failed": 1}
    retried = run_sweep(space, results=db, progress=False, retry_failed=True)
    assert retried.skipped == 1 and retried.counts == {"complete": 2}
    t = load(db).set_index("trial_id").loc[kill.killed]
    assert t["status"] == "complete" and t["failure"] is None and len(load(db)) == 2


@pytest.mark.slow
def test_worker_past_its_memory_limit_is_recorded_out_of_memory(ray_session, tmp_path, cache):
    """resources.memory_gb 0.1: the worker may allocate 100 MiB more than it holds (a real
    RLIMIT_DATA), and one step of batch 512 x 256 tokens needs ~130 MiB for its logits
    alone: torch's allocator fails, the trial is retried once (max_failures 1), then
    recorded failed as out of memory."""
    from spiralsearch.search.driver import run_sweep

    space = _write(tmp_path, "oom", space_yaml(
        "oom", specs=("2",), batch_size=512, seq_len=256, budgets="[131072]", evals=1,
        resources="cpu: 1, gpu: 0, memory_gb: 0.1"))
    db = tmp_path / "oom.duckdb"
    report = run_sweep(space, results=db, progress=False)
    assert report.counts == {"failed": 1}
    t = load(db).iloc[0]
    assert (t["failure"], t["attempts"]) == ("oom", 2)
    assert t["error"].startswith("out of memory in training: RuntimeError: ")
    assert "can't allocate memory" in t["error"] and "memory_gb: 0.1" in t["error"]
    assert "attempt 1 ended (oom)" in t["error"]


# --- driver faults: a real driver process, killed or interrupted ---------------------------------

def _start(space: Path, db: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "SPIRALSEARCH_CACHE": str(tmp_path / "c"),
                        "PYTHONPATH": os.pathsep.join(
                            [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([*CLI, "sweep", str(space), "--db", str(db), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the driver and its Ray


def _wait_for(db: Path, sql: str, timeout: float = 240) -> set:
    """Poll the results file (a reader while the driver writes) until `sql` returns rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if db.exists():
            rows = query(db, sql)
            if len(rows):
                return set(rows.iloc[:, 0])
    raise AssertionError(f"nothing for {sql!r} in {timeout} s")


def _rerun(space: Path, db: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    p = _start(space, db, tmp_path)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _long_space(tmp_path: Path, name: str, searched: bool, tokens: int | None = None) -> Path:
    """8 evaluations a trial, long enough to be cut off. Searched: 2 groups x 2 lr samples
    of 160 steps, 2 at once; fixed: the 2 groups' trials of 320 steps one after the other."""
    tokens = tokens or (20480 if searched else 40960)
    return _write(tmp_path, name, space_yaml(
        name, lr=SEARCHED if searched else "3.0e-3", evals=8, budgets=f"[{tokens}]",
        search=f"sampler: tpe, scheduler: none, samples_per_budget: {2 if searched else 1}, "
        f"seed: 0, max_concurrent: {2 if searched else 1}"))


# one trial complete while another is stored running
DONE_AND_CUT = ("SELECT trial_id FROM trials WHERE status = 'complete' AND EXISTS (SELECT 1 "
                "FROM trials WHERE status = 'running')")


def _assert_resumed(db: Path, finished: set, cut: set, n: int, rerun) -> None:
    """Every trial complete once, at its first attempt, the finished ones kept, the cut-off
    ones complete, each trial's evaluations stored once each, nothing of Ray's printed."""
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]
    trials = load(db)
    assert len(trials) == n and sorted(trials["status"]) == ["complete"] * n
    assert (trials["attempts"] == 1).all()  # none needed Ray's retry to finish
    assert finished <= set(trials["trial_id"]) and cut <= set(trials["trial_id"])
    m = query(db, "SELECT trial_id, count(*) AS n, count(DISTINCT step) AS d FROM metrics "
                  "GROUP BY trial_id")
    assert (m["n"] == 8).all() and (m["d"] == 8).all() and len(m) == n


@pytest.mark.slow
@pytest.mark.parametrize("searched", [False, True], ids=["fixed", "searched"])
def test_driver_killed_with_sigkill_resumes(tmp_path, searched):
    """kill -9 the driver (and the Ray it started) once a trial is complete; the re-run
    keeps the finished trials, resumes the cut-off ones to `complete` (in a space that
    searches nothing too: the resume bug) and duplicates nothing."""
    space, db = _long_space(tmp_path, "k", searched), tmp_path / "k.duckdb"
    driver = _start(space, db, tmp_path)
    try:
        finished = _wait_for(db, DONE_AND_CUT)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
    cut = set(load(db).query("status == 'running'")["trial_id"])
    assert cut  # the resume bug needs a trial cut off mid-run
    rerun = _rerun(space, db, tmp_path)
    assert f"({len(finished)} complete before this run)" in rerun.stdout
    _assert_resumed(db, finished, cut, 4 if searched else 2, rerun)


@pytest.mark.slow
def test_ctrl_c_marks_running_trials_interrupted_and_a_rerun_resumes(tmp_path):
    """SIGINT to the driver's whole process group (what Ctrl-C in a terminal sends) once
    one trial is complete and the next has evaluated: exit 130, the running trial is
    `interrupted` with its last metrics, the sweep is stamped interrupted, the message says
    how to resume (not Ray's Tuner.restore), no traceback; the re-run keeps the finished
    trial and completes the interrupted one."""
    # 640 steps a trial, one after the other: the second has evaluated, and is still far
    # from done, when the signal lands
    space, db = _long_space(tmp_path, "i", searched=False, tokens=81920), tmp_path / "i.duckdb"
    driver = _start(space, db, tmp_path)
    try:
        finished = _wait_for(db, "SELECT trial_id FROM trials WHERE status = 'complete' AND "
                             "EXISTS (SELECT 1 FROM trials JOIN metrics USING (trial_id) "
                             "WHERE status = 'running')")
    finally:
        os.killpg(driver.pid, signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert _group_gone(driver.pid), "the driver's Ray outlived it"
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT" in err and "run the same command again" in err
    assert "Tuner.restore" not in out + err and "Traceback" not in out + err
    trials = load(db)
    assert "running" not in set(trials["status"]) and "interrupted" in set(trials["status"])
    cut = trials[trials["status"] == "interrupted"]
    assert (cut["steps"] >= 80).all() and cut["final_val_loss"].notna().all()
    assert cut["error"].str.startswith("interrupted by SIGINT at step").all()
    assert load(db, "sweeps")["status"].tolist() == ["interrupted"]
    rerun = _rerun(space, db, tmp_path)
    assert "(1 complete before this run)" in rerun.stdout
    _assert_resumed(db, finished, set(cut["trial_id"]), 2, rerun)


@pytest.mark.slow
def test_sigterm_exits_143_with_the_store_consistent(tmp_path):
    """SIGTERM to the driver alone (as a job scheduler sends it): exit 143, nothing left
    `running`, the sweep stamped interrupted, and the driver takes its Ray down with it."""
    space, db = _long_space(tmp_path, "t", searched=True), tmp_path / "t.duckdb"
    driver = _start(space, db, tmp_path)
    try:
        _wait_for(db, "SELECT trial_id FROM metrics")
    finally:
        os.kill(driver.pid, signal.SIGTERM)  # the driver alone, as a job scheduler would
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM" in err and "Traceback" not in out + err
    assert "running" not in set(load(db)["status"])
    assert load(db, "sweeps")["status"].tolist() == ["interrupted"]
    assert _group_gone(driver.pid), "the driver's Ray outlived it"


def _group_gone(pgid: int, timeout: float = 15) -> bool:
    """Whether every process of a process group has exited (within `timeout` seconds);
    kills what is left either way, so no test leaves a Ray behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    os.killpg(pgid, signal.SIGKILL)
    return False


# --- which sweep a run continues --------------------------------------------------------------

def test_edited_yaml_is_refused_with_the_difference(tmp_path, capsys):
    db = tmp_path / "e.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("e", space_yaml("e"))
    edited = _write(tmp_path, "e", "# a comment\n" + space_yaml("e", budgets="[2048]"))
    assert main(["sweep", str(edited), "--db", str(db)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"spiralsearch sweep: error: sweep 'e' in {db} ran with a "
                             "different YAML") and "--force-new to start sweep e-2" in err[0]
    assert "-budget: {kind: tokens, values: [1024]}" in err
    assert "+budget: {kind: tokens, values: [2048]}" in err
    assert load(db, "sweeps")["yaml"].tolist() == [space_yaml("e")]  # nothing changed


def test_same_content_continues_and_force_new_counts_up(tmp_path):
    from spiralsearch.search.history import sweep_name

    store = ResultsStore(tmp_path / "n.duckdb")
    store.begin_sweep("n", space_yaml("n"))
    same = parse_space("# only a comment differs\n" + space_yaml("n"))
    assert sweep_name(store, same) == (same, None)
    edited = parse_space(space_yaml("n", budgets="[2048]"))
    new, note = sweep_name(store, edited, force_new=True)
    assert new.name == "n-2" and "'n-2'" in note
    store.begin_sweep("n-2", edited.yaml_text)
    again, note = sweep_name(store, edited)  # the edited YAML again: continues n-2
    assert again.name == "n-2" and "continues sweep 'n-2'" in note
    assert sweep_name(store, edited, force_new=True)[0].name == "n-3"


@pytest.mark.slow
def test_force_new_starts_a_new_sweep_and_shares_identical_trials(ray_session, tmp_path,
                                                                  cache):
    """An edited YAML (a budget added) with --force-new: sweep NAME-2 runs only the new
    budget's trials; the first budget's are the same configs, so they count as done."""
    from spiralsearch.search.driver import run_sweep

    db = tmp_path / "f.duckdb"
    first = run_sweep(parse_space(space_yaml("f")), results=db, progress=False)
    assert first.counts == {"complete": 2}
    edited = parse_space(space_yaml("f", budgets="[1024, 2048]"))
    report = run_sweep(edited, results=db, progress=False, force_new=True)
    assert report.name == "f-2" and report.note.startswith("started a new sweep 'f-2'")
    assert report.skipped == 2 and report.counts == {"complete": 4}
    trials = load(db)
    assert sorted(trials["sweep"]) == ["f", "f", "f-2", "f-2"] and len(trials) == 4
    assert set(trials[trials["sweep"] == "f-2"]["budget_target"]) == {2048}
    assert sorted(load(db, "sweeps")["name"]) == ["f", "f-2"]


# --- dry run ------------------------------------------------------------------------------------

def _dry(capsys, tmp_path, text: str) -> tuple[int, str, str]:
    code = main(["sweep", str(_write(tmp_path, "dry", text)), "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("change, message", [
    (dict(source="text:/no/such/file"), "text:/no/such/file: no such file or folder"),
    (dict(source="corpus:prose"), "corpus:prose is not fetched yet; run: spiralsearch data "
     "fetch prose"),
    (dict(resources="cpu: 1, gpu: 1"), "resources.gpu: each trial asks 1 GPUs but this "
     "machine has 0"),
    (dict(resources="cpu: 64, gpu: 0"), "resources.cpu: each trial asks 64 CPUs but this "
     "machine has"),
], ids=["missing-file", "unfetched-corpus", "gpu", "cpus"])
def test_dry_run_refuses_what_the_run_would(tmp_path, capsys, cache, change, message):
    import torch

    if "gpu: 1" in change.get("resources", "") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out, err = _dry(capsys, tmp_path, space_yaml("dry", **change))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("spiralsearch sweep: error: ") and message in err
    assert not list(tmp_path.glob("**/*.duckdb"))


def test_dry_run_prints_grid_estimate_and_warnings(tmp_path, capsys, cache):
    code, out, err = _dry(capsys, tmp_path, space_yaml(
        "dry", lr=SEARCHED, budgets="[1024, 1.5e6]",
        search="sampler: tpe, scheduler: none, samples_per_budget: 2, seed: 0"))
    assert code == 0
    assert "grid: 8 trials in 4 cells" in out and "one trial fits this machine" in out
    assert "estimate: ~" in out and "training steps timed on this machine's cpu" in out
    warnings = [x for x in err.splitlines() if x.startswith("spiralsearch sweep: warning: ")]
    assert len(warnings) == 2, err
    assert "samples_per_budget: 2 is too few to search with tpe" in warnings[0]
    assert "data repeats: a trial of " in warnings[1] and "epochs of corpus:sotu" in warnings[1]


def test_operational_edits_are_not_a_new_design():
    """Edits that change neither which trials run nor what they compute continue a sweep."""
    from spiralsearch.search.history import same_design

    base = space_yaml("o")
    assert same_design(base, base.replace("name: o", "name: other"))
    assert same_design(base, base.replace("seed: 0}", "seed: 0, max_concurrent: 1, "
                                          "max_failures: 3, keep_checkpoints: all}"))
    assert same_design(base, base.replace("gpu: 0}", "gpu: 0, memory_gb: 2}"))
    assert not same_design(base, base.replace("seed: 0}", "seed: 1}"))
    assert not same_design(base, base.replace("cpu: 1", "cpu: 2"))  # threads change sums
