"""A trial's identity (identity.py): what it computes, not how its steps run; and the
re-keying (search/rekey.py) that brings a results file written under an older rule, or
before an option existed, to the ids this version gives its trials."""

import hashlib
import json

import duckdb

from spiralsearch.config import TrialConfig
from spiralsearch.identity import canonical_config, canonical_json, config_hash
from spiralsearch.search.checkpoints import checkpoints_dir
from spiralsearch.search.history import same_design
from spiralsearch.search.rekey import rekey
from spiralsearch.store import ResultsStore, load, query


def trial(**train) -> TrialConfig:
    return TrialConfig.from_dict(dict(model=dict(spec="2", d_model=32, n_heads=2),
                                      train=dict(lr=3e-3) | train))


def test_how_steps_run_is_not_part_of_a_trials_identity():
    base = trial()
    for how in (dict(micro_batch=4), dict(loss_chunk=0), dict(compile="on")):
        other = trial(**how)
        assert other.trial_id == base.trial_id and other.point_id == base.point_id
        assert other.to_dict() != base.to_dict()  # the stored config keeps it (reruns)
    for what in (dict(lr=1e-3), dict(seed=1), dict(device="cpu"), dict(eval_batches=2)):
        assert trial(**what).trial_id != base.trial_id


def test_editing_how_steps_run_continues_a_sweep():
    from models import space_yaml

    assert same_design(space_yaml("s"), space_yaml("s", train="micro_batch: 2, compile: on"))
    assert not same_design(space_yaml("s"), space_yaml("s", train="grad_clip: 0.5"))


def old_id(config: dict) -> str:
    """The id a config had before the identity left execution settings out."""
    return hashlib.sha256(canonical_json(canonical_config(config)).encode()).hexdigest()[:16]


def as_older_file(db, ids: dict[str, str]) -> None:
    """Rewrite stored ids as an older version wrote them (metrics follow)."""
    with duckdb.connect(str(db)) as con:
        for new, old in ids.items():
            con.execute("UPDATE trials SET trial_id = ? WHERE trial_id = ?", [old, new])
            con.execute("UPDATE metrics SET trial_id = ? WHERE trial_id = ?", [old, new])


def test_a_file_with_older_ids_is_rekeyed_with_metrics_and_checkpoints(tmp_path):
    db = tmp_path / "old.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("old", "name: old\n")
    a, b = trial().to_dict(), trial(seed=1).to_dict()
    del a["train"]["loss_chunk"]  # stored before loss_chunk existed
    store.write(trials=[dict(sweep="old", config=a, status="complete", point_id="p"),
                        dict(sweep="old", config=b, status="running")],
                metrics={config_hash(a): [dict(step=1, val_loss=2.5)],
                         config_hash(b): [dict(step=1, val_loss=2.7)]})
    olds = {config_hash(a): old_id(a), config_hash(b): old_id(b)}
    as_older_file(db, olds)
    folder = checkpoints_dir(db) / old_id(b)
    folder.mkdir(parents=True)  # an unfinished trial's checkpoint, to resume from
    (folder / "marker").write_text("resume me")

    moved = rekey(store)
    want = {old_id(a): trial().trial_id, old_id(b): trial(seed=1).trial_id}
    assert moved == want
    rows = load(db).set_index("trial_id")
    assert set(rows.index) == set(want.values())
    assert rows.loc[trial().trial_id, "point_id"] == trial().point_id  # recomputed
    assert json.loads(rows.loc[trial().trial_id, "config"])["train"]["loss_chunk"] == 4096
    m = query(db, "SELECT trial_id, val_loss FROM metrics ORDER BY val_loss")
    assert m["trial_id"].tolist() == [trial().trial_id, trial(seed=1).trial_id]
    assert (checkpoints_dir(db) / trial(seed=1).trial_id / "marker").read_text() == \
        "resume me"
    assert rekey(store) == {}  # once is enough


def test_rekeying_leaves_imported_and_unreadable_rows_and_never_merges(tmp_path):
    db = tmp_path / "mixed.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("s", "name: s\n")
    imported = {"imported": dict(source="runs.csv", group="g", row=1, N=1e6)}
    unreadable = dict(model=dict(spec="2"), train=dict(no_such_option=1))
    c = trial().to_dict()
    d = dict(c, train=c["train"] | {"micro_batch": 2})  # the same trial, another way
    store.write(trials=[dict(sweep="s", config=imported, status="complete"),
                        dict(sweep="s", config=unreadable, status="complete"),
                        dict(sweep="s", config=d, status="failed")])
    as_older_file(db, {config_hash(d): old_id(d)})  # stored under its old id...
    store.write(trials=[dict(sweep="s", config=c, status="complete")])  # ...and again
    # its new id is held by the later run of it: both rows stay, nothing is merged
    assert rekey(store) == {}
    assert len(load(db)) == 4
    assert set(load(db)["status"]) == {"complete", "failed"}
