"""The report's figures (docs/design.md §6.4), drawn from one Study: the frontier per group,
IsoFLOP curves per budget, N*(C) and L*(C), the multiplier curve, loss vs recurrence ratio
and training curves (the probes' figure: probe_section.py). Each returns a plotly Figure; `pages`
also says which plots it left out, and why.

    pages, left_out = pages(study, trials, metrics)   # [Page(key, title, fig, note)], [str]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spiralsearch.analysis.fits import param_text
from spiralsearch.analysis.study import ISOFLOP_BIAS, LEVEL, Study

COLORS = {"plain": "#1f77b4", "looped": "#ff7f0e", "spiral": "#2ca02c"}
# for groups that are not (all) families: plotly's default qualitative palette, cycled
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
SPREAD = "bars: replicate min–max"  # what every error bar on a cell mean shows
LOG_Y = dict(type="buttons", direction="right", x=0.0, y=1.13, xanchor="left",
             buttons=[dict(label="loss: linear", method="relayout",
                           args=[{"yaxis.type": "linear"}]),
                      dict(label="loss: log (log-log)", method="relayout",
                           args=[{"yaxis.type": "log"}])])


@dataclass
class Page:
    """One plot of the report: `key` names its static file, `note` (HTML) sits below it."""

    key: str
    title: str
    fig: Any
    note: str = ""


def page_html(p: Page, h: str = "h2") -> str:
    """A plot as the page shows it: its heading, the figure (plotly.js loaded once by the
    page) and its note."""
    import html

    note = f"<p class='note'>{html.escape(p.note)}</p>" if p.note else ""
    return (f"<{h}>{html.escape(p.title)}</{h}>"
            + p.fig.to_html(full_html=False, include_plotlyjs=False, default_height="560px")
            + note)


def group_colors(names) -> dict[str, str]:
    """A colour per group: the family colours when every group is a family, else the
    palette in the groups' sorted order (cycling past ten groups)."""
    names = sorted({str(n) for n in names})
    if set(names) <= set(COLORS):
        return {n: COLORS[n] for n in names}
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def budget_colors(budgets) -> dict[float, str]:
    """One colour per budget, dark (small) to light (large), the same in every group."""
    from plotly.colors import sample_colorscale

    bs = sorted(set(budgets))
    at = [0.5] if len(bs) == 1 else [0.85 * i / (len(bs) - 1) for i in range(len(bs))]
    return dict(zip(bs, sample_colorscale("Viridis", at), strict=True))


# ----------------------------------------------------------------------------- hover


