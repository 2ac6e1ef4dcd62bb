"""ResultsStore: schema, upserts, config columns, metrics, and the one-writer/many-readers
dance across processes (a live writer, and a writer killed with SIGKILL)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from spiralsearch import store
from spiralsearch.store import (
    SCHEMA_VERSION,
    ResultsStore,
    StoreBusy,
    StoreError,
    config_hash,
    connect_readonly,
    flatten_config,
    load,
    query,
)

REPO = Path(__file__).resolve().parents[1]


def cfg(d_model: int = 64, lr: float = 1e-3, **extra) -> dict:
    return {
        "model": {"spec": "2+4x{1,1}+2", "d_model": d_model, "tied": True, "dims": [1, 2]},
        "train": {"lr": lr, **extra},
        "budget": {"kind": "tokens", "target": 1_000_000},
    }


def trial(config: dict, **fields) -> dict:
    return {"sweep": "s", "config": config, **fields}


def column_types(path: Path) -> dict[str, str]:
    df = query(path, "SELECT column_name, data_type FROM duckdb_columns() "
                     "WHERE table_name = 'trials'")
    return dict(zip(df.column_name, df.data_type, strict=True))


# Child processes load store.py on its own: `import spiralsearch` pulls in torch, which
# costs a second or more of start-up per child and tells us nothing about the store.
PRELUDE = f"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("store", {str(REPO / "spiralsearch" / "store.py")!r})
store = sys.modules["store"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)
"""


def spawn(code: str, *args: str) -> subprocess.Popen:
    """A fresh interpreter (no forked DuckDB state) running `code` with `args` in argv."""
    code = PRELUDE + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results" / "s.duckdb"


# --------------------------------------------------------------------------------------
# configs


def test_config_hash_is_canonical():
    a = {"train": {"lr": 1e-3, "steps": 10}, "model": {"dims": (1, 2)}}
    b = {"model": {"dims": [1, 2]}, "train": {"steps": np.int64(10), "lr": 1e-3}}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, "train": {"lr": 2e-3, "steps": 10}})
    with pytest.raises(ValueError):
        config_hash({"x": math.nan})  # NaN is not JSON: no stable hash


def test_flatten_config():
    flat = flatten_config({"model": {"d_model": 64, "Attn": {"heads": 4}}, "seed": 1, "x": {}})
    assert flat == {"model_d_model": 64, "model_attn_heads": 4, "seed": 1, "x": {}}
    with pytest.raises(ValueError, match="model_d"):
        flatten_config({"model": {"d": 1}, "model_d": 2})
    with pytest.raises(ValueError, match="train_lr"):  # DuckDB column names ignore case
        flatten_config({"train": {"lr": 1, "LR": 2}})


# --------------------------------------------------------------------------------------
# schema


def test_schema_created_and_versioned(db: Path):
    ResultsStore(db).upsert_trial(trial(cfg()))
    assert load(db, "meta").set_index("key").value["schema_version"] == str(SCHEMA_VERSION)
    tables = set(query(db, "SELECT table_name FROM duckdb_tables()").table_name)
    assert tables == {"meta", "sweeps", "trials", "metrics"}


def test_newer_schema_version_is_refused(db: Path):
    ResultsStore(db).upsert_trial(trial(cfg()))
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    [str(SCHEMA_VERSION + 1)])
    with pytest.raises(StoreError, match="schema version"):
        ResultsStore(db).upsert_trial(trial(cfg()))
    with pytest.raises(StoreError, match="schema version"):
        load(db)


def test_migrations_run_in_order(db: Path, monkeypatch: pytest.MonkeyPatch):
    ResultsStore(db).upsert_trial(trial(cfg()))

    def v2(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("ALTER TABLE trials ADD COLUMN IF NOT EXISTS note VARCHAR")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, v2])
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert ResultsStore(db).trial_status("s")  # any write transaction migrates
    assert load(db, "meta").value[0] == str(SCHEMA_VERSION + 1)
    assert "note" in column_types(db)


