"""The study analysis (analysis/study.py, vp.py): laws recovered by variable projection,
refusals with reasons, bounds as bounds, intervals that redraw replicates and cover the truth,
multipliers and the conclusion sentence."""

import math

import numpy as np
import pandas as pd
import pytest

from spiralsearch.analysis import vp
from spiralsearch.analysis.fits import fit_rows_text, param_text, rows_of, study
from spiralsearch.analysis.study import analyse

BUDGETS = np.geomspace(1e11, 3e12, 6)


def frontier_study(rng, *, sigma=0.01, R=3, budgets=BUDGETS, E=1.8, alpha=0.3, A=1397.0,
                   ratios=(("x", 1.0), ("y", 1.2))) -> pd.DataFrame:
    """Trials of groups whose frontier is E + A r C^-alpha (one size per budget), R
    replicates each with N(0, sigma) noise; `selected` as a sweep with replicates marks it."""
    rows = []
    for g, ratio in ratios:
        for b in budgets:
            for r in range(R):
                loss = E + A * ratio * b ** -alpha + rng.normal(0, sigma)
                rows.append(dict(group=g, status="complete", final_test_loss=loss,
                                 final_val_loss=loss, train_flops=b, budget_target=b,
                                 size_index=None, selected=True, replicate=r,
                                 params_non_embedding=1e5, params_unrolled=1e5, tokens=b / 6e5,
                                 trial_id=f"{g}-{b:.3g}-{r}"))
    return pd.DataFrame(rows)


def chinchilla_study(rng, *, sizes=5, budgets=BUDGETS, sigma=0.0, R=2, centre=1.0,
                     E=1.7, A=400.0, a=0.34, B=1000.0, b=0.28) -> pd.DataFrame:
    """Trials on L(N, D) = E + A N^-a + B D^-b, D = C / 6N, with `sizes` sizes per budget
    log-spaced over a factor 16 around centre x the true optimum."""
    G = (a * A / (b * B)) ** (1 / (a + b))
    rows = []
    for c in budgets:
        n_opt = G * (c / 6) ** (b / (a + b))
        for i, n in enumerate(centre * n_opt * np.geomspace(0.25, 4, sizes)):
            d = c / (6 * n)
            for r in range(R):
                loss = E + A * n ** -a + B * d ** -b + rng.normal(0, sigma)
                rows.append(dict(group="g", status="complete", final_test_loss=loss,
                                 final_val_loss=loss, train_flops=c, budget_target=c,
                                 size_index=i, selected=True, replicate=r,
                                 params_non_embedding=n, params_unrolled=n, tokens=d,
                                 trial_id=f"{c:.3g}-{i}-{r}"))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- vp


def test_variable_projection_recovers_every_law_exactly():
    C = np.geomspace(1e11, 3e12, 6)
    law = vp.power_law(C, 1.5 + 300 * C ** -0.25)
    assert (law.E, law.A, law.alpha) == pytest.approx((1.5, 300, 0.25), rel=1e-6)
    assert law.at_bound == []
    fixed = vp.power_law(C, 1.5 + 300 * C ** -0.25, E=1.5)
    assert (fixed.A, fixed.alpha) == pytest.approx((300, 0.25), rel=1e-6) and fixed.E_fixed
    laws, E = vp.shared_E([(C, 1.5 + 300 * C ** -0.25, None), (C, 1.5 + 200 * C ** -0.3, None)])
    assert E == pytest.approx(1.5, rel=1e-5)
    assert [(f.A, f.alpha) for f in laws] == [pytest.approx((300, 0.25), rel=1e-4),
                                              pytest.approx((200, 0.3), rel=1e-4)]
    N = np.repeat(np.geomspace(1e4, 1e6, 6), 5)
    D = np.tile(np.geomspace(1e6, 1e8, 5), 6)
    nd = vp.power_law_nd(N, D, 1.7 + 400 * N ** -0.34 + 1000 * D ** -0.28)
    assert (nd.E, nd.A, nd.alpha, nd.B, nd.beta) == pytest.approx(
        (1.7, 400, 0.34, 1000, 0.28), rel=1e-4)
    x = np.log(np.geomspace(1e4, 1e5, 5))
    p = vp.parabola(x, 2 + (x - 10.0) ** 2)
    assert p.x_opt == pytest.approx(10.0) and not p.edge
    assert vp.parabola(x, 2 + (x - 13.0) ** 2).edge  # vertex outside the sizes: extrapolated
    assert vp.parabola(x, 2 - (x - 10.0) ** 2).edge  # no minimum at all