def _num(v, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not math.isfinite(f) else format(f, fmt)


def trial_hover(df: pd.DataFrame) -> list[str]:
    """Per trial: its id, learning rate (train_lr), seed (train_seed), size (size_index,
    non-embedding parameters), budget and loss; a column a file lacks reads n/a."""
    def col(name):
        return df[name] if name in df else pd.Series([None] * len(df), index=df.index)

    return [f"trial {tid}<br>lr {_num(lr, '.3g')}, seed {_num(seed, '.0f')}<br>size "
            f"{_num(size, '.0f')} ({_num(n, '.4g')} params)<br>budget {_num(b, '.3g')}, "
            f"{_num(c, '.3g')} FLOPs<br>loss {_num(loss, '.4f')}"
            for tid, lr, seed, size, n, b, c, loss in zip(
                col("trial_id"), col("train_lr"), col("train_seed"), col("size_index"),
                col("params_non_embedding"), col("budget_target"), col("train_flops"),
                col("loss"), strict=True)]


def _cell_hover(p: dict) -> str:
    ls = p["losses"]
    return (f"cell mean of {p['R']} replicate(s): {p['loss']:.4f}<br>min {min(ls):.4f}, max "
            f"{max(ls):.4f}<br>size {p.get('size')}, {_num(p.get('N'), '.4g')} params, "
            f"{_num(p.get('C'), '.3g')} FLOPs<br>trials {', '.join(map(str, p['trials']))}")


def _spread(points: list[dict]) -> dict:
    """error_y of cell means: the replicates' min and max around the mean."""
    return dict(type="data", symmetric=False, thickness=1.2,
                array=[max(p["losses"]) - p["loss"] for p in points],
                arrayminus=[p["loss"] - min(p["losses"]) for p in points])


def _trials_trace(fig, df: pd.DataFrame, x: str, color: str, name: str, group: str,
                  **kw) -> None:
    fig.add_scatter(x=df[x], y=df["loss"], mode="markers", name=name, legendgroup=group,
                    opacity=0.3, marker=dict(color=color, size=7), text=trial_hover(df),
                    hovertemplate="%{text}<extra></extra>", **kw)


def _legend_only(fig, name: str, group: str, color: str, **kw) -> None:
    """A legend entry with no data: a refusal said where the curve would be."""
    fig.add_scatter(x=[None], y=[None], mode="lines", name=name, legendgroup=group,
                    line=dict(color=color, dash="dot"), **kw)


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


# ----------------------------------------------------------------------------- pages


def frontier_figure(st: Study, df: pd.DataFrame, colors: dict, ylabel: str):
    """All complete trials (faint), each group's frontier cell means with their replicate
    spread, the fitted L*(C) with its bootstrap band, or the reason it was refused."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, g in st.groups.items():
        color, pts = colors[str(name)], g.frontier["points"]
        _trials_trace(fig, df[df["group"] == name], "train_flops", color, f"{name} trials",
                      str(name))
        fig.add_scatter(x=[p["C"] for p in pts], y=[p["loss"] for p in pts],
                        mode="lines+markers", name=f"{name} frontier (cell means; {SPREAD})",
                        legendgroup=str(name), line=dict(color=color, width=2.5),
                        marker=dict(size=9), error_y=_spread(pts),
                        text=[_cell_hover(p) for p in pts],
                        hovertemplate="%{text}<extra></extra>")
        f = g.frontier
        if f.get("refused"):
            _legend_only(fig, f"{name}: no fit ({f['refused']})", str(name), color)
            continue
        c = np.array([p["C"] for p in pts])
        grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 100)
        draws = g.frontier_draws
        if draws is not None and len(draws) >= 10:
            curves = draws[:, :1] + draws[:, 1:2] * grid[None, :] ** -draws[:, 2:3]
            lo, hi = np.percentile(curves, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
            fig.add_scatter(x=np.r_[grid, grid[::-1]], y=np.r_[hi, lo[::-1]], fill="toself",
                            line=dict(width=0), fillcolor=color, opacity=0.15,
                            legendgroup=str(name), hoverinfo="skip",
                            name=f"{name} fit: {LEVEL:.0%} band ({len(draws)} draws)")
        fig.add_scatter(x=grid, y=f["E"] + f["A"] * grid ** -f["alpha"], mode="lines",
                        legendgroup=str(name), line=dict(color=color, dash="dash"),
                        name=f"{name} fit L*(C): E {param_text(f, 'E', 3)}, "
                        f"α {param_text(f, 'alpha', 3)}")
    fig.update_layout(title=f"{ylabel} of the compute-optimal frontier vs training compute",
                      xaxis_type="log", xaxis_title="training FLOPs (C)",
                      yaxis_title=f"{ylabel} (nats/token)", updatemenus=[LOG_Y])
    return fig


def isoflop_figure(st: Study, name, colors: dict[float, str], df: pd.DataFrame,
                   ylabel: str):
    """One group's IsoFLOP curves: loss vs non-embedding parameters at each budget (one
    colour per budget), the parabola in log N, its vertex (open: at the grid's edge,
    extrapolated); refused parabolas as points only, with the reason."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for e in st.groups[name].isoflop:
        pts = [p for p in e["points"] if _finite(p["N"])]
        if not pts:
            continue
        color, label = colors[e["budget"]], f"{e['budget']:.3g} FLOPs"
        ids = [t for p in pts for t in p["trials"]]
        _trials_trace(fig, df[df["trial_id"].isin(ids)], "params_non_embedding", color,
                      f"{label}: trials", label, showlegend=False)
        refused = bool(e.get("refused"))  # points only; a dotted guide, not a fit
        fig.add_scatter(x=[p["N"] for p in pts], y=[p["loss"] for p in pts],
                        mode="lines+markers" if refused else "markers",
                        name=f"{label}: cell means" + (" (no parabola)" if refused else ""),
                        line=dict(color=color, width=1, dash="dot"),
                        legendgroup=label, marker=dict(color=color, size=9),
                        error_y=_spread(pts), text=[_cell_hover(p) for p in pts],
                        hovertemplate="%{text}<extra></extra>")
        if not refused:
            _parabola(fig, e, pts, color, label)
    fig.update_layout(title=f"IsoFLOP curves of {name}: {ylabel} vs model size at each "
                      f"budget ({SPREAD})", xaxis_type="log",
                      xaxis_title="non-embedding parameters (N)",
                      yaxis_title=f"{ylabel} (nats/token)")
    return fig


