"""The analysis of a study (docs/design.md §6): per comparison group, three views of the same
trials, intervals from resampling replicates, compute multipliers against a baseline group,
and one sentence per comparison.

    study = analyse(trials)                 # trials: load_results(db)["trials"]
    study.groups["spiral"].frontier         # L*(C) = E + A C^-alpha, best size per budget
    study.groups["spiral"].isoflop          # per budget: parabola in log N, N*(C), L*(C)
    study.conclusion                        # ["spiral reaches plain's loss at ... 0.62x ..."]
    study.to_dict()                         # what `spiralsearch fit --format json` prints

A **cell** is (group, budget, size): its selected point's replicates (search.replicates), or,
in results without them, the best trial by validation loss. Cell means of the test loss are
what every fit sees; weights are replicate counts.

**Uncertainty.** Each bootstrap draw redraws every cell's replicates: the cell mean plus R
residuals drawn with replacement from the group's pooled replicate residuals (each scaled by
sqrt(R / (R - 1)), so their spread is the unbiased within-cell one), then reruns the whole
pipeline (best size per budget included). Without replicates there is nothing honest to
resample, and intervals are refused with that reason. Percentile intervals, 95%.

**Known bias.** With an asymmetric loss surface (alpha != beta in L(N, D)) a parabola's vertex
sits a constant factor off the true optimum: N*(C)'s exponent survives, its intercept and
extrapolations do not (Open-Athena, "Problems with Chinchilla Approach 2"). `ISOFLOP_BIAS`
says so wherever optima are printed.

**Refusals.** A fit needs at least (its parameters + 2) distinct points, or it is refused with
the reason: L(C) 5 budgets (4 with E fixed), a parabola 5 sizes, N*(C) = k C^a 4 budgets
with the optimum inside the grid, L(N, D) 7 cells. The backtest holds out the largest budget
and needs a frontier fit on the rest. views.py computes all of these from one set of cell
means; this module runs it on the means and on every bootstrap draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spiralsearch.analysis import BOOTSTRAP, vp
from spiralsearch.analysis.compare import LEVEL, _ci, _compare, _within
from spiralsearch.analysis.fitting import jsonable
from spiralsearch.analysis.views import Layout, Pass, run_pass

ISOFLOP_BIAS = ("with an asymmetric loss surface the parabola's vertex is off the true "
                "optimum by a constant factor: trust N*(C)'s exponent more than its intercept")
ND_DRAWS = 40  # L(N, D) refits per bootstrap (each ~50 ms); its intervals say so


# ----------------------------------------------------------------------------- cells


def cells(trials: pd.DataFrame, by: str, loss: str) -> pd.DataFrame:
    """One row per (group, budget, size) of the complete trials with a finite `loss`: C
    (training FLOPs), N (non-embedding params), N_unrolled, D (tokens), R, mean, losses (the
    replicates' losses) and the trial ids. The cell's point is its selected trials (replicates
    of its selected point) where the sweep marked them, else its best trial by validation."""
    ok = (trials["status"] == "complete") & np.isfinite(trials[loss].astype(float))
    ok &= trials["train_flops"].notna()
    df = trials[ok].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame()
    for col in ("params_non_embedding", "params_unrolled", "tokens"):  # absent in imports
        if col not in df:
            df[col] = math.nan
    if "trial_id" not in df:
        df["trial_id"] = [f"row{i}" for i in range(len(df))]
    df["_size"] = df["size_index"].fillna(-1).astype(int) if "size_index" in df else -1
    keys = [by, "budget_target", "_size"]
    sel = df["selected"].fillna(False).astype(bool) if "selected" in df else None
    rows = []
    for key, g in df.groupby(keys, sort=True):
        mask = sel.loc[g.index].to_numpy() if sel is not None else None
        picked = g[mask] if mask is not None and mask.any() else None
        if picked is None:  # no selection stored: the best by validation (never by test)
            picked = g.loc[[g["final_val_loss"].astype(float).idxmin()]]
        # by loss, so the bootstrap's draws never depend on row order or trial ids
        picked = picked.sort_values(loss, kind="stable")
        ls = picked[loss].astype(float).to_numpy()
        rows.append(dict(group=key[0], budget=float(key[1]), size=int(key[2]),
                         C=_mean(picked, "train_flops"), N=_mean(picked, "params_non_embedding"),
                         N_unrolled=_mean(picked, "params_unrolled"), D=_mean(picked, "tokens"),
                         R=len(ls), mean=float(ls.mean()), losses=ls,
                         trials=list(picked["trial_id"])))
    return pd.DataFrame(rows)


def _mean(df: pd.DataFrame, col: str) -> float:
    """A column's mean; NULLs (pd.NA) are unknown: nan."""
    return float(pd.to_numeric(df[col], errors="coerce").astype(float).mean())


class Residuals:
    """The bootstrap's noise model: each group's pooled within-cell replicate residuals."""

    def __init__(self, table: pd.DataFrame):
        self.pool: dict[Any, np.ndarray] = {}
        for name, g in table.groupby("group"):
            rs = [(ls - ls.mean()) * math.sqrt(len(ls) / (len(ls) - 1))
                  for ls in g["losses"] if len(ls) > 1]
            if rs:
                self.pool[name] = np.concatenate(rs)
        everything = [r for r in self.pool.values()]
        self.shared = np.concatenate(everything) if everything else np.empty(0)

    @property
    def usable(self) -> bool:
        return self.shared.size > 0

    def draw(self, table: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
        """Cell means of one bootstrap draw: mean + the mean of R drawn residuals."""
        out = np.empty(len(table))
        for i, (name, mean, R) in enumerate(zip(table["group"], table["mean"], table["R"],
                                                strict=True)):
            pool = self.pool.get(name, self.shared)
            out[i] = mean + pool[rng.integers(0, pool.size, R)].mean()
        return out


# ----------------------------------------------------------------------------- the study


@dataclass
class GroupStudy:
    """One group's three views and its backtest (dicts as `to_dict` prints them)."""

    frontier: dict
    isoflop: list[dict]
    optimal_size: dict
    nd: dict
    backtest: dict
    n_trials: int
    n_cells: int
    # (n_draws, 3): (E, A, alpha) of each bootstrap refit of the frontier (for bands); not
    # part of to_dict
    frontier_draws: np.ndarray | None = None


@dataclass
class Study:
    """The analysis of one results file (see the module docstring)."""

    loss: str  # "test" or "val"
    by: str
    baseline: str | None
    groups: dict[str, GroupStudy]
    multipliers: list[dict]  # the curve: {group, baseline, loss, multiplier, ci}
    summary: list[dict]  # one per comparison: at the largest common budget
    conclusion: list[str]
    bootstrap: dict  # n, what it resamples, seed, why refused

    def to_dict(self) -> dict:
        """JSON-ready (fitting.jsonable): an infinity as "inf", nan as None."""
        return jsonable(dict(loss=self.loss, by=self.by, baseline=self.baseline,
                             bootstrap=self.bootstrap,
                             groups={k: {f: x for f, x in vars(v).items()
                                         if f != "frontier_draws"}
                                     for k, v in self.groups.items()},
                             multipliers=self.multipliers, summary=self.summary,
                             conclusion=self.conclusion))


def analyse(trials: pd.DataFrame, *, by: str = "group", loss: str = "final_test_loss",
            baseline: str | None = None, bootstrap: int = BOOTSTRAP, seed: int = 0,
            E: float | None = None, shared_E: bool = False, n_curve: int = 12) -> Study:
    """Analyse a study's trials (a load_results frame with `by` and `loss` columns).
    `baseline`: the group every other is compared with (default: the first). `E`: a stated
    loss floor for every frontier; `shared_E`: one fitted floor for all groups. Bootstrap
    draws redraw replicates (module docstring); 0 turns intervals off."""
    table = cells(trials, by, loss)
    split = "test" if loss == "final_test_loss" else "val"
    if table.empty:
        return Study(split, by, baseline, {}, [], [], ["no complete trials to analyse"],
                     dict(n=0, refused="no complete trials"))
    names = _ordered(table["group"])
    if baseline is not None and baseline not in names:
        raise ValueError(f"--baseline {baseline!r}: no such group (groups: "
                         f"{', '.join(map(str, names))})")
    baseline = baseline if baseline is not None else names[0]
    lay = Layout(table)
    means = table["mean"].to_numpy(float)
    point = run_pass(lay, means, E=E, shared=shared_E)
    noise = Residuals(table)
    boot: dict[str, Any] = dict(n=0, seed=seed, level=LEVEL, resamples=(
        "replicates: each cell's R losses redrawn as its mean plus R residuals drawn from its "
        "group's pooled within-cell residuals; the whole pipeline refitted per draw"))
    draws: list[Pass] = []
    if bootstrap > 0 and noise.usable:
        rng = np.random.default_rng(seed)
        for i in range(bootstrap):
            draws.append(run_pass(lay, noise.draw(table, rng), E=E, shared=shared_E,
                                  nd=i < ND_DRAWS))
        boot["n"] = bootstrap
    elif bootstrap > 0:
        boot["refused"] = ("no cell has 2 or more replicates (search.replicates): there is "
                           "nothing honest to resample, so no intervals")
    groups = {n: _group_study(n, table, trials, by, point, draws) for n in names}
    curve, summary, conclusion = _compare(lay, names, baseline, means, point, draws,
                                          n_curve, boot)
    return Study(split, by, baseline, groups, curve, summary, conclusion, boot)


def _ordered(groups: pd.Series) -> list:
    """Group names in a stable order: families as plain, looped, spiral; others sorted."""
    names = sorted(set(groups), key=str)
    if set(names) <= set(FAMILY_ORDER):
        return [f for f in FAMILY_ORDER if f in names]
    return names


FAMILY_ORDER = ("plain", "looped", "spiral")


def _law_dict(law: vp.PowerLaw | str, samples: list) -> dict:
    if isinstance(law, str):
        return dict(refused=law)
    ok = [s for s in samples if not isinstance(s, str)]
    ci = {k: _ci([getattr(s, k) for s in ok]) for k in ("E", "A", "alpha")} if ok else {}
    return dict(E=law.E, A=law.A, alpha=law.alpha, n_points=law.n_points,
                at_bound=law.at_bound, E_fixed=law.E_fixed, ci=ci,
                refits_at_bound=sum(bool(s.at_bound) for s in ok),
                refits_refused=len(samples) - len(ok))


def _group_study(name, table: pd.DataFrame, trials: pd.DataFrame, by: str, point: Pass,
                 draws: list[Pass]) -> GroupStudy:
    pts = table.loc[point.points[name]]
    frontier = _law_dict(point.frontier[name], [d.frontier[name] for d in draws])
    frontier["points"] = [dict(budget=r.budget, C=r.C, loss=r.mean, N=r.N, D=r.D, R=r.R,
                               size=None if r.size < 0 else r.size, trials=r.trials,
                               losses=list(r.losses)) for r in pts.itertuples()]
    iso = []
    for i, e in enumerate(point.isoflop[name]):
        e = dict(e)
        here = table[(table["group"] == name) & (table["budget"] == e["budget"])]
        e["points"] = [dict(N=r.N, N_unrolled=r.N_unrolled, D=r.D, C=r.C, loss=r.mean, R=r.R,
                            size=None if r.size < 0 else r.size, losses=list(r.losses),
                            trials=r.trials) for r in here.sort_values("N").itertuples()]
        if "refused" not in e:
            e["ci"] = {k: _ci([d.isoflop[name][i].get(k, math.nan) for d in draws])
                       for k in ("params_opt", "loss_opt")}
        iso.append(e)
    opt = point.optimal[name]
    if isinstance(opt, str):
        optimal = dict(refused=opt)
    else:
        a = [d.optimal[name][1] for d in draws if not isinstance(d.optimal[name], str)]
        optimal = dict(k=opt[0], a=opt[1], ci={"a": _ci(a)})
    nd = point.nd[name]
    if isinstance(nd, str):
        nd_d = dict(refused=nd)
    else:
        ok = [d.nd[name] for d in draws if d.nd and not isinstance(d.nd[name], str)]
        nd_d = dict(E=nd.E, A=nd.A, alpha=nd.alpha, B=nd.B, beta=nd.beta,
                    at_bound=nd.at_bound, n_points=nd.n_points, n_draws=len(ok),
                    ci={k: _ci([getattr(s, k) for s in ok])
                        for k in ("E", "A", "alpha", "B", "beta")})
    bt = point.backtest.get(name, "not run")
    if isinstance(bt, str):
        bt_d = dict(refused=bt)
    else:
        pred = [d.backtest[name]["predicted"] for d in draws
                if not isinstance(d.backtest.get(name, ""), str)]
        ci = _ci(pred)
        bt_d = bt | dict(rel_error=abs(bt["predicted"] - bt["observed"]) / bt["observed"],
                         ci=ci, inside=None if ci is None else _within(bt["observed"], ci))
    n_trials = int((trials[by] == name).sum()) if by in trials else 0
    laws = [d.frontier[name] for d in draws if not isinstance(d.frontier[name], str)]
    samples = np.array([(f.E, f.A, f.alpha) for f in laws]) if laws else None
    return GroupStudy(frontier, iso, optimal, nd_d, bt_d, n_trials,
                      int((table["group"] == name).sum()), samples)