def test_a_law_on_its_bound_is_shown_as_a_bound():
    C = np.geomspace(1e11, 3e12, 6)
    law = vp.power_law(C, 300 * C ** -0.25)  # no floor: E sits on 0
    assert "E=0" in law.at_bound
    row = dict(E=law.E, A=law.A, alpha=law.alpha, at_bound=law.at_bound, ci={})
    assert param_text(row, "E") == "0 (at bound)"
    flat = vp.power_law(C, 2.0 + 1e-6 * np.log(C))  # rises: no decay to fit
    assert any(b.startswith("alpha=") or b == "E=min loss" for b in flat.at_bound)
    row = dict(E=1.82, at_bound=["E=min loss"])
    assert param_text(row, "E") == "≤ 1.82 (at bound)"


def test_an_interval_open_to_infinity_prints_inf_not_na():
    """A multiplier whose upper bound is out of reach (some draws never get there)."""
    rows = [dict(group="y", n_trials=1, n_points=5, baseline="y"),
            dict(group="x", n_trials=1, n_points=5, baseline="y", multiplier=2.91,
                 multiplier_ci=[1.46, math.inf])]
    _, cells = fit_rows_text(rows)
    assert cells[1][7] == "2.91 [1.46, inf]"


def test_a_noiseless_backtest_is_inside_its_zero_width_interval():
    """Noiseless replicates: every draw predicts the same loss, the interval has zero width
    and the observed loss differs from it in its last digits only: inside, not outside."""
    st = analyse(frontier_study(np.random.default_rng(0), sigma=0.0), baseline="y",
                 bootstrap=20)
    bt = st.groups["x"].backtest
    assert bt["rel_error"] < 1e-6 and bt["ci"][1] - bt["ci"][0] < 1e-9 and bt["inside"]
    _, cells = fit_rows_text(rows_of(st))
    assert cells[0][8] == "<0.1% (inside interval)"


# ----------------------------------------------------------------------------- refusals


def test_under_determined_fits_are_refused_with_the_reason():
    rng = np.random.default_rng(0)
    st = analyse(frontier_study(rng, budgets=BUDGETS[:4]), baseline="y", bootstrap=20)
    f = st.groups["x"].frontier
    assert f["refused"] == "4 budget(s); L(C) = E + A·C^-alpha needs >= 5 (its parameters + 2)"
    assert "E" not in f  # refused, never silently replaced by another fit
    assert st.groups["x"].backtest["refused"].startswith("held out the largest budget")
    assert st.conclusion == [f"x vs y: not compared ({f['refused']})"]
    # five budgets: the frontier fits, the backtest (four left) is refused
    st = analyse(frontier_study(rng, budgets=BUDGETS[:5]), baseline="y", bootstrap=0)
    assert "E" in st.groups["x"].frontier and "refused" in st.groups["x"].backtest
    # one size per budget: no parabola, no N*(C), no L(N, D)
    g = st.groups["x"]
    assert all(e["refused"].startswith("1 size(s); a parabola needs >= 5") for e in g.isoflop)
    assert g.optimal_size["refused"].startswith("no budget has an IsoFLOP parabola")
    assert g.nd["refused"].startswith("5 cell(s) with 1 size(s)")
    # with E stated, 4 budgets are enough
    st = analyse(frontier_study(rng, budgets=BUDGETS[:4]), bootstrap=0, E=1.8)
    assert st.groups["x"].frontier["E"] == 1.8 and st.groups["x"].frontier["E_fixed"]


def test_without_replicates_intervals_are_refused():
    df = frontier_study(np.random.default_rng(1), R=1)
    st = analyse(df, baseline="y", bootstrap=50)
    assert st.bootstrap["n"] == 0 and "nothing honest to resample" in st.bootstrap["refused"]
    assert st.groups["x"].frontier["ci"] == {}
    assert st.conclusion[0].startswith("inconclusive: x reaches y's loss at 3e+12 FLOPs with ")
    assert "no interval" in st.conclusion[0]


