"""The offline HTML report of a results file (docs/design.md §6): one self-contained page,
plotly embedded (no CDN).

    build_report("results/quickstart.duckdb", "reports/quickstart.html")
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from spiralsearch.analysis.fits import (
    _fit_groups,
    _usable,
    fit_rows_text,
    group_column,
    grouped,
    load_results,
    loss_column,
    split_of,
)
from spiralsearch.analysis.scaling import (
    PowerLawFit,
    frontier,
)
from spiralsearch.atomic import atomic_write_text

COLORS = {"plain": "#1f77b4", "looped": "#ff7f0e", "spiral": "#2ca02c"}
# for groups that are not (all) families: plotly's default qualitative palette, cycled
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def group_colors(names) -> dict[str, str]:
    """A colour per group: the family colours when every group is a family, else the
    palette in the groups' sorted order (cycling past ten groups)."""
    names = sorted({str(n) for n in names})
    if set(names) <= set(COLORS):
        return {n: COLORS[n] for n in names}
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _loss_vs_compute(df: pd.DataFrame, fits: dict, bands: dict, by: str, colors: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for fam, g in df.groupby(by):
        color = colors.get(str(fam))
        c, loss = g["train_flops"].to_numpy(float), g["loss"].to_numpy(float)
        fig.add_scatter(x=c, y=loss, mode="markers", name=f"{fam} trials", opacity=0.45,
                        marker=dict(color=color, size=9), legendgroup=fam,
                        text=g["spec"], hovertemplate="%{text}<br>%{x:.3g} FLOPs<br>"
                        "loss %{y:.4f}<extra></extra>")
        idx = frontier(c, loss)
        fig.add_scatter(x=c[idx], y=loss[idx], mode="lines+markers", name=f"{fam} frontier",
                        line=dict(color=color, width=3), marker=dict(size=10),
                        legendgroup=fam, text=g["spec"].to_numpy()[idx],
                        hovertemplate="%{text}<br>%{x:.3g} FLOPs<br>loss %{y:.4f}<extra></extra>")
        if fam in fits:
            grid = np.geomspace(c.min() / 1.5, c.max() * 3, 100)
            if fam in bands:
                lo, hi = bands[fam](grid)
                fig.add_scatter(x=np.r_[grid, grid[::-1]], y=np.r_[hi, lo[::-1]], fill="toself",
                                line=dict(width=0), fillcolor=color, opacity=0.15,
                                name=f"{fam} fit 95% band", legendgroup=fam, hoverinfo="skip")
            f = fits[fam]
            fig.add_scatter(x=grid, y=f.predict(grid), mode="lines", legendgroup=fam,
                            line=dict(color=color, dash="dash"),
                            name=f"{fam} fit: {f.E:.3f} + {f.A:.3g}·C^-{f.alpha:.3f}")
    fig.update_layout(title=f"{_ylabel(df, False)} vs training compute", xaxis_type="log",
                      xaxis_title="training FLOPs", yaxis_title=_ylabel(df))
    return fig


def _band(fit: PowerLawFit):
    """Pointwise 95% band of the fitted curve from the fit's bootstrap refits (or None)."""
    if fit.samples is None or len(fit.samples) < 5:
        return None
    E, A, alpha = (fit.samples[:, i:i + 1] for i in range(3))
    return lambda grid: np.percentile(E + A * grid[None, :] ** -alpha, [2.5, 97.5], axis=0)


def _ylabel(df: pd.DataFrame, units: bool = True) -> str:
    """The final-loss axis: test loss, or val loss for results from before the test split."""
    label = f"{df.attrs.get('split', 'val')} loss"
    return f"{label} (nats/token)" if units else label.capitalize()


def _scatter_by_group(df: pd.DataFrame, x: str, title: str, xtitle: str, log: bool, by: str,
                      colors: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for fam, g in df.groupby(by):
        fig.add_scatter(x=g[x], y=g["loss"], mode="markers", name=str(fam),
                        marker=dict(color=colors.get(str(fam)), size=9), text=g["spec"],
                        hovertemplate="%{text}<br>%{x:.4g}<br>loss %{y:.4f}<extra></extra>")
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=_ylabel(df),
                      xaxis_type="log" if log else "linear")
    return fig


def _curves(df: pd.DataFrame, metrics: pd.DataFrame, by: str, colors: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for fam, g in df.groupby(by):
        c, loss = g["train_flops"].to_numpy(float), g["loss"].to_numpy(float)
        for tid, spec in zip(g["trial_id"].to_numpy()[frontier(c, loss)],
                             g["spec"].to_numpy()[frontier(c, loss)], strict=True):
            m = metrics[metrics["trial_id"] == tid]
            fig.add_scatter(x=m["train_flops"], y=m["val_loss"], mode="lines+markers",
                            name=f"{fam} {spec} ({tid[:6]})",
                            line=dict(color=colors.get(str(fam))))
    fig.update_layout(title="Validation-loss curves of the frontier trials", xaxis_type="log",
                      xaxis_title="training FLOPs", yaxis_title="val loss (nats/token)")
    return fig


def build_report(db: str | Path, out: str | Path | None = None, *, bootstrap: int = 100,
                 seed: int = 0, by: str | None = None) -> Path:
    """Write the HTML report of a results file; returns its path (default
    reports/NAME.html). Fits, colours and curves are per group: `by` a trials column, by
    default the sweep's comparison groups (`group_name`; `family` in older files).
    Self-contained: plotly's JavaScript is embedded once."""
    import plotly.offline

    data = load_results(db)
    trials, metrics, sweeps = data["trials"], data["metrics"], data["sweeps"]
    name = sweeps["name"].iloc[0] if not sweeps.empty else Path(db).stem
    out = Path(out) if out else Path("reports") / f"{name}.html"
    by = by or group_column(trials)
    df = grouped(_usable(trials), by)
    df.attrs["split"] = split_of(loss_column(trials))  # which held-out loss the plots show
    colors = group_colors(df[by].dropna()) if not df.empty else {}
    rows, fitted = _fit_groups(trials, by, bootstrap, seed, "plain")
    fits = {fam: f for fam, (f, _, _) in fitted.items()}
    bands = {fam: b for fam, (f, _, _) in fitted.items() if (b := _band(f)) is not None}
    figs = []
    if not df.empty:
        figs.append(_loss_vs_compute(df, fits, bands, by, colors))
        figs.append(_scatter_by_group(df, "params_non_embedding", f"{_ylabel(df, False)} vs "
                                      "stored parameters", "non-embedding parameters", True,
                                      by, colors))
        if df["recurrence_ratio"].nunique() > 1:
            figs.append(_scatter_by_group(df, "recurrence_ratio", f"{_ylabel(df, False)} vs "
                                          "recurrence ratio", "N_loop / stored layers", False,
                                          by, colors))
        figs.append(_curves(df, metrics, by, colors))
    cols, cells = fit_rows_text(rows)
    body = [_header(name, sweeps, trials), _table(cols, cells)]
    body += [f.to_html(full_html=False, include_plotlyjs=False, default_height="520px")
             for f in figs]
    if df.empty:
        body.append("<p><b>No complete trials yet.</b></p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>spiralsearch: "
            f"{html.escape(name)}</title><style>{_CSS}</style><script>"
            f"{plotly.offline.get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")
    return atomic_write_text(out, page)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}
.meta{color:#666}"""


def _header(name: str, sweeps: pd.DataFrame, trials: pd.DataFrame) -> str:
    s = sweeps.iloc[0].to_dict() if not sweeps.empty else {}
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    versions = s.get("versions")
    if isinstance(versions, str):
        versions = json.loads(versions)
    meta = (f"started {_when(s.get('started_at'))} UTC, ended "
            f"{_when(s.get('ended_at')) + ' UTC' if s.get('ended_at') else 'still running'}"
            f"; git {s.get('git_revision') or 'n/a'}; "
            f"{', '.join(f'{k} {v}' for k, v in (versions or {}).items())}")
    return (f"<h1>Sweep {html.escape(str(name))}</h1><p class='meta'>{html.escape(meta)}<br>"
            f"trials: {html.escape(', '.join(f'{v} {k}' for k, v in counts.items()))}; "
            f"report written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
            f"<details><summary>search space YAML</summary><pre>"
            f"{html.escape(str(s.get('yaml', '')))}</pre></details>")


def _when(t) -> str:
    return "?" if t is None else str(t)[:19]


def _table(cols: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                   for r in cells)
    return (f"<h2>Compute-loss fits</h2><p>L(C) = E + A·C<sup>−α</sup> per group on its best "
            f"trial per budget, 95% bootstrap intervals in brackets. <i>compute x vs plain</i>: "
            f"how many times its compute the plain group needs to reach the loss this group "
            f"reaches at its largest budget (&gt; 1: more compute-efficient than plain)."
            f"</p><table><tr>{head}</tr>{body}</table>")
