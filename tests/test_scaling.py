"""Scaling-law fits: recovery of known laws from noisy synthetic data, frontier geometry,
compute multipliers, backtests and error cases. Seeds are fixed, so every test is
deterministic."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from spiralsearch.analysis.scaling import (
    backtest,
    best_per_budget,
    compare,
    fit_nd,
    fit_power_law,
    frontier,
)

# L(C) = E + A C^-alpha: 4.5 nats/token at 1e13 FLOPs falling to ~1.88 at 1e17.
E_TRUE, ALPHA_TRUE = 1.7, 0.3
A_TRUE = 2.8 * 10 ** (13 * ALPHA_TRUE)
BUDGETS = np.logspace(13, 17, 9)  # half-decade compute budgets, FLOPs


def law(C, k=1.0):
    """True loss; family with multiplier k needs k x the compute: L_k(C) = L(C / k)."""
    return E_TRUE + A_TRUE * (np.asarray(C) / k) ** -ALPHA_TRUE


def noisy(seed, noise=0.01, per_budget=4, k=1.0, budgets=BUDGETS):
    """per_budget trials per budget with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    C = np.repeat(budgets, per_budget)
    return C, law(C, k) * np.exp(rng.normal(0.0, noise, C.size))


def with_bad_runs(C, L):
    """Two finite-but-diverged runs far above the curve and one NaN run."""
    return np.append(C, [1e14, 1e16, 1e15]), np.append(L, [10.0, 10.0, np.nan])


# ----------------------------------------------------------------------------- frontier


def test_frontier_is_lower_hull_up_to_the_best_point():
    pts = [  # (compute FLOPs, loss), deliberately out of compute order
        (1e15, 2.5),  # 0: hull
        (1e13, 4.0),  # 1: hull, cheapest
        (10**14.5, 2.9),  # 2: Pareto-optimal but above the hull (chord there is 2.75)
        (1e14, 3.0),  # 3: hull
        (1e14, 3.5),  # 4: same budget as 3, worse
        (1e17, 2.1),  # 5: hull, best loss
        (10**17.5, 2.15),  # 6: lower-hull vertex, but beaten by the cheaper point 5
        (1e16, 2.2),  # 7: hull
        (1e12, np.nan),  # 8: diverged; would be the cheapest hull point otherwise
        (1e16, 5.0),  # 9: far above
        (1e18, np.inf),  # 10: diverged
    ]
    C, L = (np.array(v) for v in zip(*pts, strict=True))
    np.testing.assert_array_equal(frontier(C, L), [1, 3, 0, 7, 5])


def test_frontier_degenerate_inputs():
    assert frontier([], []).size == 0
    assert frontier([1e15, 1e16], [np.nan, np.nan]).size == 0
    np.testing.assert_array_equal(frontier([1e15], [3.0]), [0])
    # a cheaper point that is also better leaves only itself
    np.testing.assert_array_equal(frontier([1e16, 1e15], [3.0, 2.0]), [1])
    # a straight line in (log C, loss) has only its end points as hull vertices
    np.testing.assert_array_equal(frontier([1e13, 1e14, 1e15], [3.0, 2.5, 2.0]), [0, 2])


def test_best_per_budget():
    budget = np.array([2, 1, 2, 1, 3, 3])
    loss = np.array([2.0, 3.0, 1.5, np.nan, np.nan, np.inf])
    np.testing.assert_array_equal(best_per_budget(budget, loss), [1, 2])


# ----------------------------------------------------------------------------- L(C)


@pytest.mark.slow
def test_fit_recovers_law_despite_diverged_runs():
    C, L = with_bad_runs(*noisy(seed=0))
    fit = fit_power_law(C, L, bootstrap=100, seed=0)
    assert fit.converged
    assert fit.n_points == C.size - 1  # only the NaN is dropped; the 10s are kept
    assert fit.E == pytest.approx(E_TRUE, rel=0.05)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=0.05)
    for name, true in (("E", E_TRUE), ("A", A_TRUE), ("alpha", ALPHA_TRUE)):
        lo, hi = fit.ci[name]
        assert lo <= true <= hi, (name, fit.ci[name])
    # the two diverged runs stand out in the residuals instead of bending the curve
    assert np.sum(np.abs(fit.residuals) > 0.5) == 2
    json.dumps(fit.to_dict())


