"""Checkpoints of a sweep's trials (search.keep_checkpoints: the selected trials' survive by
default) and `spiralsearch rerun TRIAL_ID`, which re-trains a stored trial from scratch as
its sweep's worker did and must give back its final val and test losses exactly."""

from __future__ import annotations

import json

import pytest
from models import space_yaml

from spiralsearch.cli import main
from spiralsearch.config import TrialConfig
from spiralsearch.search.checkpoints import checkpoint_of, checkpoints_dir, keeps, prune
from spiralsearch.search.space import parse_space
from spiralsearch.store import ResultsStore, config_hash, load

TINY = dict(model=dict(spec="2", preset="tiny", d_model=32, n_heads=2),
            data=dict(source="corpus:sotu", seq_len=32),
            train=dict(batch_size=4, evals=2, eval_batches=1, threads=1, device="cpu"),
            budget=dict(kind="tokens", value=1024.0))


def space_text(name: str = "ckpt", keep: str | None = None) -> str:
    """One cell (group_by none) of two looped specs (both have probes): 2 search trials,
    then 1 replicate of the selected point."""
    return space_yaml(name, specs=("1+1x{1,1}+0", "1+1x{1/2,1}+0"),
                      search="sampler: grid, scheduler: none, samples_per_budget: 2, seed: 0, "
                      "group_by: none, replicates: 2"
                      + (f", keep_checkpoints: {keep}" if keep else ""))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))


def one_line_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"spiralsearch {prog}: "), err
    return err


