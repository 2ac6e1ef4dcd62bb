"""A results file's trials, ready for the study analysis (docs/design.md §6): which loss
(test, else validation), which groups (the sweep's comparison groups, `group_name`; the
family in files from before them), and the fit table that `spiralsearch fit` prints.

    st = study(load_results("results/quickstart.duckdb")["trials"])
    rows = rows_of(st)     # one row per group: E, A, alpha, multiplier, backtest
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spiralsearch.analysis import BOOTSTRAP
from spiralsearch.analysis.study import Study, analyse
from spiralsearch.model.spec import parse_spec
from spiralsearch.store import connect_readonly

# A trial's own summary says what it spent; a stopped or running one, its last metric row.
_TRIALS_SQL = """
    SELECT t.* EXCLUDE (train_flops, tokens),
           coalesce(t.train_flops, m.train_flops) AS train_flops,
           coalesce(t.tokens, m.tokens) AS tokens
    FROM trials t LEFT JOIN (
        SELECT trial_id, max(train_flops) AS train_flops, max(tokens) AS tokens
        FROM metrics GROUP BY trial_id) m USING (trial_id)"""


def load_results(db: str | Path) -> dict[str, Any]:
    """Trials (with the training FLOPs each spent), metrics and sweeps of a results file,
    read-only (safe while a sweep writes)."""
    con = connect_readonly(db)
    try:
        trials = con.execute(_TRIALS_SQL).df()
        metrics = con.execute("SELECT * FROM metrics ORDER BY trial_id, step").df()
        sweeps = con.execute("SELECT * FROM sweeps").df()
    finally:
        con.close()
    if not trials.empty:
        # imported runs (`spiralsearch import`) have no spec, so no recurrence ratio
        trials["recurrence_ratio"] = [parse_spec(s).recurrence_ratio if isinstance(s, str)
                                      else np.nan for s in trials["spec"]]
    return dict(trials=trials, metrics=metrics, sweeps=sweeps)


def loss_column(trials: pd.DataFrame) -> str:
    """The loss fits and reports use: `final_test_loss` (the test split, which the search
    never sees) when any complete trial has one; else `final_val_loss` (results files from
    before the test split). Never a mix of the two."""
    if "final_test_loss" in trials and len(trials):
        done = trials[trials["status"] == "complete"]["final_test_loss"].astype(float)
        if np.isfinite(done).any():
            return "final_test_loss"
    return "final_val_loss"


def split_of(column: str) -> str:
    """'test' or 'val': which held-out split a loss column scores."""
    return "test" if column == "final_test_loss" else "val"


def _usable(trials: pd.DataFrame) -> pd.DataFrame:
    """Complete trials with a finite loss (see loss_column; copied to `loss`) and known
    compute."""
    if trials.empty:
        return trials.assign(loss=pd.Series(dtype=float))
    col = loss_column(trials)
    ok = (trials["status"] == "complete") & np.isfinite(trials[col].astype(float))
    ok &= trials["train_flops"].notna()
    return trials[ok].assign(loss=trials.loc[ok, col].astype(float))


def grouped(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Trials ready to group by `by`: grouped by group_name, a trial stored before group
    names (NULL) counts in its family's group."""
    if by == "group_name" and "group_name" in df and len(df):
        df = df.assign(group_name=df["group_name"].fillna(df["family"]))
    return df


def group_column(trials: pd.DataFrame) -> str:
    """What groups the trials by default: `group_name`, the sweep's comparison groups, when
    any trial has one; else `family` (results files from before comparison groups)."""
    if "group_name" in trials and trials["group_name"].notna().any():
        return "group_name"
    return "family"


