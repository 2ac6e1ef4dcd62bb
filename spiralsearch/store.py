"""Sweep results in DuckDB: one file per sweep (default `results/NAME.duckdb`).

    store = ResultsStore("results/demo.duckdb")      # picklable; opens nothing yet
    store.begin_sweep("demo", yaml_text, git_revision="abc123")
    store.write(trials=[{"sweep": "demo", "config": cfg, "status": "running"}],
                metrics={config_hash(cfg): [{"step": 100, "train_loss": 3.2}]})
    store.end_sweep("demo")

    df = load("results/demo.duckdb")                  # notebooks, other processes
    df = query("results/demo.duckdb", "SELECT model_spec, min(val_loss) FROM metrics ...")

DuckDB lets one process hold a read-write connection OR any number of processes hold
read-only ones, never both (a conflicting open fails at once with "Could not set lock").
So the single writer (the sweep driver) opens a connection per write batch, commits one
short transaction and closes it, and everyone (writer included) retries a conflicting open
with bounded exponential back-off. Readers must close their connections promptly: a
notebook holding one open stalls the writer until its lock timeout.

Tables (see `_v1_create` for the exact DDL):
    meta     key -> value; `schema_version` is checked on every open.
    sweeps   one row per sweep: yaml, start/end (UTC), git revision, package versions, status.
    trials   one row per trial_id = config_hash(config), fixed result columns plus every
             config leaf as its own column (`model_d_model`, `train_lr`, ...), added on demand.
    metrics  one row per (trial_id, step); re-ingesting a report replaces, never duplicates.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from spiralsearch.identity import canonical_config, canonical_json, config_hash
from spiralsearch.schema import MetricRow, Status, TrialSummary, sql_columns

if TYPE_CHECKING:  # only load/query return DataFrames; the writer need not import pandas
    import pandas as pd

__all__ = [
    "METRIC_COLUMNS",
    "SCHEMA_VERSION",
    "SWEEP_STATUSES",
    "TRIAL_COLUMNS",
    "TRIAL_STATUSES",
    "ResultsStore",
    "StoreBusy",
    "StoreError",
    "config_hash",
    "connect_readonly",
    "flatten_config",
    "load",
    "query",
    "store_path",
]

TRIAL_STATUSES = tuple(s.value for s in Status)
SWEEP_STATUSES = ("running", "complete", "failed", "interrupted")

# The columns come from the result schema (spiralsearch.schema); config leaves get columns
# of their own, added on demand.
TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "VARCHAR PRIMARY KEY", "sweep": "VARCHAR", **sql_columns(TrialSummary),
    "config": "JSON",  # the canonical config that trial_id hashes
    "updated_at": "TIMESTAMP",  # UTC
}
METRIC_COLUMNS: dict[str, str] = {"trial_id": "VARCHAR NOT NULL",
                                  **sql_columns(MetricRow)} | {"step": "BIGINT NOT NULL"}

# Config leaves may not land on these: they are owned by the store.
_RESERVED = {"trial_id", "config", "updated_at"}


class StoreError(Exception):
    """A results file that is missing, not ours, from a newer schema, or misused."""


class StoreBusy(StoreError, TimeoutError):
    """Another process kept the results file locked for longer than the timeout."""


# --------------------------------------------------------------------------------------
# configs


def flatten_config(config: Mapping[str, Any], sep: str = "_") -> dict[str, Any]:
    """{"model": {"d_model": 64}} -> {"model_d_model": 64}. Lists stay lists (stored as
    JSON); an empty dict is a leaf. Names are lower-cased because DuckDB matches column
    names case-insensitively; names that collide raise ValueError rather than silently
    overwrite each other."""
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}

    def walk(d: Mapping[str, Any], prefix: str, path: str) -> None:
        for k, v in d.items():
            name, p = f"{prefix}{k}".lower(), f"{path}.{k}" if path else str(k)
            if isinstance(v, Mapping) and v:
                walk(v, name + sep, p)
                continue
            if name in seen:
                raise ValueError(f"config keys {seen[name]!r} and {p!r} both "
                                 f"flatten to column {name!r}")
            seen[name] = p
            out[name] = v

    walk(config, "", "")
    return out


def _sql_type(v: Any) -> str | None:
    """DuckDB column type for a canonical JSON value; None for None (no evidence yet)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "BOOLEAN"
    if isinstance(v, int):
        return "BIGINT" if -(2**63) <= v < 2**63 else "VARCHAR"
    if isinstance(v, float):
        return "DOUBLE"
    if isinstance(v, (list, dict)):
        return "JSON"
    return "VARCHAR"