def test_small_huber_delta_is_what_resists_the_outliers():
    # Control for the test above: least squares (delta >> residuals) is dragged off.
    C, L = with_bad_runs(*noisy(seed=0))
    ls = fit_power_law(C, L, huber_delta=10.0)
    assert abs(ls.alpha / ALPHA_TRUE - 1) > 0.2


def test_fit_is_invariant_to_compute_scale():
    # The same curve shifted from 1e13..1e17 to 1e19..1e23 FLOPs (A rescaled to match):
    # conditioning must not depend on the magnitude of C.
    C, L = noisy(seed=1)
    small, big = fit_power_law(C, L), fit_power_law(C * 1e6, L)
    assert big.converged
    assert big.E == pytest.approx(small.E, rel=1e-4)
    assert big.alpha == pytest.approx(small.alpha, rel=1e-4)
    np.testing.assert_allclose(big.predict(C * 1e6), small.predict(C), rtol=1e-6)


def test_no_bootstrap_means_no_ci():
    fit = fit_power_law(*noisy(seed=2))
    assert fit.ci == {} and fit.n_boot == 0


# ----------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_recovers_compute_multiplier():
    k = 3.0  # family A is family B slowed down: it needs 3x the compute for any loss
    ca, la = noisy(seed=10, noise=0.005, k=k)
    cb, lb = noisy(seed=11, noise=0.005)
    fa, fb = fit_power_law(ca, la), fit_power_law(cb, lb)
    # Mid-range target: at B's largest budget A must extrapolate half a decade and the
    # multiplier is ~35x more sensitive to log-loss error (L/(L-E)/alpha), too noisy for 5%.
    res = compare(fa, fb, at_compute=1e15, compute_a=ca, loss_a=la, compute_b=cb,
                  loss_b=lb, bootstrap=60, seed=0)
    assert res.multiplier == pytest.approx(k, rel=0.05)
    assert res.ci[0] <= k <= res.ci[1]
    assert res.target_loss == pytest.approx(float(law(1e15)), rel=0.01)
    # a direct target loss gives the same number; the reverse comparison inverts it
    same = compare(fa, fb, at_loss=res.target_loss)
    assert same.multiplier == pytest.approx(res.multiplier, rel=1e-9)
    assert compare(fb, fa, at_loss=res.target_loss).multiplier == pytest.approx(
        1 / res.multiplier, rel=1e-9)
    json.dumps(res.to_dict())


def test_compare_defaults_to_b_largest_compute():
    fa, fb = fit_power_law(*noisy(seed=3, k=2.0)), fit_power_law(*noisy(seed=4))
    res = compare(fa, fb)
    assert res.at_compute == BUDGETS[-1]
    assert res.target_loss == pytest.approx(float(fb.predict(BUDGETS[-1])))
    assert res.ci is None


def test_compare_unreachable_target():
    fa, fb = fit_power_law(*noisy(seed=5)), fit_power_law(*noisy(seed=6))
    res = compare(fa, fb, at_loss=min(fa.E, fb.E) - 0.1)
    assert math.isnan(res.multiplier) and "below both" in res.note
    if fa.E > fb.E:
        fa, fb = fb, fa  # make A the family with the lower floor
    res = compare(fb, fa, at_loss=(fa.E + fb.E) / 2)
    assert res.multiplier == math.inf and "never reaches" in res.note
    # strict JSON has no inf: "never reaches" is written "inf", not null (unknown)
    assert res.to_dict()["multiplier"] == "inf"
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["multiplier"] == "inf"


