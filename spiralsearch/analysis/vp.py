"""Variable-projection fits (docs/design.md §6.2): the laws of a study, by weighted least
squares, fast enough to refit the whole pipeline thousands of times in a bootstrap.

For fixed exponents every law here is linear in its coefficients (E, A, B), so those are
solved exactly (bounded least squares) and only the exponents are searched: a log grid, then
a bounded 1-D (or Nelder–Mead 2-D) refinement. Open-Athena's comparison found this recovers
L(N, D) to ~1e-8 on noise-free data where 5-D L-BFGS-B erred by ~5% in alpha.

    law = power_law(C, L, w)          # L(C) = E + A C^-alpha; law.at_bound names pinned params
    law = power_law(C, L, w, E=1.7)   # E fixed (a stated value, or shared across groups)
    laws, E = shared_E([(C1, L1, w1), (C2, L2, w2)])   # one E, each group its own A, alpha
    nd = power_law_nd(N, D, L, w)     # L(N, D) = E + A N^-alpha + B D^-beta
    p = parabola(log N, L, w)         # an IsoFLOP curve: vertex, curvature, edge flag

Units: C training FLOPs, N parameters, D tokens, L nats/token. Weights are relative inverse
variances (a cell's replicate count). E is kept in [0, min L): a loss floor below every
observation. An estimate that lands on a bound is a bound, and `at_bound` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar

ALPHA_RANGE = (0.005, 3.0)  # exponents searched; an estimate at either end is a bound
_GRID = np.geomspace(*ALPHA_RANGE, 48)
_E_MARGIN = 1e-6
BOUND_TOL = 1e-4  # an E within this fraction of min loss of a bound is on the bound


def _ref(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x))))


def _solve_EA(basis: np.ndarray, L: np.ndarray, w: np.ndarray, E_hi: float,
              E: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, A, weighted SSE) of L ≈ E + A basis with 0 <= E <= E_hi and A >= 0 (E given: only
    A), for each row of `basis` (k x n: one row per exponent tried). A 2-variable convex QP
    with a box on E: the unconstrained optimum, or the optimum on the violated face."""
    basis = np.atleast_2d(basis)
    sw = w.sum()
    wb = w * basis

    def a_given(e: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, (wb * (L - e[:, None])).sum(1) / (wb * basis).sum(1))

    if E is None:
        bm, lm = wb.sum(1) / sw, (w * L).sum() / sw
        dev = basis - bm[:, None]
        var = (w * dev * dev).sum(1)
        A = np.where(var > 0, (w * dev * (L - lm)).sum(1) / np.where(var > 0, var, 1), 0.0)
        e = lm - A * bm
        bad = (e < 0) | (e > E_hi) | (A < 0)
        e = np.where(bad, np.clip(e, 0.0, E_hi), e)
        A = np.where(bad, a_given(e), A)
        e = np.where(bad & (A == 0), min(max(lm, 0.0), E_hi), e)
    else:
        e = np.full(basis.shape[0], float(E))
        A = a_given(e)
    r = L - e[:, None] - A[:, None] * basis
    return e, A, (w * r * r).sum(1)


@dataclass
class PowerLaw:
    """L(C) = E + A C^-alpha, C in FLOPs (or any positive x), L in nats/token."""

    E: float
    A: float
    alpha: float
    sse: float  # weighted sum of squared residuals
    n_points: int
    at_bound: list[str] = field(default_factory=list)  # "E=0", "E=min loss", "alpha=..."
    E_fixed: bool = False

    def predict(self, C: np.ndarray | float) -> np.ndarray:
        """Loss (nats/token) at compute C."""
        return self.E + self.A * np.asarray(C, float) ** -self.alpha

    def compute_for_loss(self, L: np.ndarray | float) -> np.ndarray:
        """Compute at which the law reaches loss L; inf where L <= E (never)."""
        gap = np.asarray(L, float) - self.E
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(gap > 0, (self.A / np.where(gap > 0, gap, 1.0)) ** (1 / self.alpha),
                            np.inf)