def _widen(a: str, b: str) -> str:
    """The narrowest type that holds both: ints widen to DOUBLE, anything else to text."""
    if a == b:
        return a
    if {a, b} == {"BIGINT", "DOUBLE"}:
        return "DOUBLE"
    return "VARCHAR"


def _adapt(v: Any, sql_type: str) -> Any:
    """Python value to bind for a column of `sql_type`."""
    if v is None:
        return None
    if sql_type == "JSON" and isinstance(v, str):
        return v  # only ever already-JSON text: a str leaf widens its column to VARCHAR
    if sql_type == "JSON" or (sql_type == "VARCHAR" and not isinstance(v, str)):
        # Canonical text, so the stored config hashes to its trial_id; True -> 'true',
        # like DuckDB's own BOOLEAN -> VARCHAR cast.
        return canonical_json(v)
    return v


def _q(name: str) -> str:
    """Quote an identifier (config keys may contain anything)."""
    return '"' + name.replace('"', '""') + '"'


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------------------
# schema and migrations


def _v1_create(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("""
        CREATE TABLE sweeps (
            name VARCHAR PRIMARY KEY, yaml TEXT, started_at TIMESTAMP, ended_at TIMESTAMP,
            git_revision VARCHAR, versions JSON, status VARCHAR)""")
    con.execute("""
        CREATE TABLE trials (
            trial_id VARCHAR PRIMARY KEY, sweep VARCHAR, family VARCHAR, spec VARCHAR,
            status VARCHAR, error VARCHAR, budget_kind VARCHAR, budget_target DOUBLE,
            budget_achieved DOUBLE, params_total BIGINT, params_non_embedding BIGINT,
            params_unrolled BIGINT, flops_per_token DOUBLE, final_val_loss DOUBLE,
            best_val_loss DOUBLE, final_val_bpb DOUBLE, wall_seconds DOUBLE, config JSON,
            updated_at TIMESTAMP)""")
    con.execute("""
        CREATE TABLE metrics (
            trial_id VARCHAR NOT NULL, step BIGINT NOT NULL, tokens BIGINT, train_flops DOUBLE,
            train_loss DOUBLE, val_loss DOUBLE, val_bpb DOUBLE, lr DOUBLE,
            tokens_per_s DOUBLE, wall_seconds DOUBLE, PRIMARY KEY (trial_id, step))""")


def _v2_summary_columns(con: duckdb.DuckDBPyConnection) -> None:
    """The whole TrialSummary in `trials`: steps, tokens and FLOPs run, and the data's
    reference losses."""
    for name, sql in (("steps", "BIGINT"), ("tokens", "BIGINT"), ("train_flops", "DOUBLE"),
                      ("unigram_entropy", "DOUBLE"), ("optimal_loss", "DOUBLE")):
        con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {name} {sql}")


def _v3_groups_and_test_split(con: duckdb.DuckDBPyConnection) -> None:
    """Comparison groups and the held-out test split."""
    for name, sql in (("group_name", "VARCHAR"), ("final_test_loss", "DOUBLE"),
                      ("final_test_bpb", "DOUBLE")):
        con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {name} {sql}")


def _v4_replicates(con: duckdb.DuckDBPyConnection) -> None:
    """Replicates (search.replicates): which re-run of which point a trial is, and whether
    it measures its cell's selected point."""
    for name, sql in (("replicate", "BIGINT"), ("point_id", "VARCHAR"),
                      ("selected", "BOOLEAN")):
        con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {name} {sql}")


def _v5_sizes(con: duckdb.DuckDBPyConnection) -> None:
    """The size axis (sizes:): which size of its cell a trial is."""
    for name, sql in (("size_index", "BIGINT"), ("size_target", "DOUBLE")):
        con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {name} {sql}")


def _v6_imported(con: duckdb.DuckDBPyConnection) -> None:
    """External results (`spiralsearch import`): which rows came from a CSV."""
    con.execute("ALTER TABLE trials ADD COLUMN IF NOT EXISTS imported BOOLEAN")


def _v7_failures(con: duckdb.DuckDBPyConnection) -> None:
    """Sweeps that survive faults: what ended a failed trial, and how often it started."""
    for name, sql in (("failure", "VARCHAR"), ("attempts", "BIGINT")):
        con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {name} {sql}")


def _v8_mfu(con: duckdb.DuckDBPyConnection) -> None:
    """Model FLOPs utilisation per evaluation (metrics.mfu)."""
    con.execute("ALTER TABLE metrics ADD COLUMN IF NOT EXISTS mfu DOUBLE")


# MIGRATIONS[i] takes a file from schema version i to i + 1, inside the write transaction.
# To change the schema, change spiralsearch.schema and append a function here that brings
# older files to it (e.g. `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`); never edit a
# migration that has shipped. A test holds the migrated columns equal to the schema's.
MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    _v1_create, _v2_summary_columns, _v3_groups_and_test_split, _v4_replicates, _v5_sizes,
    _v6_imported, _v7_failures, _v8_mfu]
