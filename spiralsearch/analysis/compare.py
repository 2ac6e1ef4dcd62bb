"""Compute multipliers and the conclusion of a study (docs/design.md §6.3): how many times a
baseline group's compute another group needs to reach a loss, as a curve over the losses both
reached and as one number at their largest common budget, with bootstrap intervals, and one
sentence per comparison that says "inconclusive" when its interval allows it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from spiralsearch.analysis import vp

if TYPE_CHECKING:
    from spiralsearch.analysis.views import Layout, Pass

LEVEL = 0.95


def _multiplier(x: vp.PowerLaw, y: vp.PowerLaw, loss: np.ndarray) -> np.ndarray:
    """C_X(loss) / C_Y(loss): how many times Y's compute X needs to reach `loss`."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.asarray(x.compute_for_loss(loss), float) / np.asarray(
            y.compute_for_loss(loss), float)


def _loss_range(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float] | None:
    """The losses both groups' frontiers reached (nats/token)."""
    lo, hi = max(lx.min(), ly.min()), min(lx.max(), ly.max())
    return (float(lo), float(hi)) if lo < hi else None


def _ci(samples) -> list[float] | None:
    """95% percentile interval of bootstrap samples (nan dropped; None with fewer than 10;
    inf, a target out of reach in a draw, sorts to the ends as it should)."""
    s = np.asarray(samples, float)
    s = s[~np.isnan(s)]
    if s.size < 10:
        return None
    lo, hi = np.quantile(s, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="inverted_cdf")
    return [float(lo), float(hi)]


def _within(x: float, ci: list[float], rtol: float = 1e-9) -> bool:
    """Whether x lies in the interval, up to float rounding (noiseless replicates give an
    interval of zero width that the observed value misses only in its last digits)."""
    slack = rtol * max(abs(x), abs(ci[0]), abs(ci[1]))
    return ci[0] - slack <= x <= ci[1] + slack


def _compare(lay: Layout, names: list, baseline, means: np.ndarray, point: Pass,
             draws: list[Pass], n_curve: int,
             boot: dict) -> tuple[list[dict], list[dict], list[str]]:
    curve, summary, conclusion = [], [], []
    y = point.frontier.get(baseline)
    for name in names:
        if name == baseline:
            continue
        x = point.frontier[name]
        if isinstance(x, str) or isinstance(y, str):
            why = x if isinstance(x, str) else f"{baseline}: {y}"
            summary.append(dict(group=name, baseline=baseline, refused=why))
            conclusion.append(f"{name} vs {baseline}: not compared ({why})")
            continue
        px, py = point.points[name], point.points[baseline]
        ok = [d for d in draws if not isinstance(d.frontier[name], str)
              and not isinstance(d.frontier[baseline], str)]
        rng_l = _loss_range(means[px], means[py])
        if rng_l is not None:
            grid = np.linspace(*rng_l, n_curve)
            m = _multiplier(x, y, grid)
            bands = np.array([_multiplier(d.frontier[name], d.frontier[baseline], grid)
                              for d in ok]) if ok else np.empty((0, n_curve))
            for j, ell in enumerate(grid):
                curve.append(dict(group=name, baseline=baseline, loss=float(ell),
                                  multiplier=float(m[j]),
                                  ci=_ci(bands[:, j]) if len(bands) else None))
        common = set(lay.budget[px]) & set(lay.budget[py])
        c_star = max(common) if common else float(lay.budget[py].max())
        C = float(lay.C[py][lay.budget[py] == c_star][0])
        target = float(y.predict(C))
        mult = float(_multiplier(x, y, target))
        samples = [float(_multiplier(d.frontier[name], d.frontier[baseline],
                                     d.frontier[baseline].predict(C))) for d in ok]
        ci = _ci(samples)
        summary.append(dict(group=name, baseline=baseline, budget=c_star, C=C, loss=target,
                            multiplier=mult, ci=ci))
        conclusion.append(_sentence(name, baseline, C, mult, ci, boot))
    return curve, summary, conclusion


def _sentence(name, baseline, C: float, mult: float, ci: list[float] | None,
              boot: dict) -> str:
    """One comparison in numbers, or why it is not a conclusion."""
    at = f"{baseline}'s loss at {C:.3g} FLOPs"
    if not math.isfinite(mult):  # the target is at or below X's fitted floor E
        return (f"{name} does not reach {at} on its fitted frontier (the loss is at or "
                f"below its fitted E): the compute multiplier is unbounded, not a number")
    if ci is None:
        why = boot.get("refused", "too few bootstrap draws gave a multiplier")
        return (f"inconclusive: {name} reaches {at} with {mult:.3g}x the compute, but with "
                f"no interval ({why})")
    rng = f"{mult:.3g}x [{ci[0]:.3g}, {ci[1]:.3g}]"
    if ci[0] <= 1 <= ci[1]:
        return f"inconclusive: {name} reaches {at} with {rng} of the compute; the interval " \
               f"contains 1"
    return f"{name} reaches {at} with {rng} of the compute"