def isoflop_note(st: Study, name) -> str:
    """Below a group's IsoFLOP plot: why budgets have no parabola, and the vertex bias."""
    why: dict[str, list[str]] = {}
    for e in st.groups[name].isoflop:
        if e.get("refused"):
            why.setdefault(e["refused"], []).append(f"{e['budget']:.3g}")
    lines = [f"No parabola at {', '.join(bs)} FLOPs: {r}." for r, bs in why.items()]
    if any(not e.get("refused") for e in st.groups[name].isoflop):
        lines.append(f"Parabola vertices: {ISOFLOP_BIAS}.")
    return " ".join(lines)


def _parabola(fig, e: dict, pts: list[dict], color: str, label: str) -> None:
    c0, c1, c2 = e["coef"]
    x = np.log([p["N"] for p in pts])
    lo, hi = x.min(), x.max()
    if math.isfinite(e["params_opt"]):  # reach an extrapolated vertex, within reason
        xo = math.log(e["params_opt"])
        lo, hi = max(min(lo, xo), x.min() - 1.5), min(max(hi, xo), x.max() + 1.5)
    grid = np.linspace(lo, hi, 60)
    fig.add_scatter(x=np.exp(grid), y=c0 + c1 * grid + c2 * grid ** 2, mode="lines",
                    legendgroup=label, showlegend=False, hoverinfo="skip",
                    line=dict(color=color, dash="dash"))
    if not math.isfinite(e["params_opt"]):
        _legend_only(fig, f"{label}: the parabola has no minimum", label, color)
        return
    ci = e.get("ci") or {}
    n_ci, l_ci = ci.get("params_opt"), ci.get("loss_opt")
    where = "at the grid's edge: extrapolated" if e["edge"] else "inside the grid"
    fig.add_scatter(x=[e["params_opt"]], y=[e["loss_opt"]], mode="markers", legendgroup=label,
                    name=f"{label}: optimum N* {e['params_opt']:.3g} ({where})",
                    marker=dict(color=color, size=15, symbol="star-open" if e["edge"]
                                else "star", line=dict(color="black", width=1)),
                    error_x=_interval(e["params_opt"], n_ci),
                    error_y=_interval(e["loss_opt"], l_ci),
                    hovertemplate=f"N* %{{x:.4g}}, L* %{{y:.4f}}<br>{where}<extra></extra>")


def _interval(v: float, ci: list[float] | None) -> dict:
    if not ci or not math.isfinite(v):
        return dict(visible=False)
    return dict(type="data", symmetric=False, array=[max(ci[1] - v, 0)],
                arrayminus=[max(v - ci[0], 0)])