SCHEMA_VERSION = len(MIGRATIONS)


def _schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Version recorded in the file; 0 for an empty file; StoreError if it is not ours."""
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
    ).fetchall()}
    if not tables:
        return 0
    if "meta" not in tables:
        raise StoreError(f"{path} is not a spiralsearch results store (no meta table)")
    # fetchall, not fetchone: duckdb 2.0 refuses further work on a connection whose
    # execute() result is only partly read.
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if len(rows) != 1 or not rows[0][0].isdigit():
        raise StoreError(f"{path} has no valid schema_version in its meta table: {rows}")
    return int(rows[0][0])


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version} but this spiralsearch only "
                         f"knows up to {SCHEMA_VERSION}; upgrade spiralsearch to read it")


def _migrate(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    version = _schema_version(con, path)
    _check_version(version, path)
    for v in range(version, SCHEMA_VERSION):
        MIGRATIONS[v](con)
    if version < SCHEMA_VERSION:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    [str(SCHEMA_VERSION)])


# --------------------------------------------------------------------------------------
# connecting


def _is_lock_conflict(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and "Could not set lock" in str(e)


# A reader can touch nothing but its results file: no file reads or writes outside it (COPY
# ... TO, ATTACH, EXPORT DATABASE, read_csv), no extension installs or loads, no persistent
# secrets, no spill files beside it, and no SET or PRAGMA that undoes any of this. Every
# reader opens with the same settings, as DuckDB refuses two configurations of one file
# in one process.
READER_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False,
                 "autoload_known_extensions": False, "allow_persistent_secrets": False,
                 "temp_directory": "", "lock_configuration": True}


def _connect(path: Path, *, read_only: bool, timeout_s: float,
             max_delay_s: float = 0.2) -> duckdb.DuckDBPyConnection:
    """Open `path` (read-only: sandboxed by READER_CONFIG), retrying lock conflicts with
    exponential back-off and jitter (5 ms doubling up to `max_delay_s`) until `timeout_s`
    seconds have passed, then raise StoreBusy."""
    deadline = time.monotonic() + timeout_s
    delay, tries = 0.005, 0
    config = READER_CONFIG if read_only else {}
    while True:
        tries += 1
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as e:
            if not _is_lock_conflict(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusy(f"{path} stayed locked for {timeout_s:.1f} s ({tries} tries); "
                                f"last error: {e}") from e
            # Jitter so that several readers do not retry in lock-step.
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, max_delay_s)


def connect_readonly(path: str | Path, *, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Read-only connection to a results file, retrying for up to `timeout_s` seconds while
    the writer holds it. Close it promptly (`with connect_readonly(p) as con:`): while it
    is open the sweep driver cannot write. Raises StoreError if the file is missing or has
    a newer schema, StoreBusy if it stays locked."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no results database at {path}")
    try:
        con = _connect(path, read_only=True, timeout_s=timeout_s)
    except StoreBusy:
        raise
    except duckdb.Error as e:  # not a DuckDB file, or one this DuckDB cannot read
        raise StoreError(f"{path} is not a readable DuckDB results file "
                         f"({str(e).splitlines()[0]})") from None
    try:
        version = _schema_version(con, path)
        if version == 0:  # created, but the writer died before its first commit
            raise StoreError(f"{path} is empty: no batch was ever committed to it")
        _check_version(version, path)
    except BaseException:
        con.close()
        raise
    return con


_ORDER = {"trials": "trial_id", "metrics": "trial_id, step", "sweeps": "name", "meta": "key"}


def load(path: str | Path, table: str = "trials", *, timeout_s: float = 30.0) -> pd.DataFrame:
    """A whole table as a DataFrame (JSON columns as str, timestamps UTC). Holds the file
    only while reading."""
    order = f" ORDER BY {_ORDER[table]}" if table in _ORDER else ""
    return query(path, f"SELECT * FROM {_q(table)}{order}", timeout_s=timeout_s)


def query(path: str | Path, sql: str, *, timeout_s: float = 30.0) -> pd.DataFrame:
    """Run one read-only SQL query against a results file and return a DataFrame. The
    connection can change no file and reach nothing outside the results file (see
    READER_CONFIG); SQL that tries, or that DuckDB refuses, raises duckdb.Error. A
    statement with no result (no SELECT) raises StoreError."""
    if not sql.strip():
        raise StoreError("empty SQL: give a query such as 'SELECT * FROM trials'")
    with connect_readonly(path, timeout_s=timeout_s) as con:
        rel = con.sql(sql)
        if rel is None:
            raise StoreError(f"{sql.strip()[:60]!r} returns no rows: query runs a SELECT "
                             f"(or another statement with a result)")
        return rel.df()


def store_path(name: str, root: str | Path = "results") -> Path:
    """Default location of a sweep's results file: `results/NAME.duckdb`."""
    return Path(root) / f"{name}.duckdb"


