"""The report's attention-probe section (docs/design.md §6.4, §7): per group, the probes of
its selected trial at the largest budget (best size) whose checkpoint was kept
(search.keep_checkpoints), drawn per loop iteration against uniform attention; or why the
group is skipped.

    sections = probe_sections(db, study, trials)   # [ProbeSection(group, trial_id, page)]
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from spiralsearch.analysis.figures import PALETTE, Page, page_html
from spiralsearch.analysis.study import Study


@dataclass
class ProbeSection:
    """The probes of one group: its probed trial and figure, or why it was skipped."""

    group: str
    trial_id: str | None = None
    budget: float | None = None
    page: Page | None = None
    skipped: str | None = None


def probe_sections(db: str | Path, st: Study, trials: pd.DataFrame, sequences: int = 16,
                   window: int = 4) -> list[ProbeSection]:
    """Per group: the attention probes of its selected trial at the largest budget (best size)
    whose checkpoint was kept (search.keep_checkpoints), walking down the budgets; or why the
    group is skipped (no loop to probe, no kept checkpoint)."""
    from spiralsearch.model.spec import parse_spec
    from spiralsearch.search.checkpoints import checkpoint_of

    specs = dict(zip(trials["trial_id"], trials["spec"], strict=True)) if len(trials) else {}
    out = []
    for name, g in st.groups.items():
        looped = [(p, t) for p in reversed(g.frontier["points"]) for t in p["trials"]
                  if isinstance(specs.get(t), str) and parse_spec(specs[t]).iterations]
        if not looped:
            out.append(ProbeSection(str(name), skipped="no loop (a plain model, or imported "
                                    "runs): the probes are per loop iteration"))
            continue
        kept = [(p, t, run) for p, t in looped if (run := checkpoint_of(db, t)) is not None]
        if not kept:
            out.append(ProbeSection(str(name), skipped=(
                "no kept checkpoint among its selected trials (search.keep_checkpoints; "
                f"`spiralsearch rerun {looped[0][1]}` re-trains one for `spiralsearch probe`)")))
            continue
        p, tid, run = kept[0]
        try:
            out.append(_probe(str(name), p, tid, run, sequences, window))
        except Exception as e:  # its data gone, a checkpoint of an older model: the report
            # stands without this section, and says why
            out.append(ProbeSection(str(name), tid, p["budget"], skipped=(
                f"probing trial {tid} failed: {type(e).__name__}: {e}")))
    return out


def _probe(name: str, point: dict, tid: str, run: Path, sequences: int,
           window: int) -> ProbeSection:
    from spiralsearch.analysis.probes import probe_run, uniform_baseline

    df, seq_len = probe_run(run, sequences=sequences, window=window)
    base = {t: uniform_baseline(int(L), window)
            for t, L in df.groupby("iteration")["positions"].first().items()}
    title = (f"{name}: trial {tid} ({point['budget']:.3g} FLOPs, size {point.get('size')}, "
             f"{point['N']:.3g} params)")
    fig = probe_figure(f"{title}; {sequences} held-out sequences of {seq_len} tokens, LAM "
                       f"window {window}", df, base)
    return ProbeSection(name, tid, point["budget"], Page(f"probes-{name}", title, fig))


def section_html(sections: list[ProbeSection]) -> str:
    """The probes section of the page: what it shows, then each group's plot or why not."""
    parts = ["<h2>Attention probes of the selected trials</h2><p>Per loop iteration t, core "
             "layer and head: the entropy of the key marginal (how evenly attention spreads "
             "over the L<sub>t</sub> positions of that iteration) and the local attention mass "
             "(share within the window). Dashed: what uniform causal attention reads; dotted: "
             "log L<sub>t</sub>, the entropy of a uniform key marginal.</p>"]
    for s in sections:
        if s.page:
            parts.append(page_html(s.page, h="h3"))
        else:
            parts.append(f"<p><b>{html.escape(s.group)}</b>: skipped: "
                         f"{html.escape(s.skipped or '')}</p>")
    return "".join(parts)


def probe_figure(title: str, probes: pd.DataFrame, baseline: dict[int, dict]):
    """Per loop iteration: every (core layer, head)'s key-marginal entropy and local
    attention mass, and what uniform causal attention reads at that iteration's length
    (`baseline`: iteration -> probes.uniform_baseline); entropy also against log L_t."""
    from plotly.subplots import make_subplots

    its = sorted(probes["iteration"].unique())
    first = probes.groupby("iteration").first()
    ticks = [f"t{t}: chunk {first.loc[t, 'chunk']}, L={first.loc[t, 'positions']}"
             for t in its]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "key-marginal entropy (nats)", "local attention mass"))
    for i, ((layer, head), h) in enumerate(probes.groupby(["layer", "head"])):
        h = h.sort_values("iteration")
        for col, metric in ((1, "entropy"), (2, "lam")):
            fig.add_scatter(x=h["iteration"], y=h[metric], mode="lines+markers", row=1, col=col,
                            name=f"layer {layer} head {head}", legendgroup=f"{layer}.{head}",
                            line=dict(color=PALETTE[i % len(PALETTE)]),
                            showlegend=col == 1, hovertemplate=f"layer {layer} head {head}<br>"
                            f"{metric} %{{y:.4f}}<extra></extra>")
    base = dict(color="black", dash="dash")
    for col, key, name in ((1, "entropy", "uniform causal attention: entropy"),
                           (1, "entropy_max", "log L_t: entropy of a uniform key marginal"),
                           (2, "lam", "uniform causal attention: LAM")):
        fig.add_scatter(x=its, y=[baseline[t][key] for t in its], mode="lines", row=1, col=col,
                        name=name, legendgroup=key,
                        line=base if key != "entropy_max" else dict(color="grey", dash="dot"))
    fig.update_xaxes(tickvals=its, ticktext=ticks, title_text="loop iteration")
    fig.update_layout(title=title)
    return fig
