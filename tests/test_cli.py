"""Every `spiralsearch` command through `main([...])`, in-process: its output formats, its
`--help`, and the exit codes (0 ok, 1 a run failed, 2 bad input, 3 busy, 130 interrupted)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from models import space_yaml

from spiralsearch.cli import main
from spiralsearch.store import ResultsStore, config_hash

TINY = ["--d-model", "32", "--n-heads", "2", "--seq-len", "32", "--batch-size", "4"]


def space_text(name: str, extra: str = "") -> str:
    """The shared tiny space: 2 families x 2 token budgets, one trial per cell."""
    return space_yaml(name, lr=None, evals=1, budgets="[1024, 2048]", train=extra,
                      search="sampler: grid, scheduler: none, samples_per_budget: 1, seed: 0")


HEAVY = ("torch", "ray", "optuna", "duckdb", "pandas", "plotly", "fvcore")


def one_line_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"spiralsearch {prog}: "), err
    return err


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def db(tmp_path):
    """A small results file: 2 families x 6 FLOP budgets on a known law (a frontier fit
    needs 5), one failed trial."""
    store = ResultsStore(tmp_path / "cli.duckdb")
    store.begin_sweep("cli", "name: cli\n")
    trials, metrics = [], {}
    for family, spec, shift in (("plain", "4", 1.0), ("spiral", "1+2x{1/4,1/2,1}+1", 2.0)):
        for budget in np.geomspace(1e12, 1e15, 6):
            config = dict(model=dict(spec=spec), budget=dict(kind="flops", value=float(budget)))
            loss = 1.5 + 8000.0 * (budget * shift) ** -0.25
            trials.append(dict(sweep="cli", config=config, family=family, spec=spec,
                               status="complete", budget_kind="flops",
                               budget_target=float(budget), final_val_loss=loss))
            metrics[config_hash(config)] = [dict(step=s, train_flops=budget * s / 2,
                                                 val_loss=loss + 0.1 * (2 - s)) for s in (1, 2)]
    trials.append(dict(sweep="cli", config=dict(model=dict(spec="2")), family="plain",
                       spec="2", status="failed", error="boom"))
    store.write(trials=trials, metrics=metrics)
    store.end_sweep("cli")
    return tmp_path / "cli.duckdb"


# --- every command and its formats ----------------------------------------------------------

@pytest.mark.slow
def test_describe_table_json_csv(capsys):
    argv = ["describe", "12", "1+2x{1/2,1}+1", "--seq-len", "64"]
    assert main(argv) == 0
    assert "1+2x{1/2,1}+1" in capsys.readouterr().out
    assert main([*argv, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["spec"] for d in data] == ["12", "1+2x{1/2,1}+1"]
    assert main([*argv, "--format", "csv"]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert [r["spec"] for r in rows] == ["12", "1+2x{1/2,1}+1"]
    # nested dicts flatten to dotted columns, lists to JSON text
    assert int(rows[1]["decode.kv_cache.total"]) == data[1]["decode"]["kv_cache"]["total"]
    iterations = json.loads(rows[1]["breakdown.analytic.iterations"])
    assert iterations == data[1]["breakdown"]["analytic"]["iterations"]


@pytest.mark.slow
def test_train_json_summary_and_probe(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(["train", "--spec", "1+1x{1/2,1}+0", *TINY, "--budget-tokens", str(4 * 32 * 4),
                 "--evals", "1", "--eval-batches", "1", "--out", str(out),
                 "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is the summary alone
    assert summary["status"] == "complete" and summary["steps"] == 4
    assert summary == json.loads((out / "summary.json").read_text())

    assert main(["probe", str(out), "--sequences", "4"]) == 0
    text = capsys.readouterr().out
    assert "attention probes" in text and "dynamic heads by lam" in text
    assert main(["probe", str(out), "--sequences", "4", "--format", "csv"]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert len(rows) == 2 * 1 * 2  # iterations x core layers x heads
    assert {"iteration", "layer", "head", "entropy_norm", "lam"} <= set(rows[0])


def test_data_info_json(cache, capsys):
    assert main(["data", "info", "synthetic:dyck", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] > 0 and info["train_tokens"] > info["val_tokens"] > 0


def test_sweep_dry_run_table_and_json(tmp_path, capsys):
    space = tmp_path / "dry.yaml"
    space.write_text(space_text("dry"))
    assert main(["sweep", str(space), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 candidates (dry run)" in out and "1+1x{1/2,1}+0" in out
    assert main(["sweep", str(space), "--dry-run", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["family"] for r in rows) == ["plain", "spiral"]
    assert [b["tokens"] for b in rows[0]["budgets"]] == [1024, 2048]
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_query_and_trials(db, capsys):
    sql = "SELECT family, count(*) AS n FROM trials GROUP BY family ORDER BY family"
    assert main(["query", sql, "--db", str(db)]) == 0
    assert "spiral" in capsys.readouterr().out
    assert main(["query", sql, "--db", str(db), "--format", "csv"]) == 0
    assert csv_rows(capsys.readouterr().out) == [
        {"family": "plain", "n": "7"}, {"family": "spiral", "n": "6"}]
    assert main(["trials", "--db", str(db), "--format", "json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert len(trials) == 13 and {t["status"] for t in trials} == {"complete", "failed"}


def test_readers_default_to_the_newest_results_file(db, tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    db.rename(tmp_path / "results" / "cli.duckdb")
    monkeypatch.chdir(tmp_path)
    assert main(["query", "SELECT count(*) AS n FROM trials", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 13}]


@pytest.mark.slow
def test_fit_and_report(db, tmp_path, capsys):
    """json (the whole study) and csv (the fit table); each call refits."""
    assert main(["fit", "--db", str(db), "--bootstrap", "0", "--format", "json"]) == 0
    study = json.loads(capsys.readouterr().out)
    fits = {g: v["frontier"] for g, v in study["groups"].items()}
    assert set(fits) == {"plain", "spiral"} and study["baseline"] == "plain"
    assert fits["spiral"]["alpha"] == pytest.approx(0.25, rel=0.05)
    # spiral reaches a loss with half plain's compute (its law is shifted by 2x)
    assert study["summary"][0]["multiplier"] == pytest.approx(0.5, rel=0.05)
    assert study["conclusion"][0].startswith("inconclusive: spiral reaches plain's loss")
    assert main(["fit", "--db", str(db), "--bootstrap", "0", "--format", "csv"]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert sorted(r["group"] for r in rows) == ["plain", "spiral"]
    assert float(rows[0]["alpha"]) == pytest.approx(fits[rows[0]["group"]]["alpha"])

    html = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--out", str(html), "--bootstrap", "0",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(html.resolve()), "static": []}
    assert "Plotly.newPlot" in html.read_text()


@pytest.mark.parametrize("argv", [
    [], ["describe"], ["train"], ["data"], ["data", "info"], ["data", "fetch"], ["sweep"],
    ["keys"], ["query"], ["trials"], ["fit"], ["report"], ["probe"]])
def test_every_help_returns_0(argv, capsys):
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spiralsearch")
    if argv and argv != ["data"]:
        assert "--format" in out or argv == ["data", "fetch"]


def test_top_level_help_lists_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
        assert f"\n  {code}" in out


def test_parser_imports_no_heavy_library():
    """--help must stay fast: building the parser imports none of the heavy libraries."""
    code = ("import sys; from spiralsearch.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"


# --- exit codes -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, prog, fragment", [
    (["describe", "1+2x{1/4,,1}+1"], "describe", "bad spec"),
    (["describe", "4", "--format", "xml"], "describe", "invalid choice: 'xml'"),
    (["describe", "4", "--no-such-flag"], "describe", "unrecognized arguments"),
    (["train", "--spec", "4", "--budget-tokens", "0", "--out", "OUT"], "train", "must be > 0"),
    (["sweep", "SPACE", "--dry-run"], "sweep", "trian"),
    (["query", "SELEC 1", "--db", "DB"], "query", "syntax error"),
    (["query", "SELECT nope FROM trials", "--db", "DB"], "query", "nope"),
    (["trials", "--db", "MISSING"], "trials", "no results database"),
    (["probe", "MISSING"], "probe", "not a training run"),
    (["data", "info", "nosuch:x"], "data info", "unknown source kind"),
])
def test_bad_input_exits_2_with_one_line(argv, prog, fragment, db, tmp_path, cache, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(space_text("bad").replace("train:", "trian:"))
    subs = {"SPACE": str(space), "DB": str(db), "MISSING": str(tmp_path / "missing"),
            "OUT": str(tmp_path / "out")}
    assert main([subs.get(a, a) for a in argv]) == 2
    assert fragment in one_line_error(capsys, prog)


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_DEBUG", "1")
    with pytest.raises(ValueError, match="bad spec"):
        main(["describe", "1+2x{1/4,,1}+1"])


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    import spiralsearch.model.counting as counting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(counting, "describe", interrupted)
    assert main(["describe", "4"]) == 130
    assert "interrupted" in one_line_error(capsys, "describe")


def test_locked_results_file_exits_3(db, capsys):
    """Another process holds the file read-write (as a sweep writing would): a reader
    gives up after --timeout with exit 3. (Within one process DuckDB shares the database
    instead of locking, so the holder is a subprocess.)"""
    hold = ("import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(db)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["query", "SELECT 1", "--db", str(db), "--timeout", "0.3"]) == 3
    finally:
        holder.kill()
        holder.wait()
    assert "stayed locked" in one_line_error(capsys, "query")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="needs a machine without CUDA")
def test_train_that_crashes_exits_1(tmp_path, cache, capsys):
    """A crash mid-run (a CUDA device on a CPU machine) is a failed run, not bad input."""
    out = tmp_path / "run"
    assert main(["train", "--spec", "2", *TINY, "--budget-tokens", "512", "--device", "cuda",
                 "--out", str(out)]) == 1
    plan, err = capsys.readouterr().err.strip().splitlines()  # the plan line, then ours
    assert err.startswith("spiralsearch train: error: failed: ") and "CUDA" in err
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.skipif(_cuda_available(), reason="needs a machine without CUDA")
def test_sweep_where_every_trial_fails_exits_1(ray_session, tmp_path, cache, capsys):
    """Every trial pinned to CUDA on this CPU machine: all fail, so the sweep exits 1."""
    space = tmp_path / "allfail.yaml"
    space.write_text(space_text("allfail", "device: cuda").replace("gpu: 0", "gpu: 0.5"))
    db = tmp_path / "allfail.duckdb"
    assert main(["sweep", str(space), "--db", str(db), "--no-progress",
                 "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"] == {"failed": 4}
    # Ray may log to stderr too; ours is the one line that starts with the command
    ours = [x for x in captured.err.splitlines() if x.startswith("spiralsearch sweep:")]
    assert len(ours) == 1 and "4 trial(s) failed" in ours[0] and str(db) in ours[0]