def test_compare_argument_errors():
    fa = fit_power_law(*noisy(seed=7))
    with pytest.raises(ValueError, match="at most one"):
        compare(fa, fa, at_compute=1e15, at_loss=2.0)
    with pytest.raises(ValueError, match="raw data"):
        compare(fa, fa, bootstrap=10)


# ----------------------------------------------------------------------------- L(N, D)

ND_TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Chinchilla


def nd_grid(seed, noise=0.005):
    N, D = np.meshgrid(np.logspace(6.5, 10, 8), np.logspace(8.5, 12, 8))
    N, D = N.ravel(), D.ravel()
    t = ND_TRUE
    L = t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]
    return N, D, L * np.exp(np.random.default_rng(seed).normal(0.0, noise, N.size))


def test_fit_nd_recovers_law():
    N, D, L = nd_grid(seed=0)
    fit = fit_nd(np.append(N, 1e8), np.append(D, 1e10), np.append(L, np.nan))
    assert fit.converged and fit.n_points == N.size
    for name in ("E", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(ND_TRUE[name], rel=0.05), name
    json.dumps(fit.to_dict())


def test_fit_nd_bootstrap_ci():
    N, D, L = nd_grid(seed=1)
    fit = fit_nd(N, D, L, bootstrap=30, seed=0)
    assert set(fit.ci) == set(ND_TRUE)
    for name, (lo, hi) in fit.ci.items():
        assert lo <= ND_TRUE[name] <= hi, (name, fit.ci[name])


def test_compute_optimal_matches_numeric_minimum():
    fit = fit_nd(*nd_grid(seed=2))
    C, k = 1e21, 6.0
    n_opt, d_opt = fit.compute_optimal(C, flops_per_param_token=k)
    assert k * n_opt * d_opt == pytest.approx(C)
    num = minimize_scalar(lambda ln: fit.predict(np.exp(ln), C / k / np.exp(ln)),
                          bounds=(10, 40), method="bounded", options={"xatol": 1e-10})
    assert n_opt == pytest.approx(math.exp(num.x), rel=1e-4)
    # vectorised over C, and more compute means a bigger model and more tokens
    ns, ds = fit.compute_optimal(np.array([1e19, 1e21]))
    assert ns[1] > ns[0] and ds[1] > ds[0]


# ----------------------------------------------------------------------------- backtest


def test_backtest_on_clean_data():
    C, L = noisy(seed=0, noise=0.005)
    res = backtest(C, L)
    assert res.compute == BUDGETS[-1]
    assert res.n_train == C.size - 4  # the 4 trials at the largest budget are held out
    assert res.fit.compute_max < BUDGETS[-1]
    assert res.observed == L[C == BUDGETS[-1]].min()
    assert res.rel_error < 0.02
    json.dumps(res.to_dict())


# ----------------------------------------------------------------------------- errors


def test_too_few_points_raise():
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([1e13, 1e14, 1e15], [3.0, 2.5, np.nan])
    with pytest.raises(ValueError, match="at least 3"):
        fit_nd([1e7, 1e8], [1e9, 1e10], [3.0, 2.5])
    # three budgets, but only two of them below the largest
    with pytest.raises(ValueError, match="at least 3 finite-loss points below"):
        backtest([1e13, 1e14, 1e15, 1e15], [3.0, 2.5, 2.2, 2.1])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="compute must be finite and > 0"):
        fit_power_law([1e13, -1.0, 1e15, 1e16], [3.0, 2.5, 2.2, 2.1])
    with pytest.raises(ValueError, match="differ in length"):
        fit_power_law([1e13, 1e14], [3.0, 2.5, 2.2])


def test_compute_for_loss_inverts_predict():
    fit = fit_power_law(*noisy(seed=8))
    C = np.array([1e13, 1e15, 1e19])
    np.testing.assert_allclose(fit.compute_for_loss(fit.predict(C)), C, rtol=1e-9)
    assert fit.compute_for_loss(fit.E) == np.inf
