import json
import shutil
import subprocess

import numpy as np
import pytest

from spiralsearch.analysis.fits import fit_table, load_results
from spiralsearch.analysis.report import build_report
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
    assert rows["spiral"]["multiplier"] == pytest.approx(2.0, rel=0.15)
    lo, hi = rows["spiral"]["multiplier_ci"]
    assert lo < 2.0 < hi
    assert rows["looped"]["multiplier"] == pytest.approx(1.0, rel=0.15)


@pytest.mark.slow
def test_cli_fit_and_report(db, tmp_path, capsys):
    assert main(["fit", "--db", str(db), "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert "spiral" in out and "alpha" in out
    assert main(["fit", "--db", str(db), "--bootstrap", "0", "--format", "json"]) == 0
    assert {r["group"] for r in json.loads(capsys.readouterr().out)} == set(SPECS)
    html_path = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--out", str(html_path), "--bootstrap", "10"]) == 0
    page = html_path.read_text()
    assert "<script src=" not in page and "Plotly.newPlot" in page  # offline: nothing fetched
    # compute, params, recurrence ratio (0 for plain, 0.5 for the loops), curves
    assert page.count('class="plotly-graph-div"') == 4
    assert "Sweep synthetic" in page and "1 failed" in page


def test_missing_db_is_a_usage_error(tmp_path, capsys):
    assert main(["fit", "--db", str(tmp_path / "nope.duckdb")]) == 2
    assert "nope.duckdb" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(db, tmp_path):
    """Load the page in a real browser; the plots must have drawn their SVG traces."""
    page = build_report(db, tmp_path / "r.html", bootstrap=10)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", """<script>
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
    assert int(title.split("=")[1]) >= 9  # 3 families x (trials, frontier, fit) at least
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Error" in line or "Uncaught" in line], console


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