# --------------------------------------------------------------------------------------
# the writer


def _prepare_trial(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one trial row and expand its config into flattened columns."""
    unknown = sorted(set(row) - set(TRIAL_COLUMNS))
    if unknown:
        raise ValueError(f"unknown trial keys {unknown}; known: {sorted(TRIAL_COLUMNS)}")
    missing = [k for k in ("sweep", "config") if row.get(k) is None]
    if missing:
        raise ValueError(f"trial row needs {missing}")
    status = row.get("status")
    if status is not None and status not in TRIAL_STATUSES:
        raise ValueError(f"trial status {status!r} not in {TRIAL_STATUSES}")
    config = canonical_config(row["config"])
    tid = config_hash(config)
    if row.get("trial_id", tid) != tid:
        raise ValueError(f"trial_id {row['trial_id']!r} != config_hash(config) {tid!r}")
    out = dict(row, trial_id=tid, config=config)
    out.setdefault("updated_at", _now())
    for name, v in flatten_config(config).items():
        if name in _RESERVED:
            raise ValueError(f"config key {name!r} would overwrite a store-owned column")
        # A leaf named like a fixed column (config budget.kind -> budget_kind) fills it
        # unless the row sets it: the trainer's measured value beats the request.
        if name not in row:
            out[name] = v
    return out


def _merge_by(rows: Sequence[Mapping[str, Any]], key: Callable[[Mapping], Any]) -> list[dict]:
    """Merge rows with the same key, later fields winning, so each key is written once."""
    merged: dict[Any, dict] = {}
    for r in rows:
        merged.setdefault(key(r), {}).update(r)
    return list(merged.values())


@dataclass
class ResultsStore:
    """The one writer of a sweep's results file. Holds only the path, so it pickles (Ray
    Tune ships it inside a callback); each call opens a connection, runs one committed
    transaction and closes it, leaving gaps in which readers get in.

    lock_timeout_s: how long a write waits for readers to let go (seconds)."""

    path: Path
    lock_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The writer retries faster than readers (20 ms vs 200 ms cap): a busy notebook
        # re-querying in a loop should not starve the sweep.
        con = _connect(self.path, read_only=False, timeout_s=self.lock_timeout_s,
                       max_delay_s=0.02)
        try:
            con.execute("BEGIN TRANSACTION")
            _migrate(con, self.path)
            yield con
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()  # releases the file lock (and checkpoints the WAL)

    def begin_sweep(self, name: str, yaml_text: str, *, git_revision: str | None = None,
                    versions: Mapping[str, str] | None = None) -> None:
        """Record a sweep as running. Re-running (resuming) the same sweep keeps the first
        started_at, clears ended_at and refreshes yaml, revision and versions."""
        with self._transaction() as con:
            con.execute("""
                INSERT INTO sweeps VALUES (?, ?, ?, NULL, ?, ?, 'running')
                ON CONFLICT (name) DO UPDATE SET
                    yaml = excluded.yaml, ended_at = NULL, status = 'running',
                    git_revision = coalesce(excluded.git_revision, sweeps.git_revision),
                    versions = coalesce(excluded.versions, sweeps.versions)""",
                [name, yaml_text, _now(), git_revision,
                 None if versions is None else json.dumps(dict(versions))])

    def end_sweep(self, name: str, status: str = "complete") -> None:
        """Stamp ended_at (UTC) and the final status on a sweep begun with begin_sweep."""
        if status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status {status!r} not in {SWEEP_STATUSES}")
        with self._transaction() as con:
            hit = con.execute("UPDATE sweeps SET ended_at = ?, status = ? WHERE name = ? "
                              "RETURNING name", [_now(), status, name]).fetchall()
            if not hit:
                raise StoreError(f"no sweep {name!r} in {self.path}; call begin_sweep first")

    def upsert_trial(self, row: Mapping[str, Any]) -> None:
        """Insert a trial or update the columns given in `row` (see `write`)."""
        self.write(trials=[row])

    def add_metrics(self, trial_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace metric rows keyed by (trial_id, step) (see `write`)."""
        self.write(metrics={trial_id: rows})

    def write(self, trials: Sequence[Mapping[str, Any]] = (),
              metrics: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> None:
        """One committed transaction for a batch of trial upserts and metric rows.

        A trial row has `sweep`, `config` (nested dict) and any other TRIAL_COLUMNS;
        `trial_id` defaults to config_hash(config) and must equal it if given. Only the
        columns present are written, so a later row can update status without resending
        results. Each config leaf goes to its own column, created on first sight with a
        type inferred from the value and widened (BIGINT -> DOUBLE -> VARCHAR) if a later
        trial disagrees. Metric rows need `step`; other METRIC_COLUMNS may be missing
        (NULL on insert, unchanged on re-ingest). Bad keys raise ValueError before any
        write."""
        trials = _merge_by([_prepare_trial(r) for r in trials], key=lambda r: r["trial_id"])
        mrows = [dict(r, trial_id=tid) for tid, rs in (metrics or {}).items() for r in rs]
        for r in mrows:
            unknown = sorted(set(r) - set(METRIC_COLUMNS))
            if unknown or r.get("step") is None:
                raise ValueError(f"metric row needs `step` and only {sorted(METRIC_COLUMNS)};"
                                 f" got unknown {unknown} in {r}")
        mrows = _merge_by(mrows, key=lambda r: (r["trial_id"], r["step"]))
        if not trials and not mrows:
            return
        with self._transaction() as con:
            if trials:
                types = _ensure_columns(con, trials)
                # Keys with no column are config leaves only ever seen as None: skip them.
                _upsert(con, "trials", [{k: _adapt(v, types[k]) for k, v in r.items()
                                         if k in types} for r in trials])
            _upsert(con, "metrics", mrows)

    def rekey(self, changes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Give stored trials new ids, in one transaction. `changes` maps an old trial_id
        to a trial row (`sweep`, the `config` it now has, any other TRIAL_COLUMNS to set)
        whose id is config_hash(config): what the trial is called now that the identity
        rule, or the config's fields, changed since it was stored. Its metrics follow.
        An old id that is not stored, or a new id another row already holds, is left alone;
        returns {old id: new id} of those moved."""
        rows = {old: _prepare_trial(r) for old, r in changes.items()}
        if not rows:
            return {}
        moved: dict[str, str] = {}
        with self._transaction() as con:
            have = {r[0] for r in con.execute("SELECT trial_id FROM trials").fetchall()}
            for old, r in rows.items():
                new = r["trial_id"]
                if old not in have or new in have:
                    continue
                con.execute("UPDATE trials SET trial_id = ? WHERE trial_id = ?", [new, old])
                con.execute("UPDATE metrics SET trial_id = ? WHERE trial_id = ?", [new, old])
                have = (have - {old}) | {new}
                moved[old] = new
            done = [r for old, r in rows.items() if old in moved]
            if done:
                types = _ensure_columns(con, done)
                _upsert(con, "trials", [{k: _adapt(v, types[k]) for k, v in r.items()
                                         if k in types} for r in done])
        return moved

    def _read(self, sql: str, params: list) -> list[tuple]:
        with self._transaction() as con:
            return con.execute(sql, params).fetchall()

    def sweep_yamls(self) -> dict[str, str | None]:
        """Sweep name -> the YAML it last ran with, for every sweep recorded in the file;
        {} when there is no file yet (nothing is created)."""
        if not self.path.exists():
            return {}
        return dict(self._read("SELECT name, yaml FROM sweeps", []))

    def completed_trial_ids(self, sweep: str) -> set[str]:
        """trial_ids of `sweep` whose status is 'complete' (to skip them on a re-run)."""
        rows = self._read("SELECT trial_id FROM trials WHERE sweep = ? AND status = 'complete'",
                          [sweep])
        return {r[0] for r in rows}

    def trial_status(self, sweep: str) -> dict[str, str]:
        """trial_id -> status for every trial of `sweep`."""
        return dict(self._read("SELECT trial_id, status FROM trials WHERE sweep = ?", [sweep]))

    def trial_selection(self, sweep: str) -> dict[str, tuple[str, bool | None]]:
        """trial_id -> (status, selected) for every trial of `sweep` (selected is None for
        rows from before replicates): what checkpoint pruning decides by."""
        rows = self._read("SELECT trial_id, status, selected FROM trials WHERE sweep = ?",
                          [sweep])
        return {tid: (status, selected) for tid, status, selected in rows}


def _ensure_columns(con: duckdb.DuckDBPyConnection,
                    rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Add or widen config columns so every value in `rows` fits; returns all types."""
    have = {n.lower(): t for n, t in con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE table_name = 'trials' AND database_name = current_database()").fetchall()}
    want = dict(have)
    for r in rows:
        for k, v in r.items():
            t = _sql_type(v)
            if k in TRIAL_COLUMNS or t is None:
                continue
            want[k] = t if k not in want else _widen(want[k], t)
    for k, t in want.items():
        if k not in have:
            con.execute(f"ALTER TABLE trials ADD COLUMN IF NOT EXISTS {_q(k)} {t}")
        elif t != have[k]:
            con.execute(f"ALTER TABLE trials ALTER COLUMN {_q(k)} SET DATA TYPE {t}")
    return want


def _upsert(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT OR REPLACE touches only the listed columns of an existing row, so partial
    rows update in place and re-ingesting the same row is a no-op. Rows are grouped by
    their key set and sent as multi-row VALUES: one statement per row costs ~2 ms, a
    chunk ~50 us a row. (A pandas DataFrame scan is faster still but turns NaN into NULL,
    and a diverged loss is NaN, not missing.) Keys must be unique within `rows`."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r), []).append(r)
    for keys, group in groups.items():
        cols = ", ".join(_q(k) for k in keys)
        per = max(1, 4096 // len(keys))  # ~4k parameters a statement binds fastest
        for i in range(0, len(group), per):
            part = group[i : i + per]
            marks = ", ".join(["(" + ", ".join("?" * len(keys)) + ")"] * len(part))
            con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES {marks}",
                        [r[k] for r in part for k in keys])
