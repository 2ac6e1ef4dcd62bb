"""Storage for clusters: a space's `storage:` folder (a shared filesystem) holds its trials'
checkpoints and Ray Tune's state, so a trial resumed on another node finds its checkpoint;
and data that each node prepares in its own cache comes out the same."""

from __future__ import annotations

import numpy as np
import pytest
from models import space_yaml

from spiralsearch.search.checkpoints import (
    StorageError,
    check_storage,
    checkpoint_of,
    checkpoints_dir,
    prune,
    runs_dir,
)
from spiralsearch.search.history import same_design
from spiralsearch.search.space import SpaceError, parse_space
from spiralsearch.store import ResultsStore, config_hash


def space_text(storage: str | None, name: str = "shared") -> str:
    text = space_yaml(name, specs=("2",), search="sampler: random, scheduler: none, "
                      "samples_per_budget: 1, seed: 0, keep_checkpoints: all")
    return text + (f"storage: {storage}\n" if storage is not None else "")


@pytest.mark.parametrize("value,message", [
    ("s3://bucket/runs", "storage: 's3://bucket/runs' is a URI; only a path on a filesystem "
     "that every node mounts"),
    ("runs/shared", "storage: 'runs/shared' is a relative path; give an absolute one"),
    ("3", "storage: expected a folder path, got 3"),
    ('""', "storage: expected a folder path, got ''"),
])
def test_bad_storage_is_refused_in_one_line(value, message):
    with pytest.raises(SpaceError) as err:
        parse_space(space_text(value), "s.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert "(see `spiralsearch keys storage` or docs/yaml.md)" in str(err.value)


def test_storage_moves_the_runs_folder_and_is_not_part_of_the_design(tmp_path):
    space = parse_space(space_text(str(tmp_path / "shared")))
    assert space.storage == str(tmp_path / "shared")
    assert parse_space(space_text("~/spiral")).storage == "~/spiral"
    assert parse_space(space_text(None)).storage is None
    db = tmp_path / "results" / "shared.duckdb"
    assert runs_dir(db) == tmp_path / "results" / "shared.runs"  # no storage: beside it
    assert checkpoints_dir(db, space.storage) == tmp_path / "shared" / "shared.runs" / \
        "checkpoints"
    # where files go changes no trial: a YAML that only moves them continues its sweep
    assert same_design(space_text(None), space_text("/mnt/shared"))


def test_unwritable_storage_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("")
    db = tmp_path / "r.duckdb"
    assert check_storage(db, str(tmp_path / "new" / "deeper")) == \
        tmp_path / "new" / "deeper" / "r.runs"
    assert not (tmp_path / "new").exists()  # a check creates nothing (dry runs ask it too)
    with pytest.raises(StorageError, match=r"^storage: cannot write .*file/x/r\.runs \(.*file "
                       r"is not a writable folder\)"):
        check_storage(db, str(tmp_path / "file" / "x"))


def test_kept_checkpoints_are_found_and_pruned_in_storage(tmp_path):
    db = tmp_path / "shared.duckdb"
    shared = tmp_path / "nfs"
    text = space_text(str(shared)).replace("keep_checkpoints: all", "keep_checkpoints: none")
    store = ResultsStore(db)
    store.begin_sweep("shared", text)
    config = dict(model=dict(spec="2"), train=dict(seed=0))
    tid = config_hash(config)
    store.write(trials=[dict(sweep="shared", config=config, status="complete",
                             selected=True)])
    run = checkpoints_dir(db, str(shared)) / tid
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert checkpoint_of(db, tid) == run  # probe --trial looks in the sweep's storage
    assert prune(store, parse_space(text)) == 1 and not run.exists()
    assert checkpoint_of(db, tid) is None


def test_each_node_prepares_the_same_data_in_its_own_cache(tmp_path):
    """A trial loads (tokenizes and caches on first use) its data where it runs: two
    nodes with their own empty caches build the same token streams."""
    from spiralsearch.config import DataConfig
    from spiralsearch.training.loop import load_split

    data = DataConfig(source="corpus:sotu", tokenizer="bytes", test_fraction=0.1)
    a = load_split_in(load_split, data, tmp_path / "node-a")
    b = load_split_in(load_split, data, tmp_path / "node-b")
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split), getattr(b, split)) and len(getattr(a, split))
    assert a.bytes_per_token == b.bytes_per_token
    assert any((tmp_path / "node-b" / "datasets").iterdir())  # built there, not copied


def load_split_in(load_split, data, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIRALSEARCH_CACHE", str(cache))
        return load_split(data)


@pytest.mark.slow
def test_a_sweep_writes_checkpoints_and_tune_state_to_storage(ray_session, tmp_path,
                                                              monkeypatch):
    from spiralsearch.search.driver import run_sweep
    from spiralsearch.store import load

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    shared = tmp_path / "shared-fs"
    path = tmp_path / "shared.yaml"
    path.write_text(space_text(str(shared)))
    db = tmp_path / "results" / "shared.duckdb"
    assert run_sweep(path, results=db, progress=False).counts == {"complete": 1}
    (tid,) = load(db)["trial_id"]
    runs = shared / "shared.runs"
    assert (runs / "checkpoints" / tid / "checkpoints" / "last.pt").is_file()
    assert list((runs / "ray").glob("*/experiment_state-*.json"))  # Tune's state
    assert not (tmp_path / "results" / "shared.runs").exists()  # nothing beside the results
    assert checkpoint_of(db, tid) == runs / "checkpoints" / tid