def test_foreign_file_is_refused(tmp_path: Path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t (i INTEGER)")
    with pytest.raises(StoreError, match="not a spiralsearch"):
        load(path)
    empty = tmp_path / "empty.duckdb"  # a writer killed before its first commit
    duckdb.connect(str(empty)).close()
    with pytest.raises(StoreError, match="empty"):
        load(empty)
    ResultsStore(empty).upsert_trial(trial(cfg()))  # the writer takes it over
    assert len(load(empty)) == 1


def test_missing_file_is_an_error_not_created(tmp_path: Path):
    path = tmp_path / "nope.duckdb"
    for read in (connect_readonly, load, lambda p: query(p, "SELECT 1")):
        with pytest.raises(StoreError, match="nope.duckdb"):
            read(path)
    assert not path.exists()


# --------------------------------------------------------------------------------------
# trials


def test_upsert_is_idempotent_and_partial(db: Path):
    s = ResultsStore(db)
    c = cfg()
    s.upsert_trial(trial(c, status="running", params_total=1000, family="looped"))
    s.upsert_trial(trial(c, status="running", params_total=1000, family="looped"))
    s.upsert_trial(trial(c, status="complete", final_val_loss=3.25))
    df = load(db)
    assert len(df) == 1
    row = df.iloc[0]
    assert row.trial_id == config_hash(c)
    assert (row.status, row.final_val_loss) == ("complete", 3.25)
    assert (row.params_total, row.family) == (1000, "looped")  # kept: not in the update
    # the stored config is canonical JSON text that hashes back to the trial_id
    assert hashlib.sha256(row.config.encode()).hexdigest()[:16] == row.trial_id
    assert json.loads(row.config) == c


def test_bad_trial_rows_raise_before_writing(db: Path):
    s = ResultsStore(db)
    with pytest.raises(ValueError, match="bogus"):
        s.upsert_trial(trial(cfg(), bogus=1))
    with pytest.raises(ValueError, match="status"):
        s.upsert_trial(trial(cfg(), status="done"))
    with pytest.raises(ValueError, match="config_hash"):
        s.upsert_trial(trial(cfg(), trial_id="0" * 16))
    with pytest.raises(ValueError, match="config"):
        s.upsert_trial({"sweep": "s"})
    assert not db.exists()


def test_config_columns_and_types(db: Path):
    s = ResultsStore(db)
    s.write(trials=[trial(cfg(), status="complete"), trial(cfg(d_model=128))])
    types = column_types(db)
    assert types["model_spec"] == "VARCHAR"
    assert types["model_d_model"] == "BIGINT"
    assert types["model_tied"] == "BOOLEAN"
    assert types["model_dims"] == "JSON"
    assert types["train_lr"] == "DOUBLE"
    # config budget.kind / budget.target fill the fixed budget columns, unless the row says
    s.upsert_trial(trial(cfg(d_model=128), budget_target=2e6))
    assert load(db).budget_kind.tolist() == ["tokens", "tokens"]
    assert sorted(load(db).budget_target) == [1e6, 2e6]

    # A later trial brings a new key, a float where ints were, and a key seen only as None.
    s.upsert_trial(trial(cfg(d_model=96.5, warmup=100, data_path=None)))
    types = column_types(db)
    assert types["train_warmup"] == "BIGINT"
    assert types["model_d_model"] == "DOUBLE"
    assert "train_data_path" not in types
    df = load(db).set_index("model_d_model")
    assert df.train_warmup.isna().sum() == 2 and df.train_warmup[96.5] == 100
    assert sorted(df.index) == [64.0, 96.5, 128.0]

    # Incompatible types fall back to text rather than fail or truncate.
    s.upsert_trial(trial(cfg(warmup="auto")))
    assert column_types(db)["train_warmup"] == "VARCHAR"
    assert set(load(db).train_warmup.dropna()) == {"100", "auto"}


# --------------------------------------------------------------------------------------
# metrics and sweeps


def test_metrics_are_idempotent(db: Path):
    s = ResultsStore(db)
    tid = config_hash(cfg())
    s.upsert_trial(trial(cfg()))
    rows = [{"step": i, "tokens": 1000 * i, "train_loss": 4.0 - i / 10} for i in range(5)]
    s.add_metrics(tid, rows)
    s.add_metrics(tid, rows)
    s.write(metrics={tid: [{"step": 4, "val_loss": math.nan}, {"step": 4, "val_bpb": 1.5}]})
    df = load(db, "metrics")
    assert len(df) == 5 and df.step.tolist() == list(range(5))
    last = df.iloc[-1]
    assert (last.tokens, last.train_loss, last.val_bpb) == (4000, 3.6, 1.5)  # merged
    assert math.isnan(query(db, "SELECT val_loss FROM metrics WHERE step = 4").val_loss[0])
    assert query(db, "SELECT count(*) n FROM metrics WHERE val_loss IS NULL").n[0] == 4
    with pytest.raises(ValueError, match="step"):
        s.add_metrics(tid, [{"loss": 1.0}])


def test_completed_trial_ids_and_status(db: Path):
    s = ResultsStore(db)
    a, b, c = cfg(lr=1e-3), cfg(lr=2e-3), cfg(lr=3e-3)
    s.write(trials=[trial(a, status="complete"), trial(b, status="diverged"),
                    trial(c, status="running"), {**trial(cfg(lr=4.0), status="complete"),
                                                 "sweep": "other"}])
    assert s.completed_trial_ids("s") == {config_hash(a)}
    assert s.trial_status("s") == {config_hash(a): "complete", config_hash(b): "diverged",
                                   config_hash(c): "running"}


def test_sweep_resume_keeps_first_start(db: Path):
    s = ResultsStore(db)
    s.begin_sweep("s", "a: 1", git_revision="abc", versions={"duckdb": duckdb.__version__})
    s.end_sweep("s", "interrupted")
    first = load(db, "sweeps").iloc[0]
    assert first.status == "interrupted" and not pd.isna(first.ended_at)
    s.begin_sweep("s", "a: 2")
    again = load(db, "sweeps").iloc[0]
    assert again.started_at == first.started_at and pd.isna(again.ended_at)
    assert (again.status, again.yaml, again.git_revision) == ("running", "a: 2", "abc")
    s.end_sweep("s")
    assert load(db, "sweeps").status[0] == "complete"
    with pytest.raises(StoreError, match="begin_sweep"):
        s.end_sweep("unknown")


def test_store_pickles_without_a_connection(db: Path):
    s = pickle.loads(pickle.dumps(ResultsStore(str(db))))
    assert s.path == db and not db.exists()
    s.upsert_trial(trial(cfg()))
    assert len(load(db)) == 1


# --------------------------------------------------------------------------------------
# processes


WRITER = """
    import sys, time
    path, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = store.ResultsStore(path)
    for i in range(n):
        c = {"model": {"d_model": i}, "train": {"lr": 1e-3}}
        tid = store.config_hash(c)
        # one transaction: a trial and its 5 metric rows, so readers see both or neither
        s.write(trials=[{"sweep": "s", "config": c, "status": "complete"}],
                metrics={tid: [{"step": k, "train_loss": 1.0} for k in range(5)]})
        print(tid, flush=True)
        time.sleep(pause)
"""


@pytest.mark.slow
def test_reader_gets_in_while_writer_is_active(db: Path):
    n = 20
    ResultsStore(db).begin_sweep("s", "")  # the file exists before the first read
    writer = spawn(WRITER, str(db), str(n), "0.02")
    seen, reads = 0, 0
    try:
        while writer.poll() is None:
            if reads % 2:
                with connect_readonly(db, timeout_s=10) as con:
                    t, m = con.execute("SELECT (SELECT count(*) FROM trials), "
                                       "(SELECT count(*) FROM metrics)").fetchall()[0]
            else:
                t, m = query(db, "SELECT (SELECT count(*) FROM trials) t, "
                                 "(SELECT count(*) FROM metrics) m", timeout_s=10).iloc[0]
            assert m == 5 * t, "a reader saw half a batch"
            assert t >= seen, "counts went backwards"
            seen, reads = t, reads + 1
            time.sleep(0.01)  # a notebook polling, not a tight loop (that starves readers)
    finally:
        writer.kill()
        _, err = writer.communicate()
    assert writer.returncode == 0, err
    assert reads >= 5 and 0 < seen <= n
    assert len(load(db)) == n


@pytest.mark.slow
def test_sigkill_loses_no_committed_batch(db: Path):
    writer = spawn(WRITER, str(db), "100000", "0")
    committed = [writer.stdout.readline().strip() for _ in range(15)]
    writer.send_signal(signal.SIGKILL)  # most likely mid-transaction on the next batch
    writer.wait()
    for line in writer.stdout:  # printed before the kill landed
        committed.append(line.strip())
    stored = set(load(db).trial_id)
    assert set(committed) <= stored
    assert len(stored) - len(committed) <= 1  # at most the batch whose print was cut off
    # the writer can carry on in the same file
    s = ResultsStore(db)
    s.upsert_trial(trial(cfg()))
    assert len(load(db)) == len(stored) + 1
    assert s.completed_trial_ids("s") >= set(committed)


DIES_AFTER_COMMIT = """
    import os, signal

    class Dying:  # a connection that takes the process down instead of closing
        def __init__(self, con): self.con = con
        def __getattr__(self, name): return getattr(self.con, name)
        def close(self): os.kill(os.getpid(), signal.SIGKILL)

    connect = store._connect
    store._connect = lambda *a, **k: Dying(connect(*a, **k))
    store.ResultsStore(sys.argv[1]).upsert_trial(
        {"sweep": "s", "config": {"x": 1}, "status": "complete"})
"""


def test_sigkill_after_commit_before_checkpoint(db: Path):
    # Committed but never checkpointed: the rows live only in the WAL, which a read-only
    # open replays in memory and the next write folds into the file.
    writer = spawn(DIES_AFTER_COMMIT, str(db))
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert db.with_suffix(".duckdb.wal").stat().st_size > 0
    assert load(db).status.tolist() == ["complete"]
    ResultsStore(db).upsert_trial(trial(cfg()))
    assert len(load(db)) == 2 and not db.with_suffix(".duckdb.wal").exists()


HOLDER = """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
    con.close()
"""


def test_reader_times_out_with_a_clear_error(db: Path):
    ResultsStore(db).begin_sweep("s", "")
    holder = spawn(HOLDER, str(db), "rw", "30")
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(StoreBusy, match="s.duckdb") as info:
            connect_readonly(db, timeout_s=0.3)
        assert isinstance(info.value, TimeoutError)
        assert 0.3 <= time.monotonic() - t0 < 2
    finally:
        holder.kill()
        holder.wait()


def test_writer_waits_for_a_reader_to_let_go(db: Path):
    ResultsStore(db).begin_sweep("s", "")
    holder = spawn(HOLDER, str(db), "ro", "0.5")
    try:
        assert holder.stdout.readline().strip() == "locked"
        ResultsStore(db, lock_timeout_s=10).upsert_trial(trial(cfg()))
    finally:
        holder.kill()
        holder.wait()
    assert len(load(db)) == 1


def test_migrations_bring_a_v1_file_to_the_schema(tmp_path: Path):
    """A file made by schema version 1 ends up, after migrating, with exactly the columns
    (and types) the result schema defines: the migrations and spiralsearch.schema agree."""
    from spiralsearch.store import METRIC_COLUMNS, TRIAL_COLUMNS

    old = tmp_path / "v1.duckdb"
    with duckdb.connect(str(old)) as con:
        store.MIGRATIONS[0](con)
        con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    ResultsStore(old).trial_status("s")  # any write transaction migrates
    fresh = tmp_path / "fresh.duckdb"
    ResultsStore(fresh).trial_status("s")
    for path in (old, fresh):
        with duckdb.connect(str(path), read_only=True) as con:
            for table, want in (("trials", TRIAL_COLUMNS), ("metrics", METRIC_COLUMNS)):
                have = dict(con.execute(
                    "SELECT column_name, data_type FROM duckdb_columns() "
                    "WHERE table_name = ?", [table]).fetchall())
                assert have == {k: t.split()[0] for k, t in want.items()}, (path, table)


def test_atomic_writes_get_a_plain_files_mode(tmp_path, monkeypatch):
    """A report or summary written atomically is readable like any file the user writes
    (mkstemp's 0600 would hide it from a web server or a colleague)."""
    import os

    from spiralsearch.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.html", "<html></html>")
    finally:
        os.umask(old)
    assert path.read_text() == "<html></html>" and (path.stat().st_mode & 0o777) == 0o644
