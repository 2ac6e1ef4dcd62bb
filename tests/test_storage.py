"""Storage for clusters: a space's `storage:` folder (a shared filesystem) or URI (an object
store; here `file://`, which goes through the same pyarrow code as `s3://`) holds its
trials' checkpoints and Ray Tune's state, so a trial resumed on another node finds its
checkpoint; and data that each node prepares in its own cache comes out the same."""

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
from spiralsearch.search.storage import Remote, is_uri, join, mirrored, parent
from spiralsearch.store import ResultsStore, config_hash


def space_text(storage: str | None, name: str = "shared") -> str:
    text = space_yaml(name, specs=("2",), search="sampler: random, scheduler: none, "
                      "samples_per_budget: 1, seed: 0, keep_checkpoints: all")
    return text + (f"storage: {storage}\n" if storage is not None else "")


@pytest.mark.parametrize("value,message", [
    ("s3://", "storage: 's3://' names no folder; give one, e.g. s3://bucket/runs"),
    ("runs/shared", "storage: 'runs/shared' is a relative path; give an absolute one"),
    ("3", "storage: expected a folder path or URI, got 3"),
    ('""', "storage: expected a folder path or URI, got ''"),
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
    assert same_design(space_text(None), space_text("s3://bucket/runs"))


def test_a_uri_storage_names_folders_in_the_store():
    space = parse_space(space_text("s3://bucket/spiral?region=eu-west-1"))
    db = "/home/me/results/shared.duckdb"
    assert runs_dir(db, space.storage) == "s3://bucket/spiral/shared.runs?region=eu-west-1"
    assert checkpoints_dir(db, space.storage) == \
        "s3://bucket/spiral/shared.runs/checkpoints?region=eu-west-1"
    assert parent(checkpoints_dir(db, space.storage)) == runs_dir(db, space.storage)
    assert join("gs://b/runs/", "ray") == "gs://b/runs/ray" and not is_uri("/mnt/runs")


def test_a_uri_storage_is_checked_before_anything_runs(tmp_path):
    db = tmp_path / "r.duckdb"
    uri = (tmp_path / "store").as_uri()
    assert check_storage(db, uri) == f"{uri}/r.runs"
    assert not (tmp_path / "store").exists()  # a check creates nothing
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "r.runs").write_text("")
    with pytest.raises(StorageError, match=r"^storage: file://.*/r\.runs is a file, not a "
                                           r"folder"):
        check_storage(db, uri)
    with pytest.raises(StorageError, match=r"^storage: cannot reach nope://bucket/x/r\.runs "
                                           r"\(.*\); checkpoints") as err:
        check_storage(db, "nope://bucket/x")
    assert "\n" not in str(err.value)


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


def test_kept_checkpoints_are_found_and_pruned_in_a_uri_storage(tmp_path):
    db = tmp_path / "results" / "shared.duckdb"
    uri = (tmp_path / "bucket").as_uri()
    text = space_text(uri).replace("keep_checkpoints: all", "keep_checkpoints: selected")
    store = ResultsStore(db)
    store.begin_sweep("shared", text)
    kept, dropped = (dict(model=dict(spec="2"), train=dict(seed=s)) for s in (0, 1))
    store.write(trials=[dict(sweep="shared", config=kept, status="complete", selected=True),
                        dict(sweep="shared", config=dropped, status="complete",
                             selected=False)])
    local = tmp_path / "scratch"
    (local / "checkpoints").mkdir(parents=True)
    (local / "summary.json").write_text('{"status": "complete"}')
    (local / "checkpoints" / "last.pt").write_bytes(b"weights")
    root = Remote(checkpoints_dir(db, uri))
    for config in (kept, dropped):
        assert root.child(config_hash(config)).push(local) == 2
    run = checkpoint_of(db, config_hash(kept))  # pulled beside the results for probes
    assert run == tmp_path / "results" / "shared.runs" / "pulled" / config_hash(kept)
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"weights"
    stamp = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert checkpoint_of(db, config_hash(kept)) == run  # a whole copy is reused...
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    (run / "checkpoints" / "last.pt").write_bytes(b"wei")  # ...a cut-off one pulled again
    assert (checkpoint_of(db, config_hash(kept)) / "checkpoints" / "last.pt").read_bytes() \
        == b"weights"
    assert prune(store, parse_space(text)) == 1
    assert root.folders() == [config_hash(kept)]
    assert checkpoint_of(db, config_hash(dropped)) is None


def _tiny(steps: int = 12):
    from spiralsearch.config import TrialConfig

    return TrialConfig.from_dict(dict(
        model=dict(spec="1+1x{1/2,1}+1", preset="tiny", d_model=32, n_heads=2),
        data=dict(source="corpus:sotu", seq_len=32),
        train=dict(batch_size=8, lr=3e-3, evals=3, eval_batches=1, threads=1),
        budget=dict(kind="tokens", value=8 * 32 * steps)))


def test_a_trial_resumes_from_a_uri_on_another_node(tmp_path, monkeypatch):
    """A trial mirrored to a URI dies after its first checkpoint; run again with nothing on
    the local disk (another node), it resumes from the pushed checkpoint and ends where an
    uninterrupted run ends. No scratch folder outlives a run."""
    import tempfile

    from spiralsearch.training.loop import train

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    whole = train(_tiny(), out_dir=tmp_path / "whole")
    uri = (tmp_path / "bucket" / "t1").as_uri()

    class Killed(Exception):
        pass

    def die(row):
        raise Killed

    with pytest.raises(Killed):
        mirrored(train)(_tiny(), out_dir=uri, callback=die)
    assert Remote(uri).files() == ["checkpoints/last.pt"]  # pushed before the death
    rows = []
    result = mirrored(train)(_tiny(), out_dir=uri, callback=rows.append)
    assert [r["step"] for r in rows] == [8, 12]  # the first evaluation was not run again
    assert [r["val_loss"] for r in result.metrics] == \
        pytest.approx([r["val_loss"] for r in whole.metrics], rel=1e-6)
    assert Remote(uri).files() == ["checkpoints/last.pt", "summary.json"]
    assert not list((tmp_path / "scratch").glob("spiralsearch-trial-*"))
    # a reader (a non-writer rank) pulls but never pushes
    Remote(uri).delete()
    mirrored(train, writer=False)(_tiny(), out_dir=uri)
    assert Remote(uri).kind() == "none"


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
@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "uri"])
def test_a_sweep_writes_checkpoints_and_tune_state_to_storage(ray_session, tmp_path,
                                                              monkeypatch, as_uri):
    """A folder is written in place; a URI holds the mirrored trial folder, and probes
    read a pulled copy."""
    from spiralsearch.search.driver import run_sweep
    from spiralsearch.store import load

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    shared = tmp_path / "shared-fs"
    path = tmp_path / "shared.yaml"
    path.write_text(space_text(shared.as_uri() if as_uri else str(shared)))
    db = tmp_path / "results" / "shared.duckdb"
    assert run_sweep(path, results=db, progress=False).counts == {"complete": 1}
    (tid,) = load(db)["trial_id"]
    runs = shared / "shared.runs"
    assert (runs / "checkpoints" / tid / "checkpoints" / "last.pt").is_file()
    assert (runs / "checkpoints" / tid / "summary.json").is_file()
    assert list((runs / "ray").glob("*/experiment_state-*.json"))  # Tune's state
    assert not (tmp_path / "results" / "shared.runs").exists()  # nothing beside the results
    pulled = tmp_path / "results" / "shared.runs" / "pulled" / tid
    assert checkpoint_of(db, tid) == (pulled if as_uri else runs / "checkpoints" / tid)


