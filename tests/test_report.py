"""The offline HTML report (analysis/report.py, figures.py): drawn from the Study that `fit`
prints, its conclusion at the top, every figure's traces checked against the trials, plots
whose x never varies left out, probes of kept checkpoints, static export where possible."""

import html
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_study import BUDGETS, chinchilla_study

from spiralsearch.analysis.fits import fit_table, load_results
from spiralsearch.analysis.report import build_report, make_report
from spiralsearch.cli import main
from spiralsearch.store import ResultsStore, config_hash

SPECS = {"plain": "4", "looped": "1+2x{1,1}+1", "spiral": "1+2x{1/4,1/2,1}+1"}
E, A, ALPHA = 1.5, 8000.0, 0.25
SHIFT = {"plain": 1.0, "looped": 1.0, "spiral": 2.0}  # spiral reaches plain's loss at C/2


def law(family, c):
    return E + A * (c * SHIFT[family]) ** -ALPHA


@pytest.fixture
def db(tmp_path):
    """A results file of a synthetic sweep drawn from a known law (1% noise)."""
    rng = np.random.default_rng(0)
    store = ResultsStore(tmp_path / "synthetic.duckdb")
    store.begin_sweep("synthetic", "name: synthetic\n", git_revision="abc", versions={"x": "1"})
    trials, metrics = [], {}
    for family, spec in SPECS.items():
        for budget in np.geomspace(1e12, 1e16, 7):
            for seed in range(2):
                config = dict(model=dict(spec=spec, preset="tiny"), train=dict(seed=seed),
                              budget=dict(kind="flops", value=float(budget)))
                loss = law(family, budget) * float(np.exp(rng.normal(0, 0.003)))
                if seed:  # a second, worse sample per budget (a bad learning rate)
                    loss *= 1.05
                trials.append(dict(sweep="synthetic", config=config, family=family, spec=spec,
                                   status="complete", budget_kind="flops",
                                   budget_target=float(budget), final_val_loss=loss,
                                   params_non_embedding=200_000))
                metrics[config_hash(config)] = [
                    dict(step=s, train_flops=budget * s / 4, val_loss=loss + 0.1 * (4 - s))
                    for s in (1, 2, 3, 4)]
    store.write(trials=trials, metrics=metrics)
    failed = dict(model=dict(spec="4"), budget=dict(kind="flops", value=1e14))
    store.write(trials=[dict(sweep="synthetic", config=failed, family="plain", spec="4",
                             status="failed", error="boom")])
    store.end_sweep("synthetic")
    return tmp_path / "synthetic.duckdb"


@pytest.mark.slow
def test_fit_table_recovers_law_and_multiplier(db):
    rows = {r["group"]: r for r in fit_table(load_results(db)["trials"], bootstrap=40)}
    assert set(rows) == {"plain", "looped", "spiral"}
    for r in rows.values():
        assert r["alpha"] == pytest.approx(ALPHA, rel=0.1)
        assert r["E"] == pytest.approx(E, rel=0.05)
        assert r["backtest_rel_error"] < 0.02
    # spiral reaches plain's loss with half the compute; no replicates, so no interval
    assert rows["spiral"]["multiplier"] == pytest.approx(0.5, rel=0.15)
    assert rows["spiral"]["multiplier_ci"] is None
    assert rows["looped"]["multiplier"] == pytest.approx(1.0, rel=0.15)


