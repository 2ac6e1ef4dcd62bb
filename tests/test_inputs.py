"""Bad input, fed on purpose, through `main([...])` in-process: every case exits 2 with one
line naming the problem, no traceback, and no file in the working folder created, changed or
touched (bytes and mtimes compared). Specs, presets, YAML keys, types, distributions and
unsafe tags, budgets, data paths, token files, and SQL that writes or reaches outside the
results file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pytest

from spiralsearch.cli import main
from spiralsearch.store import ResultsStore, StoreError, query

TINY = ["--d-model", "32", "--n-heads", "2", "--seq-len", "32", "--batch-size", "4"]
SPACE = """\
name: bad
data: {source: "corpus:sotu", seq_len: 32}
model: {preset: tiny, d_model: 32, n_heads: 2, spec: "2"}
train: {lr: 1.0e-3, batch_size: 4, evals: 1, eval_batches: 1}
budget: {kind: tokens, values: [1024, 2048]}
search: {sampler: grid, scheduler: none, samples_per_budget: 1}
resources: {cpu: 1, gpu: 0}
"""
# (edit of SPACE: old, new) -> a fragment of the one-line error
YAML = {
    "unknown-section": (("train:", "trian:"), "trian: unknown key; did you mean 'train'?"),
    "unknown-key": (("n_heads: 2", "n_haeds: 2"), "did you mean 'n_heads'?"),
    "type": (("lr: 1.0e-3", "lr: fast"), "train.lr: expected a number, got 'fast'"),
    "distribution": (("lr: 1.0e-3", "lr: {normal: [0, 1]}"), "did you mean 'uniform'?"),
    "distribution-shape": (("lr: 1.0e-3", "lr: {uniform: [1]}"), "need [lo, hi]"),
    "int-uniform": (("batch_size: 4", "batch_size: {uniform: [1, 4]}"), "use {int: [lo, hi]}"),
    "preset": (("preset: tiny", "preset: huge"), "model.preset: 'huge' is not one of"),
    "huge-spec": (('spec: "2"', 'spec: "2+1000000000x{1}+2"'), "above the bound of 512"),
    "huge-width": (("d_model: 32", "d_model: 100000000"), "65,536"),
    "huge-batch": (("batch_size: 4", "batch_size: 99999999999999999999"), "[1, 65,536]"),
    "seed": (("evals: 1", "evals: 1, seed: -1"), "train.seed: expected an integer in [0,"),
    "budget-zero": (("[1024, 2048]", "[0, 2048]"), "budget.values[0]: expected > 0"),
    "budget-negative": (("[1024, 2048]", "[1024, -1]"), "budget.values[1]: expected > 0"),
    "budget-nan": (("[1024, 2048]", "[.nan]"), "expected a finite number, got nan"),
    "budget-inf": (("[1024, 2048]", "[.inf]"), "expected a finite number, got inf"),
    "budget-1e30": (("[1024, 2048]", "[1.0e30]"), "above the bound of 100,000,000"),
    "budget-snap": (("kind: tokens", "kind: tokens, snap: maybe"), "budget.snap: expected "
                    "true or false"),
    "unsafe-tag": (("name: bad", "name: !!python/object/apply:os.system ['touch pwned']"),
                   "could not determine a constructor"),
    "unsafe-tag-nested": (("resources:", "description: !!python/object/new:os.system "
                                          "['touch pwned']\nresources:"),
                          "could not determine a constructor"),
    "list-key": (("resources:", "[1]: 2\nresources:"), "a key must be a plain value"),
    "duplicate-key": (("lr: 1.0e-3", "lr: 1.0e-3, lr: 2.0e-3"), "duplicate key 'lr'"),
    "not-a-mapping": (("name: bad", "- name: bad"), "YAML syntax error"),
}
SQL = {  # statements that would write the file, write or read other files, or reconfigure
    "DELETE FROM trials": "read-only",
    "DROP TABLE trials": "read-only",
    "CREATE TABLE t AS SELECT 1": "read-only",
    "INSERT INTO trials (trial_id) VALUES ('x')": "read-only",
    "UPDATE trials SET status = 'x'": "read-only",
    "SELECT 1; DELETE FROM metrics": "read-only",
    "ATTACH 'other.duckdb' AS other": "disabled by configuration",
    "COPY trials TO 'leak.csv'": "disabled by configuration",
    "COPY (SELECT * FROM trials) TO 'leak.parquet' (FORMAT parquet)": "disabled by config",
    "EXPORT DATABASE 'dump'": "disabled by configuration",
    "SELECT * FROM read_csv('/etc/hostname')": "disabled by configuration",
    "INSTALL httpfs": "disabled by configuration",
    "LOAD httpfs": "disabled through configuration",
    "SET enable_external_access = true": "configuration has been locked",
    "PRAGMA enable_profiling": "configuration has been locked",
    "SET profiling_output = 'profile.json'": "configuration has been locked",
    "SELECT nope FROM trials": "nope",
    "SELECT * FROM no_such_table": "no_such_table",
    "SELEC 1": "syntax error",
    "": "empty SQL",
}
CLI = [  # argv (FILE, DB, MISSING replaced below) -> fragment
    (["describe", "2+1000000000x{1}+2"], "shared-core layer count 1,000,000,000 is above the "
     "bound of 512"),
    (["describe", "1" * 5000], "a number of 5000 digits"),
    (["describe", "2+2x{1/7919,1/7907}+2"], "lcm of the chunk sizes 62,615,533"),
    (["describe", "2+4x{1/8@8}+2"], "offset 8 must be < chunk size 8"),
    (["describe", "1+1x{" + ",".join(["1"] * 300) + "}+1"], "loop iteration count 257"),
    (["describe", "4", "--seq-len", "100000000000"], "seq_len 100,000,000,000 is above"),
    (["describe", "4", "--d-model", "100000000"], "d_model: expected an integer in [1, 65,536]"),
    (["describe", "4", "--vocab-size", "1000000000000"], "vocab_size: expected an integer"),
    (["describe", "4", "--mlp-ratio", "inf"], "mlp_ratio: expected a finite number"),
    (["describe", "4", "--mlp-ratio", "0.001"], "an MLP of 0 units"),
    (["describe", "4", "--norm-eps", "nan"], "norm_eps: expected a finite number, got nan"),
    (["describe", "4", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "--spec", "4", *TINY, "--budget-flops", "inf", "--out", "run"],
     "must be finite"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "nan", "--out", "run"],
     "must be > 0, got nan"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "0", "--out", "run"], "must be > 0"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "-5", "--out", "run"], "must be > 0"),
    (["train", "--spec", "4", *TINY, "--budget-flops", "1e30", "--out", "run"],
     "above the bound of 100,000,000"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1500", "--out", "run"],
     "(+2.4%); allowed ±1%: raise the budget, shrink batch_size x seq_len, or snap it to "
     "whole steps (budget.snap: true; train --snap)"),
    (["train", "--spec", "4", *TINY, "--budget-params", "1e30", "--tokens", "1e6", "--out",
      "run"], "need d_model > 65536"),
    (["train", "--spec", "4", *TINY, "--batch-size", "65536", "--seq-len", "1024",
      "--budget-tokens", "1e9", "--out", "run"], "= 67,108,864 is above the bound"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1e4", "--data", "text:MISSING",
      "--out", "run"], "no such file or folder"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1e4", "--data", "tokens:ids.bin",
      "--out", "run"], "301 token ids but the model's vocabulary is 256"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1e4", "--data",
      "tokens:floats.bin:dtype=float32", "--out", "run"], "'float32' is not an integer type"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1e4", "--data",
      "synthetic:dyck:chars=1000000000000", "--out", "run"], "chars 1,000,000,000,000 is "
     "above the bound"),
    (["train", "--spec", "4", *TINY, "--budget-tokens", "1024", "--out", "FILE"],
     "a file, not a folder"),
    (["data", "info", "tokens:MISSING"], "no such file"),
    (["data", "info", "tokens:floats.npy"], "need a 1-D integer array"),
    (["data", "info", "tokens:ids.bin:vocab=10"], "token id 300 >= vocab=10"),
    (["data", "info", "synthetic:pcfg:depth=1000000"], "depth 1,000,000 is above the bound"),
    (["query", "SELECT 1", "--db", "FILE"], "not a readable DuckDB results file"),
    (["query", "SELECT 1", "--db", "MISSING"], "no results database"),
    (["fit", "--db", "DB", "--by", "nonsense"], "no such trials column"),
    (["fit", "--db", "DB", "--E", "nan"], "the loss floor must be a finite number"),
    (["report", "--db", "DB", "--bootstrap", "-1"], "--bootstrap -1: must be >= 0"),
    (["report", "--db", "DB", "--bootstrap", "1000000000"], "above the bound of 100,000"),
    (["probe", "run", "--window", "0"], "--window 0: must be >= 1"),
    (["probe", "run", "--sequences", "100000000"], "above the bound of 4,096"),
    (["keys", "nonsense."], "no key starts with 'nonsense.'"),
]
CASES = ([pytest.param(["sweep", f"{name}.yaml", "--dry-run"], msg, id=f"yaml-{name}")
          for name, (_, msg) in YAML.items()]
         + [pytest.param(["query", sql, "--db", "DB"], msg, id=f"sql-{sql[:40]}")
            for sql, msg in SQL.items()]
         + [pytest.param(argv, msg, id=" ".join(argv)[:60]) for argv, msg in CLI])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data cache for the module, outside the watched folder."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def work(tmp_path, cache, monkeypatch):
    """The working folder every case runs in: a results file, the YAML files, token files
    (uint16 ids up to 300; float32 values; a float .npy) and a plain file."""
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    store = ResultsStore(work / "results.duckdb")
    store.begin_sweep("bad", SPACE)
    store.write(trials=[dict(sweep="bad", config=dict(model=dict(spec=s)), family="plain",
                             spec=s, status="complete", budget_kind="flops",
                             budget_target=1e12, final_val_loss=3.0) for s in ("2", "4")])
    store.end_sweep("bad")
    for name, ((old, new), _) in YAML.items():
        assert old in SPACE, name
        (work / f"{name}.yaml").write_text(SPACE.replace(old, new, 1))
    np.array([1, 2, 300, 4] * 100, dtype=np.uint16).tofile(work / "ids.bin")
    np.arange(10, dtype=np.float32).tofile(work / "floats.bin")
    np.save(work / "floats.npy", np.ones(10))
    (work / "notes.txt").write_text("not a results file\n")
    return work


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder below `folder`: its bytes' hash and mtime."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_mtime_ns, None if p.is_dir()
                                         else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, fragment", CASES)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(argv, fragment, work, capsys):
    subs = {"DB": "results.duckdb", "FILE": "notes.txt", "MISSING": "missing"}
    argv = [a.replace("MISSING", "missing") if "MISSING" in a else subs.get(a, a)
            for a in argv]
    before = snapshot(work)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"spiralsearch {argv[0] if argv[0] != 'data' else 'data info'}"
                               ": error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(work) == before  # nothing created (pwned, leak.csv, run/), nothing touched


def test_enough_cases():
    assert len(CASES) >= 30


def test_query_cannot_write_or_leak_outside_the_folder(work, tmp_path):
    """The library call behind `spiralsearch query` too: absolute paths elsewhere stay
    unwritten, and the results file keeps its bytes."""
    before = snapshot(work)
    outside = tmp_path / "outside"
    outside.mkdir()
    for sql in (f"COPY trials TO '{outside / 'leak.csv'}'",
                f"ATTACH '{outside / 'new.duckdb'}' AS n",
                f"EXPORT DATABASE '{outside / 'dump'}'",
                "SET allow_persistent_secrets = true", "SET temp_directory = 'spill'",
                "SET lock_configuration = false"):
        with pytest.raises(duckdb.Error):
            query(work / "results.duckdb", sql)
    # statements a read-only database runs as no-ops: they leave its bytes alone
    for sql in ("CHECKPOINT", "FORCE CHECKPOINT", "VACUUM", "ANALYZE",
                "CREATE TEMP TABLE scratch AS SELECT 1 AS a"):
        query(work / "results.duckdb", sql)
    with pytest.raises(StoreError, match="empty SQL"):
        query(work / "results.duckdb", "  ")
    assert list(outside.iterdir()) == []
    assert snapshot(work) == before
    assert len(query(work / "results.duckdb", "SELECT * FROM trials")) == 2  # still reads
