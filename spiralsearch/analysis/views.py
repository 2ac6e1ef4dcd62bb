"""The three views of a study and its backtest, from one set of cell means (one pass of the
pipeline, docs/design.md §6): per group the frontier L*(C) = E + A C^-alpha through the best
size per budget, an IsoFLOP parabola in log N per budget with its optimum, N*(C) = k C^a
through the optima inside the grid, L(N, D) over every cell, and the frontier refitted
without the largest budget to predict it. study.py runs a pass on the cell means and one on
every bootstrap draw.

A fit needs at least (its parameters + 2) distinct points (`NEED`), or it is refused with
the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spiralsearch.analysis import vp

__all__ = ["NEED", "Layout", "Pass", "run_pass"]

NEED = {"frontier": 5, "frontier_fixed_E": 4, "parabola": 5, "optimal_size": 4, "nd": 7}


@dataclass
class Pass:
    """Everything one pass of the pipeline computes from one set of cell means."""

    frontier: dict[Any, vp.PowerLaw | str] = field(default_factory=dict)
    points: dict[Any, np.ndarray] = field(default_factory=dict)  # cell rows, by budget
    isoflop: dict[Any, list[dict]] = field(default_factory=dict)
    optimal: dict[Any, tuple[float, float] | str] = field(default_factory=dict)
    nd: dict[Any, vp.PowerLawND | str] = field(default_factory=dict)
    backtest: dict[Any, dict | str] = field(default_factory=dict)


class Layout:
    """The cells' structure, built once: per group its rows by budget (sizes within)."""

    def __init__(self, table: pd.DataFrame):
        self.C, self.N, self.D = (table[k].to_numpy(float) for k in ("C", "N", "D"))
        self.R, self.budget = table["R"].to_numpy(float), table["budget"].to_numpy(float)
        self.rows: dict[Any, list[np.ndarray]] = {}
        for name, g in table.groupby("group", sort=False):
            self.rows[name] = [np.sort(b.index.to_numpy()) for _, b in g.groupby("budget")]

    def frontier_points(self, name, means: np.ndarray) -> np.ndarray:
        """Rows of the best size (lowest mean) per budget, by budget."""
        return np.array([r[np.argmin(means[r])] for r in self.rows[name]])


def _fit_frontier(lay: Layout, rows: np.ndarray, means: np.ndarray,
                  E: float | None) -> vp.PowerLaw | str:
    need = NEED["frontier"] if E is None else NEED["frontier_fixed_E"]
    if len(rows) < need:
        return (f"{len(rows)} budget(s); L(C) = E + A·C^-alpha needs >= {need} "
                f"(its parameters + 2)")
    return vp.power_law(lay.C[rows], means[rows], lay.R[rows], E=E)


def _isoflop(lay: Layout, name, means: np.ndarray) -> list[dict]:
    """Per budget: the parabola in log N through the sizes' means, its optimum and flags."""
    out = []
    for r in lay.rows[name]:
        entry: dict[str, Any] = dict(budget=float(lay.budget[r[0]]), n_sizes=len(r),
                                     C=float(lay.C[r].mean()))
        if not np.isfinite(lay.N[r]).all():
            entry["refused"] = "no parameter counts to place the sizes"
        elif len(r) < NEED["parabola"]:
            entry["refused"] = (f"{len(r)} size(s); a parabola needs >= {NEED['parabola']} "
                                f"(its parameters + 2)")
        else:
            x = np.log(lay.N[r])
            p = vp.parabola(x, means[r], lay.R[r])
            entry |= dict(params_opt=_exp(p.x_opt) if p.convex else math.nan,
                          loss_opt=float(p.predict(p.x_opt)) if p.convex else math.nan,
                          edge=p.edge, coef=list(p.coef))
            if p.edge:
                entry["advice"] = _recentre(x, means[r], p)
        out.append(entry)
    return out


FAR = 20.0  # a vertex e^20 (5e8) times the grid's centre: the parabola is all but flat


def _exp(v: float) -> float:
    """e^v, inf past float range (a nearly flat parabola's vertex in log N)."""
    return math.exp(v) if v < 709 else math.inf


def _recentre(x: np.ndarray, loss: np.ndarray, p: vp.Parabola) -> str:
    """How to move the next grid so this budget's optimum lands inside it."""
    lower = x[np.argmin(loss)] <= x.min() if not p.convex else p.x_opt < p.x_min
    where = "smaller" if lower else "larger"
    knob = "raise" if lower else "lower"
    shift = abs(p.x_opt - x.mean())
    by = "" if not p.convex else f" by ~{math.exp(shift):.2g}x" if shift < FAR else (
        " by far more than the grid spans (its parabola is nearly flat)")
    return (f"the optimum lies past the {where} sizes: centre the next grid on {where} "
            f"models{by} ({knob} sizes.tokens_per_param)")