def optima_figures(st: Study, colors: dict, ylabel: str):
    """N*(C) (log-log, with N*(C) = k·C^a where fitted) and L*(C) from the IsoFLOP optima,
    with their intervals; edge optima drawn open."""
    import plotly.graph_objects as go

    n_fig, l_fig = go.Figure(), go.Figure()
    for name, g in st.groups.items():
        color = colors[str(name)]
        opt = [e for e in g.isoflop if not e.get("refused") and math.isfinite(e["params_opt"])]
        for edge in (False, True):
            es = [e for e in opt if e["edge"] == edge]
            if not es:
                continue
            label = f"{name}" + (" (at the grid's edge: extrapolated)" if edge else "")
            marker = dict(color=color, size=10, symbol="circle-open" if edge else "circle")
            for fig, key in ((n_fig, "params_opt"), (l_fig, "loss_opt")):
                fig.add_scatter(x=[e["C"] for e in es], y=[e[key] for e in es],
                                mode="markers", name=label, legendgroup=str(name),
                                marker=marker, error_y=_intervals(es, key))
        o = g.optimal_size
        if "a" in o and opt:
            c = np.geomspace(min(e["C"] for e in opt), max(e["C"] for e in opt), 30)
            ci = o["ci"].get("a")
            n_fig.add_scatter(x=c, y=o["k"] * c ** o["a"], mode="lines", legendgroup=str(name),
                              line=dict(color=color, dash="dash"),
                              name=f"{name}: N*(C) = {o['k']:.3g}·C^{o['a']:.3f}" + (
                                  f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        elif opt:
            _legend_only(n_fig, f"{name}: no N*(C) fit ({o['refused']})", str(name), color)
    n_fig.update_layout(title=f"Compute-optimal size N*(C) from the IsoFLOP parabolas "
                        f"({LEVEL:.0%} intervals)", xaxis_type="log", yaxis_type="log",
                        xaxis_title="training FLOPs (C)",
                        yaxis_title="N* (non-embedding parameters)")
    l_fig.update_layout(title=f"Compute-optimal loss L*(C) from the IsoFLOP parabolas "
                        f"({LEVEL:.0%} intervals)", xaxis_type="log",
                        xaxis_title="training FLOPs (C)", yaxis_title=f"L* ({ylabel}, nats/token)",
                        updatemenus=[LOG_Y])
    return n_fig, l_fig


def _intervals(es: list[dict], key: str) -> dict:
    cis = [(e.get("ci") or {}).get(key) for e in es]
    if not any(cis):
        return dict(visible=False)
    return dict(type="data", symmetric=False,
                array=[max(c[1] - e[key], 0) if c else 0 for e, c in zip(es, cis, strict=True)],
                arrayminus=[max(e[key] - c[0], 0) if c else 0
                            for e, c in zip(es, cis, strict=True)])


def multiplier_figure(st: Study, colors: dict, ylabel: str):
    """Per compared group: C_group / C_baseline to reach each loss both frontiers reached,
    with its band; the summary at the largest common budget as a point; a line at 1."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in dict.fromkeys(m["group"] for m in st.multipliers):
        color = colors[str(name)]
        ms = [m for m in st.multipliers if m["group"] == name]
        loss = [m["loss"] for m in ms]
        banded = [m for m in ms if m["ci"]]
        if banded:
            lo = [_finite(m["ci"][0]) for m in banded]
            hi = [_finite(m["ci"][1]) for m in banded]
            fig.add_scatter(x=[m["loss"] for m in banded] + [m["loss"] for m in banded[::-1]],
                            y=hi + lo[::-1], fill="toself", line=dict(width=0), opacity=0.2,
                            fillcolor=color, legendgroup=str(name), hoverinfo="skip",
                            name=f"{name}: {LEVEL:.0%} band")
        fig.add_scatter(x=loss, y=[_finite(m["multiplier"]) for m in ms], mode="lines+markers",
                        line=dict(color=color), legendgroup=str(name),
                        name=f"{name} vs {st.baseline}")
        for s in st.summary:
            if s["group"] == name and s.get("multiplier") is not None:
                fig.add_scatter(x=[s["loss"]], y=[_finite(s["multiplier"])], mode="markers",
                                marker=dict(color=color, size=13, symbol="diamond"),
                                legendgroup=str(name), error_y=_interval(s["multiplier"],
                                                                         s["ci"]),
                                name=f"{name}: at {s['C']:.3g} FLOPs (largest common budget)")
    fig.add_hline(y=1, line=dict(color="black", width=1))
    fig.update_layout(title=f"Compute multiplier vs {st.baseline}: the compute each group needs "
                      f"to reach a loss, as a multiple of {st.baseline}'s (< 1: less)",
                      yaxis_type="log", xaxis_title=f"{ylabel} reached (nats/token)",
                      yaxis_title=f"C_group / C_{st.baseline}")
    return fig


def ratio_figure(df: pd.DataFrame, colors: dict, ylabel: str):
    """Every complete trial's loss against its recurrence ratio (N_loop / stored layers)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, g in df.groupby("group", sort=True):
        _trials_trace(fig, g, "recurrence_ratio", colors[str(name)], str(name), str(name))
    fig.update_traces(opacity=0.7)
    fig.update_layout(title=f"{ylabel} vs recurrence ratio", xaxis_title="N_loop / stored layers",
                      yaxis_title=f"{ylabel} (nats/token)")
    return fig


def curves_figure(st: Study, metrics: pd.DataFrame, colors: dict):
    """Validation-loss curves of the frontier cells' trials."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, g in st.groups.items():
        tids = [(p, t) for p in g.frontier["points"] for t in p["trials"]]
        for i, (p, tid) in enumerate(tids):
            m = metrics[metrics["trial_id"] == tid]
            fig.add_scatter(x=m["train_flops"], y=m["val_loss"], mode="lines+markers",
                            name=f"{name}: frontier trials", legendgroup=str(name),
                            showlegend=i == 0, line=dict(color=colors[str(name)]),
                            marker=dict(size=4), hovertemplate=f"trial {tid}, budget "
                            f"{p['budget']:.3g}<br>%{{x:.3g}} FLOPs, val loss %{{y:.4f}}"
                            f"<extra></extra>")
    fig.update_layout(title="Validation-loss curves of the frontier cells' trials",
                      xaxis_type="log", xaxis_title="training FLOPs",
                      yaxis_title="val loss (nats/token)")
    return fig


def pages(st: Study, df: pd.DataFrame, metrics: pd.DataFrame,
          ylabel: str) -> tuple[list[Page], list[str]]:
    """The report's plots of a Study and its complete trials (`df`: a `group` and a `loss`
    column), and one line per plot left out: those whose x never varies, or that have
    nothing to draw."""
    colors = group_colors(st.groups)
    out, left = [], []
    budgets = {p["budget"] for g in st.groups.values() for p in g.frontier["points"]}
    if len(budgets) > 1:
        out.append(Page("frontier", "Compute-optimal frontier", frontier_figure(
            st, df, colors, ylabel)))
    else:
        left.append("frontier: one budget, so compute never varies")
    bcol = budget_colors(budgets)
    for name, g in st.groups.items():
        if any(len([p for p in e["points"] if _finite(p["N"])]) > 1 for e in g.isoflop):
            out.append(Page(f"isoflop-{name}", f"IsoFLOP curves: {name}",
                            isoflop_figure(st, name, bcol, df, ylabel),
                            isoflop_note(st, name)))
        else:
            left.append(f"IsoFLOP curves of {name}: one size per budget (or no parameter "
                        f"counts), so size never varies")
    optima = {e["C"] for g in st.groups.values() for e in g.isoflop
              if not e.get("refused") and math.isfinite(e["params_opt"])}
    if len(optima) > 1:
        n_fig, l_fig = optima_figures(st, colors, ylabel)
        out += [Page("nstar", "N*(C)", n_fig, f"{ISOFLOP_BIAS}."), Page("lstar", "L*(C)", l_fig)]
    else:
        left.append(f"N*(C) and L*(C): IsoFLOP optima at {len(optima)} budget(s); they need "
                    f"parabolas (5 sizes) at 2 or more")
    if st.multipliers:
        out.append(Page("multiplier", "Compute multiplier", multiplier_figure(st, colors,
                                                                              ylabel)))
    else:
        why = "one group" if len(st.groups) < 2 else "no comparison has two fitted frontiers " \
            "whose losses overlap (see the conclusion)"
        left.append(f"multiplier curve: {why}")
    ratios = df["recurrence_ratio"].dropna().unique() if "recurrence_ratio" in df else []
    if len(ratios) > 1:
        out.append(Page("ratio", "Recurrence ratio", ratio_figure(df, colors, ylabel)))
    else:
        left.append(f"loss vs recurrence ratio: the ratio never varies ({ratios[0]:.3g})"
                    if len(ratios) else "loss vs recurrence ratio: no trial has a spec to "
                    "take it from (imported runs)")
    ids = {t for g in st.groups.values() for p in g.frontier["points"] for t in p["trials"]}
    if not metrics.empty and metrics["trial_id"].isin(ids).any():
        out.append(Page("curves", "Training curves", curves_figure(st, metrics, colors)))
    else:
        left.append("training curves: no metrics stored for the frontier trials")
    return out, left
