"""Replicates (search.replicates = R): each (budget, group)'s selected point, its best complete
search trial by the validation metric, re-run R - 1 times with train.seed + 1 .. + R - 1, as
a second phase that ASHA never stops; resume skips what is stored."""

import json

import duckdb
import pytest
from models import space_yaml

from spiralsearch.search.driver import run_sweep
from spiralsearch.search.replicates import select
from spiralsearch.search.resume import Previous, Stored
from spiralsearch.search.space import SpaceError, parse_space
from spiralsearch.store import load

LR = "{loguniform: [1.0e-3, 1.0e-2]}"


def space_text(name="reps", replicates=3, lr=LR, extra="", scheduler="asha"):
    """Two families, 2 lr samples each at one budget, `replicates` runs of each selected
    point; `extra` adds train entries."""
    return space_yaml(name, lr=lr, train=extra,
                      search=f"sampler: tpe, scheduler: {scheduler}, samples_per_budget: 2, "
                      f"seed: 0, replicates: {replicates}")


def _config(row) -> dict:
    return row["config"] if isinstance(row["config"], dict) else json.loads(row["config"])


def _without_seed(config: dict) -> dict:
    return config | {"train": {k: v for k, v in config["train"].items() if k != "seed"}}


def test_replicates_are_validated_in_one_line():
    assert parse_space(space_text(replicates=1)).search.replicates == 1
    assert parse_space(space_text(replicates=4)).search.replicates == 4
    with pytest.raises(SpaceError, match=r"^search\.replicates: .*>= 1") as e:
        parse_space(space_text(replicates=0))
    assert "\n" not in str(e.value)
    with pytest.raises(SpaceError, match=r"^search\.replicates") as e:
        parse_space(space_text(replicates="two"))
    seeded = space_text(replicates=2, extra="seed: {choice: [0, 1]}")
    with pytest.raises(SpaceError, match=r"^search\.replicates: 2 .*train\.seed") as e:
        parse_space(seeded)
    assert "\n" not in str(e.value)
    # one run per point: searching the seed is allowed
    assert parse_space(space_text(replicates=1, extra="seed: {int: [0, 9]}"))


def test_selection_is_the_best_complete_search_trial():
    """By the metric and mode; replicates, unfinished and non-finite trials never win;
    ties go to the lower trial_id."""
    s = parse_space(space_text())

    def t(g, value, status="complete", replicate=0):
        return Stored(g, replicate, {}, status, value, None, None)

    prev = Previous(trials={"a": t(0, 3.0), "b": t(0, 2.0), "c": t(0, 1.0, replicate=1),
                            "d": t(0, 0.5, "stopped"), "e": t(1, float("nan")),
                            "f": t(1, 4.0), "g": t(1, 4.0)})
    assert select(s, prev) == {0: "b", 1: "f"}
    maximise = parse_space(space_text().replace("seed: 0,", "seed: 0, mode: max,"))
    assert select(maximise, prev) == {0: "a", 1: "f"}
    assert select(s, Previous()) == {}


@pytest.mark.slow
def test_replicates_rerun_each_cells_selected_point(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "reps.yaml"
    path.write_text(space_text())
    db = tmp_path / "reps.duckdb"
    report = run_sweep(path, results=db, progress=False)
    trials = load(db)
    assert len(trials) == 8  # 2 cells x (2 search trials + 2 replicates)
    # ASHA may stop a search trial (whichever reports second and worse), never a replicate
    assert set(trials["status"]) <= {"complete", "stopped"}
    assert (trials[trials["replicate"] > 0]["status"] == "complete").all()
    for name, cell in trials.groupby("group_name"):
        search = cell[cell["replicate"] == 0]
        assert len(search) == 2
        done = search[search["status"] == "complete"]
        best = done.sort_values(["final_val_loss", "trial_id"]).iloc[0]
        chosen = cell[cell["selected"] == True]  # noqa: E712 — a pandas mask
        assert len(chosen) == 3, name
        assert sorted(chosen["replicate"]) == [0, 1, 2]
        assert chosen["point_id"].nunique() == 1
        zero = chosen[chosen["replicate"] == 0].iloc[0]
        assert zero["trial_id"] == best["trial_id"]  # the cell's best search trial by val loss
        assert not search[search["trial_id"] != best["trial_id"]]["selected"].any()
        configs = [_config(r) for r in chosen.sort_values("replicate").to_dict("records")]
        assert [c["train"]["seed"] for c in configs] == [0, 1, 2]
        assert all(_without_seed(c) == _without_seed(configs[0]) for c in configs)
        assert chosen["final_val_loss"].nunique() == 3  # the seed matters
        assert (chosen["status"] == "complete").all()
        assert len(chosen["train_lr"].unique()) == 1

    # replicates never count against the search quota
    space = parse_space(path.read_text())
    prev = Previous.load(db, space, space.groups())
    searched = trials[trials["replicate"] == 0]
    assert prev.finished == {0: 2, 1: 2}  # stopped or complete, both count as finished
    assert len(prev.done) == (searched["status"] == "complete").sum()  # ASHA may stop one
    assert sum(t.replicate > 0 for t in prev.trials.values()) == 4

    # a re-run adds nothing and selects the same points
    again = run_sweep(path, results=db, progress=False)
    complete = report.counts["complete"]
    assert again.counts == report.counts and again.skipped == complete
    same = load(db)
    assert len(same) == 8
    assert set(same[same["selected"] == True]["trial_id"]) == set(  # noqa: E712
        trials[trials["selected"] == True]["trial_id"])  # noqa: E712

    # a lost replicate is run again, and only that one
    lost = trials[trials["replicate"] == 2].iloc[0]
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM trials WHERE trial_id = ?", [lost["trial_id"]])
        con.execute("DELETE FROM metrics WHERE trial_id = ?", [lost["trial_id"]])
    third = run_sweep(path, results=db, progress=False)
    assert third.skipped == complete - 1 and third.counts == report.counts
    back = load(db).set_index("trial_id").loc[lost["trial_id"]]
    assert back["selected"] and back["replicate"] == 2
    assert back["final_val_loss"] == pytest.approx(lost["final_val_loss"])  # deterministic


@pytest.mark.slow
def test_one_replicate_changes_nothing(ray_session, tmp_path, monkeypatch):
    """replicates: 1 (the default) has no second phase; rows still say replicate 0 and mark
    each cell's best search trial selected."""
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "one.yaml"
    path.write_text(space_text(name="one", replicates=1, scheduler="none"))
    db = tmp_path / "one.duckdb"
    assert run_sweep(path, results=db, progress=False).counts == {"complete": 4}
    trials = load(db)
    assert (trials["replicate"] == 0).all() and trials["point_id"].notna().all()
    for _, cell in trials.groupby("group_name"):
        best = cell.sort_values(["final_val_loss", "trial_id"]).iloc[0]
        assert cell.set_index("trial_id")["selected"].to_dict() == {
            tid: tid == best["trial_id"] for tid in cell["trial_id"]}
    assert sorted(t["train"]["seed"] for t in map(_config, trials.to_dict("records"))) == [0] * 4
