"""Scaling-law fits on compute frontiers.

    idx = frontier(flops, loss)                     # lower convex hull in (log10 C, loss)
    fit = fit_power_law(flops[idx], loss[idx], bootstrap=200)   # L(C) = E + A * C^-alpha
    compare(fit_spiral, fit_plain, compute_a=..., loss_a=..., compute_b=..., loss_b=...,
            bootstrap=200).multiplier               # plain needs this many x the compute...
    backtest(flops, loss).rel_error                 # fit on small budgets, predict the largest
    fit_nd(n_params, n_tokens, loss).compute_optimal(1e20)   # L(N, D) and its (N_opt, D_opt)

Units: compute C is training FLOPs, loss L is nats/token, N is parameters, D is tokens.

Fitting follows Hoffmann et al. 2022 (approach 3): minimise the Huber loss of the log-space
residuals log L_pred - log L_obs with L-BFGS-B from a grid of starts and keep the best. With a
small delta (1e-3, below the ~1% run-to-run noise) the objective is close to least absolute
deviations, so a few finite-but-bad runs cannot drag the curve. Internally C (and N, D) are
divided by their geometric mean and A is fitted as its log, so the fit is equally well
conditioned at 1e12 and at 1e20 FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult

from spiralsearch.analysis.fitting import (
    ALPHA_BOUNDS,
    MAX_EXP,
    MIN_POINTS,
    best_start,
    bootstrap_refits,
    clean,
    draw,
    e_upper,
    huber_loss,
    jsonable,
    one_blas_thread,
    percentile_ci,
)
from spiralsearch.analysis.scaling_nd import NDFit, fit_nd  # re-exported: part of this module's API

__all__ = [
    "BacktestResult",
    "CompareResult",
    "NDFit",
    "PowerLawFit",
    "backtest",
    "best_per_budget",
    "compare",
    "fit_nd",
    "fit_power_law",
    "frontier",
]



# ----------------------------------------------------------------------------- frontier


def frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the compute frontier, sorted by compute (FLOPs).

    The frontier is the lower convex hull of the points (log10 compute, loss in nats/token),
    cut where the hull stops improving: every returned point has strictly lower loss than the
    previous one, so a point beaten by a cheaper one is never on it. Only hull vertices count
    (a point exactly on a hull edge is dropped); at equal compute the lowest loss wins (the
    first index on exact ties). Non-finite losses and non-positive compute are ignored.
    """
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    idx = np.flatnonzero(np.isfinite(loss) & np.isfinite(compute) & (compute > 0))
    idx = idx[np.lexsort((idx, loss[idx], compute[idx]))]  # by compute, then loss, then index
    x, y = np.log10(compute[idx]), loss[idx]
    # Andrew's monotone chain rather than scipy.spatial.ConvexHull: Qhull rejects the
    # degenerate sets common here (< 3 points, one trial per budget on a line).
    hull: list[int] = []
    for k in range(len(idx)):
        if hull and x[hull[-1]] == x[k]:
            continue  # same compute, higher (or equal) loss than the one already kept
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            cross = (x[j] - x[i]) * (y[k] - y[i]) - (y[j] - y[i]) * (x[k] - x[i])
            if cross > 0:  # strict left turn: j stays a vertex of the lower hull
                break
            hull.pop()
        hull.append(k)
    # The lower hull falls then rises; keep it up to its first minimum.
    end = int(np.argmin(y[hull])) + 1 if hull else 0
    return idx[hull[:end]]