def test_dry_run_refuses_an_unreachable_uri_in_one_line(tmp_path, capsys):
    from spiralsearch.cli import main

    path = tmp_path / "shared.yaml"
    path.write_text(space_text("nope://bucket/runs"))
    db = tmp_path / "shared.duckdb"
    assert main(["sweep", str(path), "--dry-run", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spiralsearch sweep: error: storage: cannot reach nope://bucket/runs/"
                          "shared.runs (") and "\n" not in err
    assert not db.exists()


def test_a_push_replaces_files_where_a_move_cannot_overwrite(tmp_path, monkeypatch):
    """HDFS refuses to move onto an existing file: the old one is deleted first. A pull
    never takes a `.partial` file (a push cut off mid-file) for a checkpoint."""
    from pyarrow import fs

    class NoOverwrite:  # LocalFileSystem, but a move onto an existing file fails
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def move(self, src, dest):
            if self.inner.get_file_info(dest).type != fs.FileType.NotFound:
                raise OSError(f"{dest} exists")
            self.inner.move(src, dest)

    real = Remote._fs
    monkeypatch.setattr(Remote, "_fs", lambda self: (lambda f, p: (NoOverwrite(f), p))(
        *real(self)))
    remote = Remote((tmp_path / "store" / "t").as_uri())
    local = tmp_path / "scratch"
    (local / "checkpoints").mkdir(parents=True)
    for weights in (b"first", b"second"):
        (local / "checkpoints" / "last.pt").write_bytes(weights)
        assert remote.push(local) == 1
    assert (tmp_path / "store" / "t" / "checkpoints" / "last.pt").read_bytes() == b"second"
    (tmp_path / "store" / "t" / "summary.json.partial").write_text("{")
    assert remote.files() == ["checkpoints/last.pt"]
    assert remote.pull(tmp_path / "node") == 1 and not (tmp_path / "node" /
                                                        "summary.json.partial").exists()


def test_dry_run_says_where_the_files_go(tmp_path, capsys, monkeypatch):
    from spiralsearch.cli import main

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "shared.yaml"
    uri = (tmp_path / "bucket").as_uri()
    path.write_text(space_text(uri))
    db = tmp_path / "shared.duckdb"
    assert main(["sweep", str(path), "--dry-run", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"files: results in {db}; checkpoints and Ray's files in {uri}/shared.runs" in out