def fake_run(folder) -> None:
    """A trial folder as the worker leaves it: summary.json and checkpoints/last.pt."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "checkpoints" / "last.pt").write_bytes(b"")


# --- pruning ---------------------------------------------------------------------------------

def test_keeps_decides_by_status_and_selection():
    assert keeps("selected", "complete", True) and not keeps("selected", "complete", False)
    assert not keeps("selected", "complete", None)  # a row from before replicates
    assert not keeps("selected", "failed", True)  # a selected replicate that failed
    assert all(keeps("all", s, False) for s in ("complete", "stopped", "failed", "diverged"))
    assert not keeps("none", "complete", True)
    # cut off mid-run: a re-run of the sweep resumes from the checkpoint, whatever `keep` says
    assert all(keeps(k, s, False) for k in ("selected", "all", "none")
               for s in ("running", "pending"))


@pytest.mark.parametrize("keep, kept", [
    ("selected", {"selected", "running", "unknown"}),
    ("all", {"selected", "other", "stopped", "failed", "running", "unknown"}),
    ("none", {"running", "unknown"})])
def test_prune_keeps_what_keep_checkpoints_says(keep, kept, tmp_path):
    db = tmp_path / "p.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("p", "name: p\n")
    rows = dict(selected=("complete", True), other=("complete", False),
                stopped=("stopped", False), failed=("failed", True), running=("running", None))
    ids = {}
    for i, (label, (status, selected)) in enumerate(rows.items()):
        config = dict(model=dict(spec="2"), train=dict(seed=i))
        store.write(trials=[dict(sweep="p", config=config, status=status, selected=selected)])
        ids[label] = config_hash(config)
    ids["unknown"] = "0123456789abcdef"  # a folder the store has no row for: left alone
    for tid in ids.values():
        fake_run(checkpoints_dir(db) / tid)
    space = parse_space(space_text("p", keep))
    assert prune(store, space) == len(ids) - len(kept)
    assert {label for label, tid in ids.items() if checkpoint_of(db, tid)} == kept


# --- rerun ------------------------------------------------------------------------------------

def stored(tmp_path, *, shift: float = 0.0, status: str = "complete"):
    """A results file holding one trial trained here with 1 thread on the CPU (as a sweep
    with resources {cpu: 1, gpu: 0} trains it); `shift` tampers with its stored val loss."""
    import torch

    from spiralsearch.training.loop import train

    config = TrialConfig.from_dict(TINY)
    threads = torch.get_num_threads()  # train() sets it for the whole test process
    try:
        s = train(config).summary
    finally:
        torch.set_num_threads(threads)
    db = tmp_path / "one.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("one", "name: one\nresources: {cpu: 1, gpu: 0}\n")
    store.write(trials=[dict(sweep="one", config=config.to_dict(), status=status,
                             final_val_loss=s["final_val_loss"] + shift,
                             final_test_loss=s["final_test_loss"])])
    return db, config.trial_id, s


def test_rerun_reproduces_a_stored_trial_and_catches_a_difference(tmp_path, cache, capsys):
    import spiralsearch

    db, tid, s = stored(tmp_path)
    r = spiralsearch.rerun(tid, db)
    assert r.equal and (r.threads, r.device) == (1, "cpu")
    assert r.rerun == {"final_val_loss": s["final_val_loss"],
                       "final_test_loss": s["final_test_loss"]}
    assert r.out.parent == tmp_path / "one.runs" / "rerun" / tid
    assert main(["rerun", tid, "--db", str(db)]) == 0  # the table: both losses, equal
    table = capsys.readouterr().out
    assert repr(s["final_val_loss"]) in table and table.count("True") == 2
    assert len(list(r.out.parent.iterdir())) == 2  # a new folder for each rerun

    # --out holding a run: training would resume from it, not re-train
    assert main(["rerun", tid, "--db", str(db), "--out", str(r.out)]) == 2
    assert "already holds a run" in one_line_error(capsys, "rerun")

    bad, tid, _ = stored(tmp_path / "bad", shift=1e-12)
    assert main(["rerun", tid, "--db", str(bad), "--format", "json"]) == 1
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["equal"] is False
    assert record["rerun_final_test_loss"] == record["stored_final_test_loss"]
    ours = [x for x in out.err.splitlines() if x.startswith("spiralsearch rerun: ")]
    assert len(ours) == 1 and "does not reproduce" in ours[0] and "final_val_loss" in ours[0]


def test_rerun_of_an_unknown_or_unfinished_trial_exits_2(tmp_path, cache, capsys):
    store = ResultsStore(tmp_path / "s.duckdb")
    store.begin_sweep("s", "name: s\n")
    store.write(trials=[dict(sweep="s", config=dict(model=dict(spec="2")), status="stopped")])
    db = str(tmp_path / "s.duckdb")
    assert main(["rerun", "0123456789abcdef", "--db", db]) == 2
    assert "no trial '0123456789abcdef'" in one_line_error(capsys, "rerun")
    assert main(["rerun", "0123456789abcdef", "--db", str(tmp_path / "missing")]) == 2
    assert "no results database" in one_line_error(capsys, "rerun")
    tid = config_hash(dict(model=dict(spec="2")))
    assert main(["rerun", tid, "--db", db]) == 2
    assert "is stopped, not complete" in one_line_error(capsys, "rerun")
    assert main(["probe", "--trial", tid, "--db", db]) == 2
    assert "has no checkpoint" in one_line_error(capsys, "probe")
    assert main(["rerun", "--help"]) == 0 and "--format" in capsys.readouterr().out


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_selected_checkpoints_survive_and_rerun_reproduces_them(ray_session, tmp_path, cache,
                                                                capsys):
    from spiralsearch.search.driver import run_sweep

    path, db = tmp_path / "ckpt.yaml", tmp_path / "ckpt.duckdb"
    path.write_text(space_text(keep="all"))
    first = run_sweep(path, results=db, progress=False)
    assert first.counts == {"complete": 3}
    trials = load(db).set_index("trial_id")
    assert all(checkpoint_of(db, tid) for tid in trials.index)  # keep_checkpoints: all

    # the default (selected): the re-run trains nothing and prunes the unselected trial
    path.write_text(space_text())
    again = run_sweep(path, results=db, progress=False)
    assert again.skipped == 3 and again.counts == first.counts
    chosen = set(trials.index[trials["selected"] == True])  # noqa: E712 — a pandas mask
    assert len(chosen) == 2
    assert {tid for tid in trials.index if checkpoint_of(db, tid)} == chosen

    # after pruning, a re-run still skips every complete trial: resume reads the store
    third = run_sweep(path, results=db, progress=False)
    assert third.skipped == 3 and third.counts == first.counts
    after = load(db).set_index("trial_id")
    assert after["final_val_loss"].equals(trials["final_val_loss"])

    # rerun: the selected search trial and its replicate, re-trained from scratch in this
    # process, give back what the sweep's Ray workers stored
    for tid in sorted(chosen):
        assert main(["rerun", tid, "--db", str(db), "--format", "json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["equal"] and (r["threads"], r["device"]) == (1, "cpu")
        for k in ("final_val_loss", "final_test_loss"):
            assert r[f"rerun_{k}"] == trials.loc[tid, k]  # exactly, not approx
    tid = trials[(trials["selected"] == True) & (trials["replicate"] == 0)].index[0]  # noqa: E712

    # probe finds a kept checkpoint by trial id; a pruned one points at rerun
    assert main(["probe", "--trial", tid, "--db", str(db), "--sequences", "2",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["probes"]
    (pruned,) = set(trials.index) - chosen
    assert main(["probe", "--trial", pruned, "--db", str(db)]) == 2
    assert f"spiralsearch rerun {pruned}" in one_line_error(capsys, "probe")
