"""The fit table of a results file (docs/design.md §6): L(C) = E + A·C^(−α) per group
(the sweep's comparison groups, `group_name`; the family in files from before them)
on its best trial per budget (all its trials when it has fewer than 3 budgets), the compute
multiplier against the plain family, and a backtest.

    rows = fit_table(load_results("results/quickstart.duckdb")["trials"], bootstrap=200)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spiralsearch.analysis.scaling import (
    PowerLawFit,
    backtest,
    best_per_budget,
    compare,
    fit_power_law,
)
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
        trials["recurrence_ratio"] = [parse_spec(s).recurrence_ratio for s in trials["spec"]]
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


def _fit_points(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(compute FLOPs, loss) to fit: best trial per budget, or all with < 3 budgets."""
    c, loss = df["train_flops"].to_numpy(float), df["loss"].to_numpy(float)
    idx = best_per_budget(df["budget_target"].to_numpy(float), loss)
    return (c[idx], loss[idx]) if len(idx) >= 3 else (c, loss)


def group_column(trials: pd.DataFrame) -> str:
    """What groups the trials by default: `group_name`, the sweep's comparison groups, when
    any trial has one; else `family` (results files from before comparison groups)."""
    if "group_name" in trials and trials["group_name"].notna().any():
        return "group_name"
    return "family"


def fit_table(trials: pd.DataFrame, by: str | None = None, bootstrap: int = 0, seed: int = 0,
              reference: str = "plain") -> list[dict[str, Any]]:
    """One row per group (`by`, a trials column; default `group_column`: the sweep's
    comparison groups): n trials, E, A, alpha with their bootstrap intervals, the compute
    multiplier against the `reference` group (how many times the compute the reference needs
    to reach the loss this group reaches at its largest budget; > 1 means this group is more
    compute-efficient), and the backtest's relative error."""
    return _fit_groups(trials, by, bootstrap, seed, reference)[0]


def _fit_groups(trials: pd.DataFrame, by: str | None, bootstrap: int, seed: int,
                reference: str):
    """fit_table's rows, and the fits with the points they were made from, per group."""
    by = by or group_column(trials)
    df = grouped(_usable(trials), by)
    rows: list[dict[str, Any]] = []
    fits: dict[str, tuple[PowerLawFit, np.ndarray, np.ndarray]] = {}
    for name, g in df.groupby(by, sort=True):
        c, loss = _fit_points(g)
        row: dict[str, Any] = dict(group=name, n_trials=len(g), n_points=len(c),
                                   loss=split_of(loss_column(trials)))
        try:
            fit = fit_power_law(c, loss, bootstrap=bootstrap, seed=seed)
        except ValueError as e:
            rows.append(row | dict(note=str(e)))
            continue
        fits[name] = (fit, c, loss)
        row |= dict(E=fit.E, A=fit.A, alpha=fit.alpha, ci=fit.ci, converged=fit.converged)
        try:
            bt = backtest(c, loss)
            row |= dict(backtest_rel_error=bt.rel_error, backtest_compute=bt.compute)
        except ValueError as e:
            row |= dict(backtest_rel_error=None, backtest_note=str(e))
        rows.append(row)
    for row in rows:
        if row["group"] in fits and reference in fits:
            fit, c, loss = fits[row["group"]]
            ref, rc, rl = fits[reference]
            cmp = compare(ref, fit, compute_a=rc, loss_a=rl, compute_b=c, loss_b=loss,
                          bootstrap=bootstrap, seed=seed)
            row |= dict(multiplier=cmp.multiplier, multiplier_ci=cmp.ci,
                        multiplier_note=cmp.note, target_loss=cmp.target_loss)
    return rows, fits


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(row: dict, key: str) -> str:
    lo_hi = (row.get("ci") or {}).get(key) if key != "multiplier" else row.get("multiplier_ci")
    if not lo_hi or lo_hi[0] == lo_hi[1]:  # too few points for resamples to differ
        return ""
    return f" [{_fmt(lo_hi[0], 3)}, {_fmt(lo_hi[1], 3)}]"


def fit_rows_text(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells of a fit table (for the CLI and the report)."""
    cols = ["group", "trials", "points fitted", "E", "A", "alpha", "compute x vs plain",
            "backtest error"]
    cells = []
    for r in rows:
        bt = r.get("backtest_rel_error")
        cells.append([str(r["group"]), str(r["n_trials"]), str(r["n_points"]),
                      _fmt(r.get("E")) + _ci(r, "E"),
                      _fmt(r.get("A"), 3) + _ci(r, "A"), _fmt(r.get("alpha")) + _ci(r, "alpha"),
                      _fmt(r.get("multiplier"), 3) + _ci(r, "multiplier"),
                      "n/a" if bt is None else f"{bt:.1%}"])
    return cols, cells
