"""L(N, D) = E + A / N^alpha + B / D^beta when a sweep varies both model size and tokens, and
the compute-optimal allocation it implies (Hoffmann et al. 2022, approach 3; same robust
fitting as L(C) in scaling.py). N is parameters, D tokens, L nats/token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult, nnls

from spiralsearch.analysis.fitting import (
    ALPHA_BOUNDS,
    MAX_EXP,
    best_start,
    bootstrap_refits,
    clean,
    e_upper,
    huber_loss,
    jsonable,
    one_blas_thread,
    percentile_ci,
)


@dataclass
class NDFit:
    """L(N, D) = E + A / N^alpha + B / D^beta; N parameters, D tokens, L in nats/token."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    ci: dict[str, tuple[float, float]]  # 95% bootstrap percentile intervals; {} without
    residuals: np.ndarray  # log L_pred - log L_obs at each point used, in input order
    n_points: int
    loss_value: float  # final objective: summed Huber(delta) of the log residuals
    converged: bool
    huber_delta: float = 1e-3
    params_ref: float = 1.0  # N and D are divided by these geometric means while fitting
    tokens_ref: float = 1.0
    n_boot: int = 0

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """Predicted loss (nats/token) for N parameters trained on D tokens."""
        logn, logd = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        return (self.E + np.exp(math.log(self.A) - self.alpha * logn)
                + np.exp(math.log(self.B) - self.beta * logd))

    def compute_optimal(
        self, C: np.ndarray | float, flops_per_param_token: float = 6.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt parameters, D_opt tokens) minimising L at training compute C (FLOPs), with
        C = k * N * D, k = flops_per_param_token.

        Closed form (Hoffmann et al. 2022, eq. 4): N_opt = G (C/k)^(beta/(alpha+beta)),
        D_opt = (C/k) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)); done in logs so
        large C does not overflow.
        """
        s = self.alpha + self.beta
        log_g = (math.log(self.alpha * self.A) - math.log(self.beta * self.B)) / s
        log_nd = np.log(np.asarray(C, float) / flops_per_param_token)
        log_n = log_g + self.beta / s * log_nd
        return np.exp(log_n), np.exp(log_nd - log_n)

    def to_dict(self) -> dict:
        """JSON-ready dict (fitting.jsonable: an infinity as "inf", nan as None)."""
        return jsonable({
            "E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta,
            "ci": self.ci, "n_points": self.n_points, "loss_value": self.loss_value,
            "converged": self.converged, "huber_delta": self.huber_delta,
            "params_ref": self.params_ref, "tokens_ref": self.tokens_ref,
            "n_boot": self.n_boot,
            "residuals": self.residuals,
        })


def _nd_objective(theta, logn, logd, logl, delta):
    """Huber loss and gradient for theta = (E, log A', alpha, log B', beta) with
    L = E + A' n^-alpha + B' d^-beta on normalised n, d."""
    E, a, alpha, b, beta = theta
    P = np.exp(np.clip(a - alpha * logn, -MAX_EXP, MAX_EXP))
    Q = np.exp(np.clip(b - beta * logd, -MAX_EXP, MAX_EXP))
    Lp = E + P + Q
    f, g = huber_loss(np.log(Lp) - logl, delta)
    gE = g / Lp
    gP, gQ = gE * P, gE * Q
    return f, np.array([gE.sum(), gP.sum(), -(gP * logn).sum(), gQ.sum(), -(gQ * logd).sum()])


def _nd_grid(logn: np.ndarray, logd: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """5 alphas x 5 betas x 5 E levels = 125 starts; for each, A' and B' come from a
    non-negative least-squares fit of L - E on the two power-law columns."""
    top = e_upper(loss)
    exps = (0.1, 0.2, 0.35, 0.55, 0.9)
    starts = []
    for alpha in exps:
        for beta in exps:
            cols = np.column_stack([np.exp(-alpha * logn), np.exp(-beta * logd)])
            for frac in (0.0, 0.4, 0.7, 0.85, 0.95):
                E = frac * top
                coef, _ = nnls(cols, loss - E)
                # nnls may zero a term; keep it alive at a small share of the gap
                coef = np.maximum(coef, 1e-3 * np.mean(loss - E))
                starts.append((E, math.log(coef[0]), alpha, math.log(coef[1]), beta))
    return np.array(starts)


def _fit_nd_theta(logn, logd, loss, delta, warm=None) -> OptimizeResult:
    logl = np.log(loss)

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        return _nd_objective(t, logn, logd, logl, delta)

    bounds = [(0.0, e_upper(loss)), (None, None), ALPHA_BOUNDS,
              (None, None), ALPHA_BOUNDS]
    return best_start(objective, _nd_grid(logn, logd, loss), bounds, warm)


def _nd_params(theta: np.ndarray, n_ref: float, d_ref: float) -> tuple[float, ...]:
    E, a, alpha, b, beta = theta
    return (float(E), math.exp(a + alpha * math.log(n_ref)), float(alpha),
            math.exp(b + beta * math.log(d_ref)), float(beta))


@one_blas_thread
def fit_nd(
    params: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    huber_delta: float = 1e-3,
) -> NDFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to loss (nats/token) against N parameters
    and D training tokens.

    Same machinery as `fit_power_law`: Huber on log residuals, L-BFGS-B from 125 grid starts
    over (alpha, beta, E), 0 <= E < min observed loss, non-finite losses dropped, optional
    bootstrap percentile intervals for E, A, alpha, B, beta. Raises ValueError with fewer
    than 3 finite-loss points.
    """
    params, tokens, loss = (np.asarray(v, float).ravel() for v in (params, tokens, loss))
    if not params.shape == tokens.shape == loss.shape:
        raise ValueError(f"params, tokens and loss differ in length: "
                         f"{params.size}, {tokens.size}, {loss.size}")
    keep = np.isfinite(loss)
    tokens = tokens[keep]
    params, loss = clean(params[keep], loss[keep], "params")
    if np.any(~np.isfinite(tokens) | (tokens <= 0)):
        raise ValueError("tokens must be finite and > 0 wherever the loss is finite")
    n_ref, d_ref = (float(np.exp(np.mean(np.log(v)))) for v in (params, tokens))
    logn, logd = np.log(params / n_ref), np.log(tokens / d_ref)
    res = _fit_nd_theta(logn, logd, loss, huber_delta)
    E, A, alpha, B, beta = _nd_params(res.x, n_ref, d_ref)
    fit = NDFit(E=E, A=A, alpha=alpha, B=B, beta=beta, ci={}, residuals=np.empty(0),
                n_points=loss.size, loss_value=float(res.fun), converged=bool(res.success),
                huber_delta=huber_delta, params_ref=n_ref, tokens_ref=d_ref)
    fit.residuals = np.log(fit.predict(params, tokens)) - np.log(loss)
    if bootstrap > 0:
        def refit(idx: np.ndarray) -> np.ndarray:
            r = _fit_nd_theta(logn[idx], logd[idx], loss[idx], huber_delta, warm=res.x)
            return np.array(_nd_params(r.x, n_ref, d_ref))

        # a (N, D) pair is the unit that must vary, so count distinct pairs per draw
        pairs = np.unique(np.column_stack([params, tokens]), axis=0, return_inverse=True)[1]
        samples = bootstrap_refits(bootstrap, seed, pairs.ravel(), refit)
        names = ("E", "A", "alpha", "B", "beta")
        fit.ci = {k: percentile_ci(samples[:, i]) for i, k in enumerate(names)}
        fit.n_boot = bootstrap
    return fit