def study(trials: pd.DataFrame, by: str | None = None, *, baseline: str | None = None,
          bootstrap: int = BOOTSTRAP, seed: int = 0, E: float | None = None,
          shared_E: bool = False) -> Study:
    """The study analysis of a results file's trials (analysis/study.py): per group (`by`, a
    trials column; default `group_column`) the frontier, IsoFLOP and L(N, D) views on the
    test loss (`loss_column`), multipliers against `baseline` (default: the first group),
    intervals from `bootstrap` draws that redraw replicates, and the conclusion."""
    by = by or group_column(trials)
    if len(trials) and by not in trials:
        raise ValueError(f"--by {by!r}: no such trials column (e.g. group_name, family, spec)")
    df = grouped(trials, by)
    return analyse(df, by=by, loss=loss_column(trials), baseline=baseline,
                   bootstrap=bootstrap, seed=seed, E=E, shared_E=shared_E)


def fit_table(trials: pd.DataFrame, by: str | None = None, bootstrap: int = 0, seed: int = 0,
              baseline: str | None = None, **kw) -> list[dict[str, Any]]:
    """One row per group of `study`: trials, cells, frontier points, E, A, alpha (with
    intervals and bounds, or why the fit is refused), the compute multiplier against the
    baseline at the largest common budget, and the backtest."""
    return rows_of(study(trials, by, baseline=baseline, bootstrap=bootstrap, seed=seed, **kw))


def rows_of(st: Study) -> list[dict[str, Any]]:
    """The fit table's rows of a Study."""
    mult = {m["group"]: m for m in st.summary}
    rows = []
    for name, g in st.groups.items():
        f, bt = g.frontier, g.backtest
        row = dict(group=name, n_trials=g.n_trials, n_cells=g.n_cells,
                   n_points=len(f.get("points", [])), loss=st.loss,
                   **{k: f.get(k) for k in ("E", "A", "alpha", "ci", "at_bound")},
                   note=f.get("refused"))
        m = mult.get(name, {})
        row |= dict(baseline=st.baseline, multiplier=m.get("multiplier"),
                    multiplier_ci=m.get("ci"), multiplier_note=m.get("refused"),
                    backtest_rel_error=bt.get("rel_error"), backtest_inside=bt.get("inside"),
                    backtest_note=bt.get("refused"))
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):  # e.g. a multiplier bound out of reach
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(row: dict, key: str) -> str:
    lo_hi = (row.get("ci") or {}).get(key) if key != "multiplier" else row.get("multiplier_ci")
    if not lo_hi or lo_hi[0] == lo_hi[1]:
        return ""
    return f" [{_fmt(lo_hi[0], 3)}, {_fmt(lo_hi[1], 3)}]"


def param_text(row: dict, key: str, digits: int = 4) -> str:
    """A fitted parameter as the table shows it: a bound as a bound (`E ≤ 1.82 (at bound)`,
    `0 (at bound)`), else the estimate and its interval."""
    v, bounds = row.get(key), row.get("at_bound") or []
    if v is None:
        return "n/a"
    if key == "E" and "E=0" in bounds:
        return "0 (at bound)"
    if key == "E" and "E=min loss" in bounds:
        return f"≤ {_fmt(v, digits)} (at bound)"
    if key == "alpha" and any(b.startswith("alpha=") for b in bounds):
        return f"{_fmt(v, digits)} (at bound)"
    return _fmt(v, digits) + _ci(row, key)


def fit_rows_text(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells of a fit table (for the CLI and the report)."""
    base = rows[0].get("baseline") if rows else None
    cols = ["group", "trials", "cells", "budgets", "E", "A", "alpha",
            f"compute x of {base}", "backtest (largest budget)"]
    cells = []
    for r in rows:
        bt, inside = r.get("backtest_rel_error"), r.get("backtest_inside")
        bt_text = "refused" if bt is None else (f"{bt:.1%}" if bt >= 5e-4 else "<0.1%") + (
            "" if inside is None else " (inside interval)" if inside else " (outside interval)")
        mult = "baseline" if r["group"] == base else (
            _fmt(r.get("multiplier"), 3) + _ci(r, "multiplier"))
        fitted = r.get("note") is None
        cells.append([str(r["group"]), str(r["n_trials"]), str(r.get("n_cells", "")),
                      str(r["n_points"]),
                      *((param_text(r, "E"), param_text(r, "A", 3), param_text(r, "alpha"))
                        if fitted else ("refused", "", "")), mult, bt_text])
    return cols, cells