def best_per_budget(budget: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Index of the lowest finite loss for each distinct budget value, sorted by budget.

    Budgets whose trials all have non-finite loss are omitted; ties go to the first index.
    """
    budget, loss = np.asarray(budget), np.asarray(loss, float)
    idx = np.flatnonzero(np.isfinite(loss))
    idx = idx[np.lexsort((idx, loss[idx], budget[idx]))]
    _, first = np.unique(budget[idx], return_index=True)
    return idx[first]


# ----------------------------------------------------------------------------- L(C)


@dataclass
class PowerLawFit:
    """L(C) = E + A * C^-alpha with C in training FLOPs and L in nats/token."""

    E: float
    A: float
    alpha: float
    ci: dict[str, tuple[float, float]]  # 95% bootstrap percentile intervals; {} without
    residuals: np.ndarray  # log L_pred - log L_obs at each point used, in input order
    n_points: int  # points used (finite loss)
    loss_value: float  # final objective: summed Huber(delta) of the log residuals
    converged: bool  # L-BFGS-B reported success for the winning start
    huber_delta: float = 1e-3
    compute_ref: float = 1.0  # FLOPs; C is divided by this (geometric mean) while fitting
    compute_min: float = math.nan  # smallest and largest compute fitted, FLOPs
    compute_max: float = math.nan
    n_boot: int = 0  # bootstrap resamples behind ci
    samples: np.ndarray | None = None  # (n_boot, 3): (E, A, alpha) of each bootstrap refit

    def predict(self, C: np.ndarray | float) -> np.ndarray:
        """Predicted loss (nats/token) at compute C (FLOPs)."""
        logc = np.log(np.asarray(C, float))
        return self.E + np.exp(math.log(self.A) - self.alpha * logc)

    def compute_for_loss(self, L: np.ndarray | float) -> np.ndarray:
        """Compute (FLOPs) at which the fit reaches loss L: (A / (L - E))^(1/alpha);
        inf where L <= E (never reached)."""
        gap = np.asarray(L, float) - self.E
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            logc = (math.log(self.A) - np.log(np.where(gap > 0, gap, np.nan))) / self.alpha
            return np.where(gap > 0, np.exp(logc), np.inf)

    def to_dict(self) -> dict:
        """JSON-ready dict (fitting.jsonable: an infinity as "inf", nan as None)."""
        return jsonable({
            "E": self.E, "A": self.A, "alpha": self.alpha, "ci": self.ci,
            "n_points": self.n_points, "loss_value": self.loss_value,
            "converged": self.converged, "huber_delta": self.huber_delta,
            "compute_ref": self.compute_ref, "compute_min": self.compute_min,
            "compute_max": self.compute_max, "n_boot": self.n_boot,
            "residuals": self.residuals,
        })


def _pl_objective(theta: np.ndarray, logx: np.ndarray, logl: np.ndarray, delta: float):
    """Huber loss and gradient for theta = (E, log A', alpha) with L = E + A' x^-alpha,
    x = C / compute_ref."""
    E, a, alpha = theta
    P = np.exp(np.clip(a - alpha * logx, -MAX_EXP, MAX_EXP))
    Lp = E + P
    f, g = huber_loss(np.log(Lp) - logl, delta)
    gE = g / Lp
    gP = gE * P
    return f, np.array([gE.sum(), gP.sum(), -(gP * logx).sum()])


def _pl_grid(logx: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """8 alphas x 6 E levels x 3 offsets of log A' = 144 starts. For each (E, alpha) the
    central log A' solves the least-squares line log(L - E) = log A' - alpha log x."""
    top = e_upper(loss)
    starts = []
    for alpha in (0.03, 0.07, 0.15, 0.3, 0.5, 0.8, 1.2, 2.0):
        for frac in (0.0, 0.3, 0.6, 0.8, 0.9, 0.97):
            E = frac * top
            a = np.mean(np.log(loss - E) + alpha * logx)
            starts += [(E, a + da, alpha) for da in (-1.5, 0.0, 1.5)]
    return np.array(starts)


def _fit_pl_theta(
    logx: np.ndarray, loss: np.ndarray, delta: float, warm: np.ndarray | None = None
) -> OptimizeResult:
    """Best L-BFGS-B fit in internal coordinates. Without `warm`, start from the full grid;
    with it (bootstrap refits), from `warm` plus the few most promising grid points."""
    logl = np.log(loss)

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        return _pl_objective(t, logx, logl, delta)

    bounds = [(0.0, e_upper(loss)), (None, None), ALPHA_BOUNDS]
    return best_start(objective, _pl_grid(logx, loss), bounds, warm)


def _pl_params(theta: np.ndarray, compute_ref: float) -> tuple[float, float, float]:
    """Internal (E, log A', alpha) -> (E, A, alpha) in FLOPs: A = A' * compute_ref^alpha."""
    E, a, alpha = theta
    return float(E), float(math.exp(a + alpha * math.log(compute_ref))), float(alpha)


def _pl_warm(fit: PowerLawFit) -> np.ndarray:
    return np.array([fit.E, math.log(fit.A) - fit.alpha * math.log(fit.compute_ref), fit.alpha])


@one_blas_thread
def fit_power_law(
    compute: np.ndarray,
    loss: np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    huber_delta: float = 1e-3,
) -> PowerLawFit:
    """Fit L(C) = E + A * C^-alpha to loss (nats/token) against compute C (training FLOPs).

    Minimises the summed Huber(huber_delta) loss of log L_pred - log L_obs with L-BFGS-B from
    144 grid starts, with 0 <= E < min observed loss. Non-finite losses (diverged runs) are
    dropped first. With bootstrap > 0, `ci` holds 95% percentile intervals for E, A and alpha
    from that many resamples of the points (seeded by `seed`). Raises ValueError with fewer
    than 3 finite-loss points.
    """
    compute, loss = clean(compute, loss, "compute")
    compute_ref = float(np.exp(np.mean(np.log(compute))))
    logx = np.log(compute / compute_ref)
    res = _fit_pl_theta(logx, loss, huber_delta)
    E, A, alpha = _pl_params(res.x, compute_ref)
    fit = PowerLawFit(
        E=E, A=A, alpha=alpha, ci={}, residuals=np.empty(0), n_points=loss.size,
        loss_value=float(res.fun), converged=bool(res.success), huber_delta=huber_delta,
        compute_ref=compute_ref, compute_min=float(compute.min()),
        compute_max=float(compute.max()),
    )
    fit.residuals = np.log(fit.predict(compute)) - np.log(loss)
    if bootstrap > 0:
        def refit(idx: np.ndarray) -> np.ndarray:
            r = _fit_pl_theta(logx[idx], loss[idx], huber_delta, warm=res.x)
            return np.array(_pl_params(r.x, compute_ref))

        samples = bootstrap_refits(bootstrap, seed, compute, refit)
        fit.ci = {k: percentile_ci(samples[:, i]) for i, k in enumerate(("E", "A", "alpha"))}
        fit.n_boot, fit.samples = bootstrap, samples
    return fit


def _with_params(fit: PowerLawFit, E: float, A: float, alpha: float) -> PowerLawFit:
    """`fit` with other law parameters (one bootstrap refit), for predictions only."""
    return dataclasses.replace(fit, E=float(E), A=float(A), alpha=float(alpha), ci={},
                               samples=None, n_boot=0)


def _refit_pl(fit: PowerLawFit, compute: np.ndarray, loss: np.ndarray) -> PowerLawFit:
    """Quick refit of `fit`'s law on new data, warm-started from `fit` (no bootstrap)."""
    logx = np.log(compute / fit.compute_ref)
    res = _fit_pl_theta(logx, loss, fit.huber_delta, warm=_pl_warm(fit))
    E, A, alpha = _pl_params(res.x, fit.compute_ref)
    return PowerLawFit(E=E, A=A, alpha=alpha, ci={}, residuals=np.empty(0),
                       n_points=loss.size, loss_value=float(res.fun),
                       converged=bool(res.success), huber_delta=fit.huber_delta,
                       compute_ref=fit.compute_ref, compute_min=float(compute.min()),
                       compute_max=float(compute.max()))


# ----------------------------------------------------------------------------- compare


@dataclass
class CompareResult:
    """Compute multiplier C_A(L_target) / C_B(L_target): how many times B's compute family A
    needs to reach the same loss. > 1 means A is less compute-efficient."""

    multiplier: float
    ci: tuple[float, float] | None  # 95% bootstrap percentile interval, None without
    target_loss: float  # nats/token
    at_compute: float | None  # FLOPs of B that defined target_loss; None if given directly
    note: str = ""  # why the multiplier is inf/nan/0, or how many resamples were unusable
    n_boot: int = 0

    def to_dict(self) -> dict:
        """JSON-ready summary (fitting.jsonable: an infinity as "inf", nan as None; see
        `note`)."""
        return jsonable({
            "multiplier": self.multiplier, "ci": self.ci, "target_loss": self.target_loss,
            "at_compute": self.at_compute, "note": self.note, "n_boot": self.n_boot,
        })


def _multiplier(fit_a: PowerLawFit, fit_b: PowerLawFit, target: float) -> tuple[float, str]:
    """C_A(target) / C_B(target), with a note when a family never gets there. Taken as a
    difference of logs because C(L) itself overflows for small alpha with L near E."""
    reach_a, reach_b = target > fit_a.E, target > fit_b.E
    if not reach_a and not reach_b:
        return math.nan, f"target loss {target:.4g} is at or below both E_a and E_b"
    if not reach_a:
        return math.inf, f"A never reaches target loss {target:.4g} (E_a = {fit_a.E:.4g})"
    if not reach_b:
        return 0.0, f"B never reaches target loss {target:.4g} (E_b = {fit_b.E:.4g})"

    def log_c(f: PowerLawFit) -> float:
        return (math.log(f.A) - math.log(target - f.E)) / f.alpha

    return math.exp(log_c(fit_a) - log_c(fit_b)), ""


@one_blas_thread
def compare(
    fit_a: PowerLawFit,
    fit_b: PowerLawFit,
    *,
    at_compute: float | None = None,
    at_loss: float | None = None,
    compute_a: np.ndarray | None = None,
    loss_a: np.ndarray | None = None,
    compute_b: np.ndarray | None = None,
    loss_b: np.ndarray | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> CompareResult:
    """Compute multiplier of family A relative to family B at a target loss.

    The target loss (nats/token) is `at_loss`, or B's predicted loss at `at_compute` FLOPs
    (default: the largest compute B was fitted on). multiplier = C_A(L) / C_B(L) with
    C(L) = (A / (L - E))^(1/alpha); inf when L <= E_a (A never gets there), 0 when only B
    never gets there, nan when neither does, with the reason in `note`.

    With bootstrap > 0, each family is resampled and refit independently, the target loss is
    recomputed the same way, and `ci` is the 95% percentile interval of the multiplier. The
    refits are the fits' own bootstrap samples when both carry at least `bootstrap` of them
    (fit_power_law(..., bootstrap=n)); otherwise the raw points of both families (compute_*,
    loss_*, the data the fits came from) are resampled and refit here.
    """
    if at_compute is not None and at_loss is not None:
        raise ValueError("give at most one of at_compute and at_loss")
    if at_loss is None:
        at_compute = fit_b.compute_max if at_compute is None else float(at_compute)
        target = float(fit_b.predict(at_compute))
    else:
        target = float(at_loss)
    mult, note = _multiplier(fit_a, fit_b, target)
    result = CompareResult(multiplier=mult, ci=None, target_loss=target,
                           at_compute=None if at_loss is not None else at_compute, note=note)
    if bootstrap <= 0:
        return result
    samples = np.empty(bootstrap)
    for i, (fa, fb) in enumerate(_paired_refits(fit_a, fit_b, bootstrap, seed, compute_a,
                                                loss_a, compute_b, loss_b)):
        t = target if at_loss is not None else float(fb.predict(at_compute))
        samples[i] = _multiplier(fa, fb, t)[0]
    n_bad = int(np.isnan(samples).sum())
    if n_bad == bootstrap:
        result.note = (note + "; " if note else "") + "no bootstrap resample gave a multiplier"
        return result
    # inf/0 samples (target out of reach in a resample) sort to the ends, as they should
    result.ci = percentile_ci(samples)
    result.n_boot = bootstrap
    if n_bad:
        result.note = (note + "; " if note else "") + f"{n_bad} resamples gave nan"
    return result


def _paired_refits(fit_a, fit_b, n, seed, compute_a, loss_a, compute_b, loss_b):
    """n pairs of independent bootstrap refits of the two families."""
    have = [f.samples is not None and len(f.samples) >= n for f in (fit_a, fit_b)]
    if all(have):
        for sa, sb in zip(fit_a.samples[:n], fit_b.samples[:n], strict=True):
            yield _with_params(fit_a, *sa), _with_params(fit_b, *sb)
        return
    if any(v is None for v in (compute_a, loss_a, compute_b, loss_b)):
        raise ValueError("bootstrap needs the raw data: compute_a, loss_a, compute_b, loss_b "
                         "(or fits made with at least as many bootstrap samples)")
    ca, la = clean(compute_a, loss_a, "compute_a")
    cb, lb = clean(compute_b, loss_b, "compute_b")
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ia, ib = draw(rng, ca), draw(rng, cb)
        yield _refit_pl(fit_a, ca[ia], la[ia]), _refit_pl(fit_b, cb[ib], lb[ib])


# ----------------------------------------------------------------------------- backtest


@dataclass
class BacktestResult:
    """Fit on every budget below the largest, predict the largest."""

    compute: float  # the held-out (largest) compute budget, FLOPs
    predicted: float  # fitted loss at that budget, nats/token
    observed: float  # best observed loss at that budget, nats/token
    rel_error: float  # |predicted - observed| / observed
    fit: PowerLawFit
    n_train: int  # finite-loss points below the held-out budget

    def to_dict(self) -> dict:
        """JSON-ready summary, with the fit nested under "fit"."""
        return jsonable({
            "compute": self.compute, "predicted": self.predicted, "observed": self.observed,
            "rel_error": self.rel_error, "n_train": self.n_train, "fit": self.fit.to_dict(),
        })


def backtest(compute: np.ndarray, loss: np.ndarray, **fit_kwargs) -> BacktestResult:
    """Extrapolation check: fit `fit_power_law` (with fit_kwargs) on all finite-loss points
    with compute (FLOPs) below the largest budget, predict the loss (nats/token) there, and
    compare with the best observed loss at that budget. Raises ValueError with fewer than 3
    finite-loss points below the largest budget.
    """
    compute, loss = np.asarray(compute, float).ravel(), np.asarray(loss, float).ravel()
    ok = np.isfinite(loss)
    if not ok.any():
        raise ValueError("backtest needs finite losses, got none")
    c_max = float(compute[ok].max())
    train = ok & (compute < c_max)
    if train.sum() < MIN_POINTS:
        raise ValueError(
            f"backtest needs at least {MIN_POINTS} finite-loss points below the largest "
            f"budget ({c_max:.3g} FLOPs), got {int(train.sum())}"
        )
    fit = fit_power_law(compute[train], loss[train], **fit_kwargs)
    observed = float(loss[ok & (compute == c_max)].min())
    predicted = float(fit.predict(c_max))
    return BacktestResult(compute=c_max, predicted=predicted, observed=observed,
                          rel_error=abs(predicted - observed) / observed, fit=fit,
                          n_train=int(train.sum()))
