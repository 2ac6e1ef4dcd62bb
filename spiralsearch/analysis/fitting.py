"""Robust multi-start fitting shared by the scaling laws (scaling.py, scaling_nd.py).

Huber loss on log-space residuals, L-BFGS-B from a grid of starts (best kept), bootstrap
resampling that keeps at least 3 distinct budgets per draw, and JSON-safe numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import OptimizeResult, minimize
from scipy.special import huber
from threadpoolctl import threadpool_limits  # ships with scikit-learn

MIN_POINTS = 3
ALPHA_BOUNDS = (1e-3, 5.0)  # exponents outside this are not scaling laws, and overflow
_E_MARGIN = 1e-9  # E <= (1 - margin) * min loss: strictly below, so log(L - E) stays finite
_N_BOOT_STARTS = 4  # grid starts tried per bootstrap refit, besides the point estimate
MAX_EXP = 200.0  # cap on exponents: wild line-search trial steps stay finite, not inf/nan
_LBFGS = {"maxiter": 1000, "ftol": 1e-11, "gtol": 1e-7}

def clean(x: np.ndarray, loss: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Drop diverged (non-finite loss) points; reject inputs no fit can use."""
    x, loss = np.asarray(x, float).ravel(), np.asarray(loss, float).ravel()
    if x.shape != loss.shape:
        raise ValueError(f"{name} and loss differ in length: {x.size} vs {loss.size}")
    keep = np.isfinite(loss)
    x, loss = x[keep], loss[keep]
    if np.any(~np.isfinite(x) | (x <= 0)):
        raise ValueError(f"{name} must be finite and > 0 wherever the loss is finite")
    if np.any(loss <= 0):
        raise ValueError("loss must be > 0 (nats/token) to fit in log space")
    if loss.size < MIN_POINTS:
        raise ValueError(
            f"need at least {MIN_POINTS} points with finite loss to fit, got {loss.size}"
        )
    return x, loss


def one_blas_thread(fn: Callable) -> Callable:
    """Run fn with BLAS on one thread. L-BFGS-B calls BLAS on 3-5 dimensional vectors, where
    OpenBLAS's thread hand-off costs far more than the work: on a busy machine a fit went
    from 0.3 s to 9 s with the default thread count."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def huber_loss(r: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of residuals r and its derivative with respect to each r."""
    return float(huber(delta, r).sum()), np.clip(r, -delta, delta)


def best_start(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    grid: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
    warm: np.ndarray | None = None,
) -> OptimizeResult:
    """L-BFGS-B from every grid start; the lowest final objective wins. With `warm` (a
    bootstrap refit near a known optimum), start only from it and the few grid points with
    the lowest objective: ~30x cheaper, and a bad warm start still has the grid to fall on."""
    starts = grid
    if warm is not None:
        lo = [-np.inf if b[0] is None else b[0] for b in bounds]
        hi = [np.inf if b[1] is None else b[1] for b in bounds]
        f = np.array([objective(x)[0] for x in grid])
        # a resample's min loss can sit below the old E, so pull warm back inside the box
        starts = np.vstack([np.clip(warm, lo, hi), grid[np.argsort(f)[:_N_BOOT_STARTS]]])
    best = None
    for x0 in starts:
        res = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options=_LBFGS)
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError("every L-BFGS-B start failed to produce a finite objective")
    return best


def e_upper(loss: np.ndarray) -> float:
    """Upper bound on E: strictly below the best observed loss."""
    return float(loss.min() * (1 - _E_MARGIN))


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """95% percentile interval ignoring nan; inverted_cdf picks sample values rather than
    interpolating, which would turn an inf sample at the edge into nan."""
    lo, hi = np.nanpercentile(samples, [2.5, 97.5], method="inverted_cdf")
    return float(lo), float(hi)


def draw(rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
    """Indices of one bootstrap resample (points with replacement). Draws covering fewer
    than 3 distinct `groups` values (e.g. compute budgets) cannot pin down a 3-parameter
    curve, so they are redrawn."""
    need = min(MIN_POINTS, np.unique(groups).size)
    while True:
        idx = rng.integers(0, groups.size, groups.size)
        if np.unique(groups[idx]).size >= need:
            return idx


def bootstrap_refits(
    n_boot: int, seed: int, groups: np.ndarray, refit: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Stack refit(idx) over n_boot resamples drawn by `draw`."""
    rng = np.random.default_rng(seed)
    return np.array([refit(draw(rng, groups)) for _ in range(n_boot)])


def jsonable(v: object) -> object:
    """Floats for strict JSON, which has no inf or nan: an infinity becomes the string
    "inf" or "-inf" (an interval open on that side, a group that never reaches a loss:
    a fact, not a missing value), nan becomes None (nothing to say)."""
    if isinstance(v, float | np.floating):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return float(v) if math.isfinite(v) else None
    if isinstance(v, tuple | list | np.ndarray):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v