def _optimal_size(iso: list[dict]) -> tuple[float, float] | str:
    """N*(C) = k C^a through the budgets whose optimum is inside the grid: (k, a)."""
    fitted = [e for e in iso if "refused" not in e]
    inside = [e for e in fitted if not e["edge"]]
    if not fitted:
        return "no budget has an IsoFLOP parabola to take N* from"
    if len(inside) < NEED["optimal_size"]:
        return (f"{len(inside)} budget(s) with an optimum inside the size grid; N*(C) = k·C^a "
                f"needs >= {NEED['optimal_size']}")
    x = np.log([e["C"] for e in inside])
    y = np.log([e["params_opt"] for e in inside])
    a, logk = np.polyfit(x, y, 1)
    return float(math.exp(logk)), float(a)


def _nd(lay: Layout, name, means: np.ndarray) -> vp.PowerLawND | str:
    r = np.concatenate(lay.rows[name])
    if not (np.isfinite(lay.N[r]).all() and np.isfinite(lay.D[r]).all()):
        return "no parameter or token counts for L(N, D)"
    n_sizes = np.unique(lay.N[r]).size
    if len(r) < NEED["nd"] or n_sizes < 2 or np.unique(lay.D[r]).size < 2:
        return (f"{len(r)} cell(s) with {n_sizes} size(s); L(N, D) has 5 parameters and "
                f"needs >= {NEED['nd']} cells where both N and D vary")
    return vp.power_law_nd(lay.N[r], lay.D[r], means[r], lay.R[r])


def _held_out(lay: Layout, rows: np.ndarray, law: vp.PowerLaw, means: np.ndarray) -> dict:
    held = rows[-1]
    return dict(budget=float(lay.budget[held]), C=float(lay.C[held]),
                predicted=float(law.predict(lay.C[held])), observed=float(means[held]))


def _backtest(lay: Layout, rows: np.ndarray, means: np.ndarray, E: float | None) -> dict | str:
    """Fit the frontier on all but the largest budget, predict it."""
    law = _fit_frontier(lay, rows[:-1], means, E)
    if isinstance(law, str):
        return f"held out the largest budget, leaving {law}"
    return _held_out(lay, rows, law, means)


def run_pass(lay: Layout, means: np.ndarray, *, E: float | None, shared: bool,
             nd: bool = True) -> Pass:
    """The pipeline on one set of cell means: frontier, IsoFLOP, N*(C), L(N, D), backtest."""
    out = Pass()
    for name in lay.rows:
        rows = out.points[name] = lay.frontier_points(name, means)
        out.isoflop[name] = _isoflop(lay, name, means)
        out.optimal[name] = _optimal_size(out.isoflop[name])
        if nd:
            out.nd[name] = _nd(lay, name, means)
        if not shared:
            out.frontier[name] = _fit_frontier(lay, rows, means, E)
            out.backtest[name] = _backtest(lay, rows, means, E)
    if shared:
        _shared_frontiers(lay, out, means)
    return out


def _shared_fit(lay: Layout, rows: dict, means: np.ndarray) -> dict:
    laws, _ = vp.shared_E([(lay.C[r], means[r], lay.R[r]) for r in rows.values()])
    return dict(zip(rows, laws, strict=True))


def _shared_frontiers(lay: Layout, out: Pass, means: np.ndarray) -> None:
    """One E for every group whose frontier has enough budgets; the rest are refused."""
    need = NEED["frontier_fixed_E"]
    fit = {n: r for n, r in out.points.items() if len(r) >= need}
    for n, r in out.points.items():
        if n not in fit:
            out.frontier[n] = _fit_frontier(lay, r, means, 0.0)  # the refusal message
            out.backtest[n] = "too few budgets for a frontier"
    if not fit:
        return
    out.frontier |= _shared_fit(lay, fit, means)
    for n, r in fit.items():
        if len(r) - 1 < need:
            out.backtest[n] = (f"held out the largest budget, leaving {len(r) - 1}; a shared-E "
                               f"frontier needs >= {need}")
            continue
        law = _shared_fit(lay, fit | {n: r[:-1]}, means)[n]
        out.backtest[n] = _held_out(lay, r, law, means)
