"""The offline HTML report of a results file (docs/design.md §6.4): one self-contained page,
plotly embedded (no CDN), drawn from the same Study that `spiralsearch fit` prints.

    build_report("results/quickstart.duckdb", "reports/quickstart.html")
    r = make_report(db, static="png")   # r.study, r.pages, r.left_out, r.probes, r.static

Top: the sweep, the conclusion sentences, what the intervals resample (or why there are
none), the fit table, every refused view with its reason, then the sweep's metadata. Then the
plots (figures.py; those whose x never varies are left out, in one line each) and the
attention probes of each group's selected trial at its largest budget with a kept checkpoint.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from spiralsearch.analysis import BOOTSTRAP
from spiralsearch.analysis.figures import COLORS, PALETTE, Page, group_colors, page_html, pages
from spiralsearch.analysis.fits import (
    _usable,
    fit_rows_text,
    grouped,
    load_results,
    rows_of,
    study,
)
from spiralsearch.analysis.probe_section import ProbeSection, probe_sections, section_html
from spiralsearch.analysis.study import LEVEL, Study
from spiralsearch.atomic import atomic_write_text

__all__ = ["COLORS", "PALETTE", "Report", "build_report", "group_colors", "make_report"]
STATIC = ("png", "svg")


@dataclass
class Report:
    """What make_report wrote and drew."""

    path: Path
    study: Study
    pages: list[Page]
    left_out: list[str]
    probes: list[ProbeSection] = field(default_factory=list)
    static: list[Path] = field(default_factory=list)
    static_note: str | None = None  # why static export did not happen


def build_report(db: str | Path, out: str | Path | None = None, **kw) -> Path:
    """Write the HTML report of a results file (make_report's options); returns its path."""
    return make_report(db, out, **kw).path


def make_report(db: str | Path, out: str | Path | None = None, *, bootstrap: int = BOOTSTRAP,
                seed: int = 0, by: str | None = None, baseline: str | None = None,
                E: float | None = None, shared_E: bool = False, probes: bool = True,
                probe_sequences: int = 16, static: str | None = None) -> Report:
    """Analyse a results file once (fits.study: `by`, `baseline`, `bootstrap` draws, `seed`,
    `E`, `shared_E` as `spiralsearch fit` takes them) and write its report to `out` (default
    reports/NAME.html). `probes`: probe each group's selected trial on `probe_sequences`
    held-out sequences. `static` "png" or "svg": also write each figure beside the page,
    where kaleido is importable and works (else `static_note` says why not)."""
    import plotly.offline

    if static is not None and static not in STATIC:
        raise ValueError(f"--static {static!r}: one of {', '.join(STATIC)}")
    data = load_results(db)
    trials, metrics, sweeps = data["trials"], data["metrics"], data["sweeps"]
    name = sweeps["name"].iloc[0] if not sweeps.empty else Path(db).stem
    out = Path(out) if out else Path("reports") / f"{name}.html"
    st = study(trials, by, baseline=baseline, bootstrap=bootstrap, seed=seed, E=E,
               shared_E=shared_E)
    df = grouped(_usable(trials), st.by)
    df = df.assign(group=df[st.by]) if len(df) else df.assign(group=pd.Series(dtype=object))
    ylabel = f"{st.loss} loss"
    figs, left = pages(st, df, metrics, ylabel) if st.groups else ([], [])
    sections = probe_sections(db, st, trials, probe_sequences) if probes and st.groups else []
    body = [_header(name, st, sweeps, trials)]
    body += [page_html(p) for p in figs]
    if left:
        body.append("<h2>Left out</h2><ul class='meta'>" + "".join(
            f"<li>{html.escape(s)}</li>" for s in left) + "</ul>")
    if not st.groups:
        body.append("<p><b>No complete trials yet.</b></p>")
    if probes and st.groups:
        body.append(section_html(sections))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>spiralsearch: "
            f"{html.escape(str(name))}</title><style>{_CSS}</style><script>"
            f"{plotly.offline.get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")
    report = Report(atomic_write_text(out, page), st, figs, left, sections)
    if static:
        shown = figs + [s.page for s in sections if s.page]
        report.static, report.static_note = export_static(shown, report.path, static)
    return report


# ----------------------------------------------------------------------------- static files