@pytest.mark.slow
def test_cli_fit_and_report(db, tmp_path, capsys):
    assert main(["fit", "--db", str(db), "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert "spiral" in out and "alpha" in out
    assert main(["fit", "--db", str(db), "--bootstrap", "0", "--format", "json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["groups"]) == set(SPECS)
    html_path = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--out", str(html_path), "--bootstrap", "10"]) == 0
    page = html_path.read_text()
    assert "<script src=" not in page and "Plotly.newPlot" in page  # offline: nothing fetched
    # frontier, multiplier, recurrence ratio (0 for plain, 0.5 for the loops), curves; one
    # size per budget: no IsoFLOP pages; no kept checkpoints: no probe plots
    assert page.count('class="plotly-graph-div"') == 4
    assert "IsoFLOP curves of spiral: one size per budget" in page
    assert "Sweep synthetic" in page and "1 failed" in page


def test_missing_db_is_a_usage_error(tmp_path, capsys):
    assert main(["fit", "--db", str(tmp_path / "nope.duckdb")]) == 2
    assert "nope.duckdb" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def traces_drawn(page_path, tmp_path) -> int:
    """Load a report in headless Chromium; the number of SVG traces its plots drew. Any
    console error fails the test."""
    probe = tmp_path / "probe.html"
    probe.write_text(page_path.read_text().replace("</body>", """<script>
      window.addEventListener('load', () => setTimeout(() => {
        const n = document.querySelectorAll('.plotly-graph-div .main-svg .trace').length;
        document.title = 'TRACES=' + n;
      }, 500));</script></body>"""))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--enable-logging=stderr", "--v=0",
         "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = out.stdout.split("<title>")[1].split("</title>")[0]
    assert title.startswith("TRACES="), out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Error" in line or "Uncaught" in line], console
    return int(title.split("=")[1])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(db, tmp_path):
    """Load the page in a real browser; the plots must have drawn their SVG traces."""
    page = build_report(db, tmp_path / "r.html", bootstrap=10)
    assert traces_drawn(page, tmp_path) >= 9  # 3 families x (trials, frontier, fit) at least


@pytest.mark.slow
def test_fits_use_the_test_loss_when_trials_have_one():
    """Selection sees validation; fits and reports use test loss once trials report it (and
    the validation loss for results from before the test split), never a mix."""
    import pandas as pd

    rng = np.random.default_rng(1)
    budgets = np.geomspace(1e12, 1e15, 5)
    val = [law("spiral", b) * float(np.exp(rng.normal(0, 0.003))) for b in budgets]
    test = [v + 0.3 for v in val]
    base = pd.DataFrame(dict(family="spiral", status="complete", budget_target=budgets,
                             train_flops=budgets, final_val_loss=val, spec="1+1x{1/2,1}+1"))
    with_test = fit_table(base.assign(final_test_loss=test))[0]
    as_val = fit_table(base.assign(final_val_loss=test))[0]
    old = fit_table(base)[0]
    assert with_test["loss"] == "test" and old["loss"] == "val"
    assert with_test["E"] == pytest.approx(as_val["E"]) and with_test["E"] != old["E"]


# ----------------------------------------------------------------------------- the Study pages

# two looped groups (the same recurrence ratio, 2 of 4 layers) on L(N, D) laws; spiral's
# reducible loss is 0.8x looped's
GROUPS = {"looped": ("1+2x{1,1}+1", 1.0), "spiral": ("1+2x{1/4,1/2,1}+1", 0.8)}


def isoflop_file(path, *, budgets=BUDGETS, sizes=5, R=2, sigma=0.004, groups=GROUPS):
    """A results file of an IsoFLOP study drawn from known laws: every group trains `sizes`
    sizes at each budget, R replicates (seeds) per cell, all selected, one metric row each."""
    store = ResultsStore(path)
    store.begin_sweep(path.stem, f"name: {path.stem}\n", git_revision="abc",
                      versions={"torch": "x"})
    trials, metrics = [], {}
    for i, (name, (spec, ratio)) in enumerate(groups.items()):
        df = chinchilla_study(np.random.default_rng(i), sizes=sizes, budgets=budgets,
                              sigma=sigma, R=R, A=400.0 * ratio, B=1000.0 * ratio)
        for r in df.itertuples():
            config = dict(model=dict(spec=spec, preset="tiny", d_model=32 + 8 * r.size_index),
                          train=dict(seed=r.replicate, lr=3e-3),
                          budget=dict(kind="flops", value=float(r.budget_target)))
            trials.append(dict(
                sweep=path.stem, config=config, family="looped" if "1," in spec else "spiral",
                spec=spec, group_name=name, status="complete", budget_kind="flops",
                budget_target=r.budget_target, train_flops=r.train_flops, tokens=int(r.tokens),
                params_non_embedding=int(r.params_non_embedding),
                params_unrolled=int(r.params_unrolled), final_val_loss=r.final_val_loss,
                final_test_loss=r.final_test_loss, size_index=r.size_index, selected=True,
                replicate=r.replicate))
            metrics[config_hash(config)] = [dict(step=1, train_flops=r.train_flops,
                                                 val_loss=r.final_val_loss)]
    store.write(trials=trials, metrics=metrics)
    store.end_sweep(path.stem)
    return path


@pytest.fixture(scope="module")
def iso(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iso")
    db = isoflop_file(tmp / "iso.duckdb")
    return db, make_report(db, tmp / "iso.html", bootstrap=20)


def traces(fig, prefix: str) -> list:
    return [t for t in fig.data if (t.name or "").startswith(prefix)]


def test_the_page_opens_with_the_studys_conclusion_and_fit_table(iso):
    db, r = iso
    page = r.path.read_text()
    st = r.study
    assert len(st.conclusion) == 1 and st.conclusion[0].startswith("spiral reaches looped's")
    head = page.split("<h2>")[0]  # above the first section: sweep, conclusion, intervals
    assert "Sweep iso" in head and html.escape(st.conclusion[0]) in head
    assert "Intervals (95%) come from 20 bootstrap draws (seed 0) over replicates: " in head
    assert "<script src=" not in page and "Plotly.newPlot" in page  # offline
    assert "on the test loss" in page and "git abc" in page and "torch x" in page
    # the table is fit's: bounds and intervals as `spiralsearch fit` prints them
    from spiralsearch.analysis.fits import fit_rows_text, rows_of

    _, cells = fit_rows_text(rows_of(st))
    for cell in cells[1]:
        assert f"<td>{html.escape(cell)}</td>" in page


def test_frontier_shows_cell_means_with_replicate_spread_and_the_fit(iso):
    db, r = iso
    fig = next(p.fig for p in r.pages if p.key == "frontier")
    t = load_results(db)["trials"]
    for name in GROUPS:
        # independent of the Study: cell means per (budget, size), the best size per budget
        g = t[t["group_name"] == name].groupby(["budget_target", "size_index"])[
            "final_test_loss"].agg(["mean", "min", "max"]).reset_index()
        best = g.loc[g.groupby("budget_target")["mean"].idxmin()].sort_values("budget_target")
        (front,) = traces(fig, f"{name} frontier (cell means; bars: replicate min–max)")
        assert list(front.y) == pytest.approx(best["mean"].tolist())
        assert list(front.error_y.array) == pytest.approx((best["max"] - best["mean"]).tolist())
        assert list(front.error_y.arrayminus) == pytest.approx(
            (best["mean"] - best["min"]).tolist())
        assert max(front.error_y.array) > 0  # two seeds: a visible spread
        (trials,) = traces(fig, f"{name} trials")
        assert len(trials.x) == (t["group_name"] == name).sum()
        (fit,) = traces(fig, f"{name} fit L*(C): E ")
        f = r.study.groups[name].frontier
        assert fit.y[0] == pytest.approx(f["E"] + f["A"] * fit.x[0] ** -f["alpha"])
        (band,) = traces(fig, f"{name} fit: 95% band (20 draws)")
        inside = np.asarray(band.y[:100])[::-1] >= np.asarray(band.y[100:]) - 1e-12
        assert inside.all()  # upper edge above lower edge
    # the log-log toggle: a button that makes the loss axis log
    (menu,) = fig.layout.updatemenus
    assert [b.args[0]["yaxis.type"] for b in menu.buttons] == ["linear", "log"]
    assert "loss: log (log-log)" in r.path.read_text()


def test_hover_carries_trial_id_lr_seed_and_size(iso):
    db, r = iso
    fig = next(p.fig for p in r.pages if p.key == "frontier")
    t = load_results(db)["trials"].set_index("trial_id")
    (trials,) = traces(fig, "spiral trials")
    text = trials.text[0]
    tid = text.split("<br>")[0].removeprefix("trial ")
    row = t.loc[tid]
    assert f"lr 0.003, seed {row['train_seed']}" in text
    assert f"size {row['size_index']} ({row['params_non_embedding']:.4g} params)" in text
    assert f"budget {row['budget_target']:.3g}" in text
    assert f"loss {row['final_test_loss']:.4f}" in text


def test_isoflop_pages_draw_the_studys_parabolas_and_optima(iso):
    db, r = iso
    for name in GROUPS:
        fig = next(p.fig for p in r.pages if p.key == f"isoflop-{name}")
        entries = r.study.groups[name].isoflop
        stars = traces(fig, "")  # every named trace; vertices are the star markers
        vertices = [t for t in stars if t.marker.symbol in ("star", "star-open")]
        assert len(vertices) == len(entries) == len(BUDGETS)
        for v, e in zip(vertices, entries, strict=True):
            assert (v.x[0], v.y[0]) == (e["params_opt"], e["loss_opt"])
            assert v.name.startswith(f"{e['budget']:.3g} FLOPs: optimum N*")
            assert ("inside the grid" in v.name) == (not e["edge"])
            lo, hi = e["ci"]["params_opt"]
            assert v.error_x.array[0] == pytest.approx(hi - e["params_opt"])
        means = [t for t in fig.data if (t.name or "").endswith("cell means")]
        assert len(means) == len(BUDGETS) and all(len(t.x) == 5 for t in means)
        assert len({t.marker.color for t in means}) == len(BUDGETS)  # a colour per budget
    n_fig = next(p.fig for p in r.pages if p.key == "nstar")
    o = r.study.groups["spiral"].optimal_size
    (line,) = traces(n_fig, "spiral: N*(C) = ")
    assert f"C^{o['a']:.3f}" in line.name
    assert line.y[0] == pytest.approx(o["k"] * line.x[0] ** o["a"])
    assert any(p.key == "lstar" for p in r.pages)


def test_multiplier_curve_with_band_and_summary(iso):
    db, r = iso
    fig = next(p.fig for p in r.pages if p.key == "multiplier")
    curve = [m for m in r.study.multipliers if m["group"] == "spiral"]
    (line,) = traces(fig, "spiral vs looped")
    assert list(line.y) == pytest.approx([m["multiplier"] for m in curve])
    assert traces(fig, "spiral: 95% band")
    (s,) = r.study.summary
    (point,) = traces(fig, "spiral: at ")
    assert point.y[0] == pytest.approx(s["multiplier"]) and s["multiplier"] < 1
    assert any(sh.y0 == 1 and sh.y1 == 1 for sh in fig.layout.shapes)  # the line at 1


def test_constant_x_plots_are_left_out_and_probes_skip_without_checkpoints(iso):
    db, r = iso
    assert "ratio" not in {p.key for p in r.pages}  # both groups loop 2 of 4 layers
    assert "loss vs recurrence ratio: the ratio never varies (0.5)" in r.left_out
    page = r.path.read_text()
    assert "the ratio never varies (0.5)" in page
    assert {s.group: s.skipped.split(" (")[0] for s in r.probes} == {
        "looped": "no kept checkpoint among its selected trials",
        "spiral": "no kept checkpoint among its selected trials"}
    assert "<b>spiral</b>: skipped: no kept checkpoint" in page


def test_one_budget_or_one_size_leaves_those_pages_out(tmp_path):
    one_budget = make_report(isoflop_file(tmp_path / "b.duckdb", budgets=[1e12]),
                             tmp_path / "b.html", bootstrap=0, probes=False)
    keys = {p.key for p in one_budget.pages}
    assert "frontier" not in keys and {"isoflop-looped", "isoflop-spiral"} <= keys
    assert "frontier: one budget, so compute never varies" in one_budget.left_out
    assert "nstar" not in keys  # optima at one budget: nothing to draw against C
    one_size = make_report(isoflop_file(tmp_path / "s.duckdb", sizes=1), tmp_path / "s.html",
                           bootstrap=0, probes=False)
    keys = {p.key for p in one_size.pages}
    assert "frontier" in keys and not any(k.startswith("isoflop") for k in keys)
    assert any(s.startswith("IsoFLOP curves of spiral: one size per budget")
               for s in one_size.left_out)
    assert "Attention probes" not in one_size.path.read_text()  # probes=False


def test_one_group_says_there_is_nothing_to_compare(tmp_path):
    r = make_report(isoflop_file(tmp_path / "o.duckdb", sizes=1,
                                 groups={"looped": GROUPS["looped"]}),
                    tmp_path / "o.html", bootstrap=0, probes=False)
    assert r.study.conclusion == [] and "multiplier curve: one group" in r.left_out
    head = r.path.read_text().split("<h2>")[0]
    assert "<div class='conclusion'><p>no comparison: one group (looped)</p></div>" in head


def test_refused_fits_show_their_points_and_reason(tmp_path):
    r = make_report(isoflop_file(tmp_path / "f.duckdb", budgets=BUDGETS[:4], sizes=3),
                    tmp_path / "f.html", bootstrap=0, probes=False)
    fig = next(p.fig for p in r.pages if p.key == "frontier")
    reason = r.study.groups["spiral"].frontier["refused"]
    assert reason.startswith("4 budget(s)")
    (legend,) = traces(fig, "spiral: no fit (")
    assert reason in legend.name and list(legend.x) == [None]
    assert len(traces(fig, "spiral frontier")[0].x) == 4  # points, no curve
    iso = next(p for p in r.pages if p.key == "isoflop-spiral")
    means = [t for t in iso.fig.data if t.showlegend is not False]
    assert [t.name for t in means] == [f"{b:.3g} FLOPs: cell means (no parabola)"
                                       for b in BUDGETS[:4]]
    assert not [t for t in iso.fig.data if t.marker.symbol in ("star", "star-open")]
    assert iso.note == (f"No parabola at {', '.join(f'{b:.3g}' for b in BUDGETS[:4])} FLOPs: "
                        f"3 size(s); a parabola needs >= 5 (its parameters + 2).")
    assert "No intervals: bootstrap turned off (--bootstrap 0)." in r.path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_isoflop_report_renders_in_headless_chromium(iso, tmp_path):
    """Every figure of the IsoFLOP page (bands, error bars, buttons, the line at 1) draws."""
    _, r = iso
    assert traces_drawn(r.path, tmp_path) == sum(len(p.fig.data) for p in r.pages)


def test_static_export_says_when_it_is_not_available(iso, tmp_path, monkeypatch, capsys):
    db, _ = iso
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido raises ImportError
    out = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--out", str(out), "--bootstrap", "0",
                 "--no-probes", "--static", "png", "--format", "json"]) == 0
    io = capsys.readouterr()
    assert json.loads(io.out) == {"report": str(out.resolve()), "static": []}
    err = io.err.strip().splitlines()
    assert err == ["spiralsearch report: static export not available: kaleido is not "
                   "installed (pip install kaleido; it also needs Chrome or Chromium)"]
    assert not list(tmp_path.glob("*.png")) and "Attention probes" not in out.read_text()
    assert main(["report", "--db", str(db), "--static", "gif"]) == 2


def test_static_export_writes_each_figure(iso, tmp_path):
    pytest.importorskip("kaleido")
    db, _ = iso
    r = make_report(db, tmp_path / "r.html", bootstrap=0, probes=False, static="svg")
    if r.static_note:  # kaleido without a browser to drive
        pytest.skip(r.static_note)
    assert [p.name for p in r.static] == [f"r.{i:02d}-{p.key}.svg"
                                          for i, p in enumerate(r.pages, 1)]
    assert all(p.read_text().lstrip().startswith("<svg") for p in r.static)


# ----------------------------------------------------------------------------- probes


@pytest.mark.slow
def test_probes_of_kept_checkpoints(tmp_path, monkeypatch):
    """A looped trial trained into its checkpoint folder is probed, per iteration, with the
    uniform-attention baseline; a plain one is skipped (no loop); a pruned one says so."""
    import torch

    from spiralsearch.analysis.probes import uniform_baseline
    from spiralsearch.config import TrialConfig
    from spiralsearch.search.checkpoints import checkpoints_dir
    from spiralsearch.training.loop import train

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "p.duckdb"
    store = ResultsStore(db)
    store.begin_sweep("p", "name: p\n")
    threads = torch.get_num_threads()
    for spec, group in (("1+1x{1/2,1}+0", "spiral"), ("2", "plain")):
        config = TrialConfig.from_dict(dict(
            model=dict(spec=spec, preset="tiny", d_model=32, n_heads=2),
            data=dict(source="corpus:sotu", seq_len=32),
            train=dict(batch_size=4, evals=1, eval_batches=1, threads=1, device="cpu"),
            budget=dict(kind="tokens", value=512.0)))
        try:
            s = train(config, out_dir=checkpoints_dir(db) / config.trial_id).summary
        finally:
            torch.set_num_threads(threads)
        store.write(trials=[dict(s, sweep="p", config=config.to_dict(), group_name=group,
                                 selected=True, replicate=0)])
    r = make_report(db, tmp_path / "p.html", bootstrap=0, probe_sequences=4)
    sections = {s.group: s for s in r.probes}
    assert sections["plain"].skipped.startswith("no loop")
    spiral = sections["spiral"]
    assert spiral.skipped is None and spiral.trial_id in spiral.page.title
    fig = spiral.page.fig
    heads = [t for t in fig.data if t.name.startswith("layer 0 head")]
    assert len(heads) == 2 * 2  # 2 heads, entropy and LAM panels
    assert all(list(t.x) == [0, 1] for t in heads)  # two loop iterations
    (base,) = [t for t in fig.data if t.name == "uniform causal attention: entropy"]
    (lam,) = [t for t in fig.data if t.name == "uniform causal attention: LAM"]
    (top,) = [t for t in fig.data if t.name.startswith("log L_t")]
    assert list(top.y) == pytest.approx([np.log(16), np.log(32)])  # chunks of 2, then 1
    assert list(base.y) == pytest.approx([uniform_baseline(16)["entropy"],
                                          uniform_baseline(32)["entropy"]])
    assert list(lam.y) == pytest.approx([uniform_baseline(16)["lam"],
                                         uniform_baseline(32)["lam"]])
    page = r.path.read_text()
    assert "Attention probes of the selected trials" in page and "<b>plain</b>: skipped" in page
    shutil.rmtree(checkpoints_dir(db) / spiral.trial_id)  # pruned
    again = make_report(db, tmp_path / "p.html", bootstrap=0)
    assert {s.group: s.skipped for s in again.probes}["spiral"].startswith(
        "no kept checkpoint among its selected trials")