# ----------------------------------------------------------------------------- intervals


@pytest.mark.slow
def test_intervals_cover_the_truth_in_synthetic_studies():
    """100 studies drawn from known laws with replicate noise (3 replicates, sigma 0.01
    nats, 6 budgets over 1.5 decades): the 95% intervals of alpha and of the multiplier at
    the largest budget hold the truth in >= 90 of them."""
    truth = 1.2 ** (-1 / 0.3)  # x's compute to reach y's loss, as a fraction of y's
    rng = np.random.default_rng(1)
    alpha_in = mult_in = 0
    for i in range(100):
        st = analyse(frontier_study(rng), baseline="y", bootstrap=100, seed=i)
        lo, hi = st.groups["x"].frontier["ci"]["alpha"]
        alpha_in += lo <= 0.3 <= hi
        lo, hi = st.summary[0]["ci"]
        mult_in += lo <= truth <= hi
    assert alpha_in >= 90 and mult_in >= 90, (alpha_in, mult_in)


def test_the_bootstrap_redraws_replicates_and_the_whole_pipeline():
    df = frontier_study(np.random.default_rng(2))
    st = analyse(df, baseline="y", bootstrap=60, seed=3)
    assert st.bootstrap["n"] == 60 and "replicates" in st.bootstrap["resamples"]
    draws = st.groups["x"].frontier_draws
    assert draws.shape == (60, 3) and np.unique(draws[:, 2]).size > 50  # distinct refits
    lo, hi = st.groups["x"].frontier["ci"]["alpha"]
    assert lo < st.groups["x"].frontier["alpha"] < hi
    # seeded: the same draws give the same intervals, whatever order the rows come in and
    # whatever the trials are called (a results file re-keyed by a newer version)
    shuffled = df.sample(frac=1.0, random_state=7).assign(
        trial_id=lambda d: [f"renamed-{i}" for i in range(len(d))])
    for same in (df, shuffled):
        again = analyse(same, baseline="y", bootstrap=60, seed=3)
        assert again.groups["x"].frontier["ci"] == st.groups["x"].frontier["ci"]
        assert again.multipliers == st.multipliers
    # more replicate noise, wider intervals
    noisy = analyse(frontier_study(np.random.default_rng(2), sigma=0.03), baseline="y",
                    bootstrap=60, seed=3)
    width = np.diff(noisy.groups["x"].frontier["ci"]["alpha"])[0]
    assert width > np.diff(st.groups["x"].frontier["ci"]["alpha"])[0]


# ----------------------------------------------------------------------------- IsoFLOP


def test_isoflop_parabolas_find_the_compute_optimal_size():
    a, b = 0.34, 0.28
    st = analyse(chinchilla_study(np.random.default_rng(0)), bootstrap=0)
    g = st.groups["g"]
    G = (a * 400 / (b * 1000)) ** (1 / (a + b))
    for e in g.isoflop:
        true = G * (e["budget"] / 6) ** (b / (a + b))
        assert not e["edge"] and e["params_opt"] == pytest.approx(true, rel=0.15)
        assert len(e["points"]) == 5
    assert g.optimal_size["a"] == pytest.approx(b / (a + b), abs=0.03)
    assert g.nd["alpha"] == pytest.approx(a, rel=1e-3) and g.nd["beta"] == pytest.approx(b,
                                                                                          rel=1e-3)
    # a grid that misses the optimum flags it at the edge, and N*(C) then refuses
    off = analyse(chinchilla_study(np.random.default_rng(0), centre=30.0), bootstrap=0)
    assert all(e["edge"] for e in off.groups["g"].isoflop)
    assert off.groups["g"].optimal_size["refused"].startswith("0 budget(s) with an optimum")


# ----------------------------------------------------------------------------- comparisons