def _search(sse, stages: int = 5) -> float:
    """The exponent minimising sse (vectorised over exponents) in ALPHA_RANGE: a 48-point log
    grid, then zooms of 16 points on the best point's neighbours, then a parabolic vertex
    through the last three; ~1e-7 relative precision in ~0.3 ms."""
    lo, hi = np.log(ALPHA_RANGE)
    grid = np.linspace(lo, hi, 48)
    for _ in range(stages):
        f = sse(np.exp(grid))
        i = int(np.argmin(f))
        if i in (0, len(grid) - 1):  # on the range's end: a bound, not a minimum
            return float(np.exp(grid[i]))
        a, b = grid[i - 1], grid[i + 1]
        grid = np.linspace(a, b, 16)
    f = sse(np.exp(grid))
    i = min(max(int(np.argmin(f)), 1), len(grid) - 2)
    (x0, x1, _), (f0, f1, f2) = grid[i - 1:i + 2], f[i - 1:i + 2]
    den = (f0 - 2 * f1 + f2)
    x = x1 + 0.5 * (x1 - x0) * (f0 - f2) / den if den > 0 else x1
    return float(np.exp(x if sse(np.exp(np.array([x])))[0] <= f1 else x1))


def _check(x: np.ndarray, L: np.ndarray, w: np.ndarray | None) -> tuple:
    x, L = np.asarray(x, float), np.asarray(L, float)
    w = np.ones_like(L) if w is None else np.asarray(w, float)
    if x.shape != L.shape or w.shape != L.shape:
        raise ValueError("x, loss and weights must have the same length")
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(L))
            and np.all(L > 0) and np.all(w > 0)):
        raise ValueError("x and loss must be finite and > 0, weights > 0")
    return x, L, w


def power_law(C: np.ndarray, L: np.ndarray, w: np.ndarray | None = None, *,
              E: float | None = None) -> PowerLaw:
    """Weighted least-squares fit of L = E + A C^-alpha (E free in [0, min L), or fixed):
    (E, A) solved exactly for each alpha, alpha by a 48-point log grid over ALPHA_RANGE then
    bounded Brent in the best grid cell. At least 2 points (1 with E fixed); how many a
    fit needs to be worth stating is the caller's rule (analysis/study.py)."""
    C, L, w = _check(C, L, w)
    ref = _ref(C)
    x = C / ref
    E_hi = float(L.min() * (1 - _E_MARGIN))
    if E is not None and not 0 <= E < L.min():
        raise ValueError(f"E={E:g} must be in [0, min loss {L.min():.4g})")

    logx = np.log(x)

    def sse(alphas: np.ndarray) -> np.ndarray:
        return _solve_EA(np.exp(-alphas[:, None] * logx), L, w, E_hi, E)[2]

    alpha = _search(sse)
    e, a, s = (float(v[0]) for v in _solve_EA(np.exp(-alpha * logx), L, w, E_hi, E))
    bounds = []
    if E is None and e <= BOUND_TOL * L.min():
        bounds.append("E=0")
    if E is None and e >= E_hi - BOUND_TOL * L.min():
        bounds.append("E=min loss")
    if alpha <= ALPHA_RANGE[0] * 1.0001 or alpha >= ALPHA_RANGE[1] * 0.9999:
        bounds.append(f"alpha={alpha:.3g}")
    return PowerLaw(E=e, A=a * ref ** alpha, alpha=alpha, sse=s, n_points=L.size,
                    at_bound=bounds, E_fixed=E is not None)


def shared_E(data: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
             ) -> tuple[list[PowerLaw], float]:
    """One loss floor E for several groups (same data, same irreducible loss), each with its
    own A and alpha: E minimises the summed SSE of the groups' fixed-E fits (a log grid over
    [0, min loss), then bounded Brent)."""
    top = min(float(np.min(L)) for _, L, _ in data) * (1 - _E_MARGIN)

    def total(e: float) -> float:
        return sum(power_law(C, L, w, E=e).sse for C, L, w in data)

    grid = np.concatenate([[0.0], top * (1 - np.geomspace(1, 1e-3, 23))])
    f = np.array([total(e) for e in grid])
    i = int(np.argmin(f))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    e = float(minimize_scalar(total, bounds=(lo, hi), method="bounded").x)
    if total(grid[i]) < total(e):
        e = float(grid[i])
    laws = [power_law(C, L, w, E=e) for C, L, w in data]
    for law in laws:
        law.E_fixed = False
        if e <= BOUND_TOL * top:
            law.at_bound.append("E=0")
        if e >= top * (1 - BOUND_TOL):
            law.at_bound.append("E=min loss")
    return laws, e