def export_static(figs: list[Page], out: Path, fmt: str) -> tuple[list[Path], str | None]:
    """Write each figure beside the page (NAME.01-frontier.png, ...); ([], why) when kaleido
    is not importable or cannot render (it needs a Chrome or Chromium)."""
    try:
        import kaleido  # noqa: F401  (not a dependency: optional)
    except ImportError:
        return [], ("static export not available: kaleido is not installed (pip install "
                    "kaleido; it also needs Chrome or Chromium)")
    written = []
    for i, p in enumerate(figs, 1):
        path = out.with_name(f"{out.stem}.{i:02d}-{p.key}.{fmt}")
        try:
            p.fig.write_image(path, format=fmt, width=1100, height=560)
        except Exception as e:  # kaleido without a browser, or a broken one: say so once
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return written, f"static export not available: kaleido failed ({first})"
        written.append(path)
    return written, None


# ----------------------------------------------------------------------------- page parts


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}
.meta{color:#666}.conclusion{font-size:1.15em;background:#f4f8ff;padding:.6em 1em;
border-left:4px solid #1f77b4}.note{color:#555;font-size:.9em}"""


def _header(name, st: Study, sweeps: pd.DataFrame, trials: pd.DataFrame) -> str:
    out = [f"<h1>Sweep {html.escape(str(name))}</h1>"]
    said = st.conclusion or [f"no comparison: one group ({', '.join(map(str, st.groups))})"]
    out.append("<div class='conclusion'>" + "".join(
        f"<p>{html.escape(s)}</p>" for s in said) + "</div>")
    boot = st.bootstrap
    why = (f"Intervals ({LEVEL:.0%}) come from {boot['n']} bootstrap draws (seed "
           f"{boot.get('seed')}) over {boot['resamples']}."
           if boot.get("n") else
           f"No intervals: {boot.get('refused', 'bootstrap turned off (--bootstrap 0)')}.")
    out.append(f"<p>{html.escape(why)}</p>")
    if st.groups:
        out.append(_table(st))
    out.append(_meta(sweeps, trials))
    return "".join(out)


def _table(st: Study) -> str:
    cols, cells = fit_rows_text(rows_of(st))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                   for r in cells)
    refused = [f"{name} {view}: {getattr(g, view)['refused']}" for name, g in st.groups.items()
               for view in ("frontier", "optimal_size", "nd", "backtest")
               if getattr(g, view).get("refused")]
    nd = [f"{name}: L(N, D) = {g.nd['E']:.3f} + {g.nd['A']:.3g}/N^{g.nd['alpha']:.3f} + "
          f"{g.nd['B']:.3g}/D^{g.nd['beta']:.3f}" + (
              f" (at bound: {', '.join(g.nd['at_bound'])})" if g.nd["at_bound"] else "")
          for name, g in st.groups.items() if "E" in g.nd]
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in nd + [f"refused: {r}" for r in refused])
    return (f"<h2>Fits by {html.escape(st.by)}, on the {st.loss} loss</h2><p>Frontier "
            f"L*(C) = E + A·C<sup>−α</sup> through the best size per budget (replicate means); "
            f"a parameter on its bound is shown as a bound. <i>{html.escape(cols[7])}</i>: the "
            f"compute this group needs to reach the baseline's loss at their largest common "
            f"budget, as a multiple of the baseline's (&lt; 1: less compute).</p>"
            f"<table><tr>{head}</tr>{body}</table>" + (f"<ul>{lines}</ul>" if lines else ""))


def _meta(sweeps: pd.DataFrame, trials: pd.DataFrame) -> str:
    s = sweeps.iloc[0].to_dict() if not sweeps.empty else {}
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    versions = s.get("versions")
    if isinstance(versions, str):
        versions = json.loads(versions)
    ended = None if pd.isna(s.get("ended_at")) else s.get("ended_at")
    meta = (f"started {_when(s.get('started_at'))} UTC, ended "
            f"{_when(ended) + ' UTC' if ended else 'still running'}"
            f"; git {s.get('git_revision') or 'n/a'}; "
            f"{', '.join(f'{k} {v}' for k, v in (versions or {}).items())}")
    return (f"<p class='meta'>{html.escape(meta)}<br>trials: "
            f"{html.escape(', '.join(f'{v} {k}' for k, v in counts.items()))}; "
            f"report written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
            f"<details><summary>search space YAML</summary><pre>"
            f"{html.escape(str(s.get('yaml', '')))}</pre></details>")


def _when(t) -> str:
    return "?" if t is None else str(t)[:19]