def test_the_conclusion_states_the_multiplier_or_inconclusive():
    rng = np.random.default_rng(4)
    st = analyse(frontier_study(rng, ratios=(("y", 1.2), ("x", 1.0))), baseline="y",
                 bootstrap=100)
    (s,) = st.summary
    assert s["group"] == "x" and s["baseline"] == "y" and s["ci"][1] < 1
    assert st.conclusion[0] == (f"x reaches y's loss at 3e+12 FLOPs with {s['multiplier']:.3g}x "
                                f"[{s['ci'][0]:.3g}, {s['ci'][1]:.3g}] of the compute")
    curve = [m for m in st.multipliers if m["group"] == "x"]
    assert len(curve) == 12 and all(m["ci"] for m in curve)
    same = analyse(frontier_study(rng, ratios=(("y", 1.0), ("x", 1.0))), baseline="y",
                   bootstrap=100)
    assert same.conclusion[0].startswith("inconclusive: x reaches y's loss")
    assert same.conclusion[0].endswith("the interval contains 1")
    with pytest.raises(ValueError, match="--baseline 'z': no such group"):
        analyse(frontier_study(rng), baseline="z", bootstrap=0)


def test_a_loss_below_the_groups_floor_is_not_a_multiplier():
    """x's fitted floor E lies above y's loss at the largest budget: x never gets there, and
    the sentence says so instead of printing an 'infx' multiplier."""
    rng = np.random.default_rng(5)
    trials = pd.concat([frontier_study(rng, ratios=(("y", 1.0),)),
                        frontier_study(rng, E=2.5, ratios=(("x", 1.0),))])
    st = analyse(trials, baseline="y", bootstrap=50)
    (s,) = st.summary
    assert math.isinf(s["multiplier"])
    assert st.conclusion == ["x does not reach y's loss at 3e+12 FLOPs on its fitted frontier "
                             "(the loss is at or below its fitted E): the compute multiplier "
                             "is unbounded, not a number"]


def test_shared_E_fits_one_floor_for_every_group():
    df = frontier_study(np.random.default_rng(5), sigma=0.002)
    st = analyse(df, baseline="y", bootstrap=0, shared_E=True)
    Es = {g.frontier["E"] for g in st.groups.values()}
    assert len(Es) == 1 and Es.pop() == pytest.approx(1.8, abs=0.05)


def test_fit_json_carries_every_view(tmp_path):
    df = chinchilla_study(np.random.default_rng(0), sigma=0.002)
    df = pd.concat([df, df.assign(group="h", trial_id=df["trial_id"] + "h",
                                  final_test_loss=df["final_test_loss"] * 1.01)])
    df = df.rename(columns={"group": "group_name"}).assign(family="spiral", spec="4")
    st = study(df, bootstrap=20)
    d = st.to_dict()
    assert set(d) == {"loss", "by", "baseline", "bootstrap", "groups", "multipliers",
                      "summary", "conclusion"}
    g = d["groups"]["g"]
    assert {"E", "A", "alpha", "ci", "at_bound"} <= set(g["frontier"])
    assert {"budget", "params_opt", "loss_opt", "ci", "edge"} <= set(g["isoflop"][0])
    assert {"E", "A", "alpha", "B", "beta", "ci"} <= set(g["nd"])
    assert {"group", "baseline", "loss", "multiplier", "ci"} <= set(d["multipliers"][0])
    assert isinstance(d["conclusion"], list) and d["conclusion"]
    import json

    json.dumps(d, allow_nan=False)  # strict JSON
    cols, cells = fit_rows_text(rows_of(st))
    assert cols[7] == "compute x of g" and cells[0][7] == "baseline"
    assert not math.isnan(rows_of(st)[1]["multiplier"])


def test_a_nearly_flat_parabola_is_flagged_not_overflowed():
    """At one budget the losses fall almost linearly in log N (a vertex e^(5e10) away): the
    optimum is an extrapolated edge, the advice says the grid is far off, nothing raises
    (the mini study's bootstrap once hit math.exp's OverflowError here)."""
    rng = np.random.default_rng(3)
    trials = chinchilla_study(rng, sigma=0.0, R=2)
    last = trials["budget_target"] == trials["budget_target"].max()
    x = np.log(trials.loc[last, "params_non_embedding"])
    flat = 3.0 - 0.1 * x + 1e-12 * x**2
    trials.loc[last, "final_test_loss"] = flat
    st = analyse(trials, by="group", bootstrap=0)
    (edge,) = [e for e in st.groups["g"].isoflop if e["budget"] == trials["budget_target"].max()]
    assert edge["edge"] and "far more than the grid spans" in edge["advice"]
    assert "refused" not in st.groups["g"].optimal_size  # the other budgets still give N*(C)