@dataclass
class PowerLawND:
    """L(N, D) = E + A N^-alpha + B D^-beta (Hoffmann et al. 2022, approach 3)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    sse: float
    n_points: int
    at_bound: list[str] = field(default_factory=list)

    def predict(self, N, D) -> np.ndarray:
        """Loss (nats/token) of N parameters trained on D tokens."""
        return (self.E + self.A * np.asarray(N, float) ** -self.alpha
                + self.B * np.asarray(D, float) ** -self.beta)


def _nnls3(cols: np.ndarray, L: np.ndarray, sw: np.ndarray, E_hi: float):
    """(E, A, B, SSE) of L ≈ E + A c1 + B c2 with E in [0, E_hi], A, B >= 0 (weighted)."""
    from scipy.optimize import lsq_linear

    X = np.column_stack([np.ones_like(L), *cols]) * sw[:, None]
    res = lsq_linear(X, L * sw, bounds=([0, 0, 0], [E_hi, np.inf, np.inf]), method="bvls")
    return (*res.x, float(((X @ res.x - L * sw) ** 2).sum()))


def power_law_nd(N: np.ndarray, D: np.ndarray, L: np.ndarray,
                 w: np.ndarray | None = None) -> PowerLawND:
    """Weighted least-squares fit of L(N, D): (E, A, B) by bounded least squares for each
    (alpha, beta), the exponents by a 12 x 12 log grid then Nelder–Mead in log space."""
    N, L, w = _check(N, L, w)
    D = np.asarray(D, float)
    nref, dref = _ref(N), _ref(D)
    n, d, sw = N / nref, D / dref, np.sqrt(w)
    E_hi = float(L.min() * (1 - _E_MARGIN))

    def sse(t) -> float:
        a, b = np.exp(np.clip(t, *np.log(ALPHA_RANGE)))
        return _nnls3((n ** -a, d ** -b), L, sw, E_hi)[3]

    g = np.log(np.geomspace(0.02, 2.0, 12))
    best = min(((a, b) for a in g for b in g), key=sse)
    t = minimize(sse, np.array(best), method="Nelder-Mead",
                 options={"xatol": 1e-6, "fatol": 1e-14, "maxiter": 2000}).x
    a, b = np.exp(np.clip(t, *np.log(ALPHA_RANGE)))
    E, A, B, s = _nnls3((n ** -a, d ** -b), L, sw, E_hi)
    tol = BOUND_TOL * L.min()
    bounds = [name for name, v, lo, hi in (("E", E, 0, E_hi), ("A", A, 0, np.inf),
                                           ("B", B, 0, np.inf)) if v <= lo + tol or v >= hi - tol]
    bounds += [f"{k}={v:.3g}" for k, v in (("alpha", a), ("beta", b))
               if v <= ALPHA_RANGE[0] * 1.0001 or v >= ALPHA_RANGE[1] * 0.9999]
    return PowerLawND(E=float(E), A=float(A * nref ** a), alpha=float(a),
                      B=float(B * dref ** b), beta=float(b), sse=s, n_points=L.size,
                      at_bound=bounds)


@dataclass
class Parabola:
    """L ≈ c0 + c1 x + c2 x^2 over x = log N (an IsoFLOP curve at one budget)."""

    coef: tuple[float, float, float]
    x_min: float  # the sizes' range, log N
    x_max: float

    @property
    def convex(self) -> bool:
        return self.coef[2] > 0

    @property
    def x_opt(self) -> float:
        """The vertex (log N*); nan when the curve has no minimum."""
        return -self.coef[1] / (2 * self.coef[2]) if self.convex else math.nan

    @property
    def edge(self) -> bool:
        """Whether the optimum is not inside the sizes' range: extrapolated, or no minimum."""
        return not (self.convex and self.x_min < self.x_opt < self.x_max)

    def predict(self, x) -> np.ndarray:
        c0, c1, c2 = self.coef
        x = np.asarray(x, float)
        return c0 + c1 * x + c2 * x * x


def parabola(x: np.ndarray, L: np.ndarray, w: np.ndarray | None = None) -> Parabola:
    """Weighted least-squares parabola in x (log N); at least 3 distinct x."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    w = np.ones_like(L) if w is None else np.asarray(w, float)
    if np.unique(x).size < 3:
        raise ValueError("a parabola needs at least 3 distinct sizes")
    c2, c1, c0 = np.polyfit(x, L, 2, w=np.sqrt(w))
    return Parabola((float(c0), float(c1), float(c2)), float(x.min()), float(x.max()))
