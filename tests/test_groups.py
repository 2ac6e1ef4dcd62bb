"""Comparison groups (search.group_by): per family, spec, option value or named group; their
validation, candidate check, resume, live table, fits and report colours."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from spiralsearch.analysis.fits import fit_table, group_column
from spiralsearch.analysis.report import COLORS, PALETTE, group_colors
from spiralsearch.search.candidates import check_candidates
from spiralsearch.search.space import SpaceError, parse_space, resolve

C2F, F2C = "2+4x{1/8,1/4,1/2,1}+2", "2+4x{1,1/2,1/4,1/8}+2"

SPACE = """\
name: groups
data: {{source: "corpus:sotu", seq_len: 32}}
model:
  preset: tiny
  d_model: 32
  n_heads: 2
  spec: {{choice: ["4", "{c2f}", "{f2c}"]}}
  topology: {{choice: [anchor, mesh]}}
train: {{batch_size: {{choice: [4, 8]}}, evals: 2, eval_batches: 1,
         lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}
budget: {{kind: tokens, values: [4096, 8192]}}
search:
  sampler: random
  scheduler: none
  samples_per_budget: 2
  seed: 0
  group_by: {group_by}
resources: {{cpu: 1, gpu: 0}}
"""


def space_with(group_by: str, text: str = SPACE):
    return parse_space(text.format(c2f=C2F, f2c=F2C, group_by=group_by))


NAMED = f"""
    - {{name: coarse-to-fine, model.spec: "{C2F}"}}
    - {{name: fine-to-coarse, model.spec: "{F2C}", train.batch_size: 8}}"""


def sample(space, group, n=6, seed=0):
    """n resolved trials of a group, sampled from its own optuna space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dists = group.optuna_space(space)
    return [resolve(space, group, study.ask(dists).params) for _ in range(n)]


def test_family_default_and_none():
    fam = space_with("family")
    assert [(g.budget.value, g.name, g.specs) for g in fam.groups()] == [
        (4096, "plain", ("4",)), (4096, "spiral", (C2F, F2C)),
        (8192, "plain", ("4",)), (8192, "spiral", (C2F, F2C))]
    none = space_with("none")
    assert [(g.name, len(g.specs)) for g in none.groups()] == [("all", 3), ("all", 3)]
    assert "model.spec" in none.groups()[0].optuna_space(none)


def test_a_group_per_spec():
    s = space_with("spec")
    groups = s.groups()
    assert [g.name for g in groups] == ["4", C2F, F2C] * 2  # per budget, both spirals apart
    for g in groups:
        assert "model.spec" not in g.optuna_space(s) and g.fixed(s)["model.spec"] == g.name
        assert {str(c.model.spec) for c in sample(s, g)} == {g.name}
    assert [g.name for g in space_with("model.spec").groups()] == [g.name for g in groups]


def test_a_group_per_option_value():
    s = space_with("model.topology")
    groups = s.groups()
    assert [(g.budget.value, g.name) for g in groups] == [
        (4096, "anchor"), (4096, "mesh"), (8192, "anchor"), (8192, "mesh")]
    for g in groups:
        dists = g.optuna_space(s)
        assert "model.topology" not in dists and set(dists) == {
            "model.spec", "train.batch_size", "train.lr"}
        assert g.fixed(s)["model.topology"] == g.name
        assert {c.model.topology for c in sample(s, g)} == {g.name}
    # a grid over what a group leaves open: 3 specs x 2 batch sizes (topology is fixed)
    grid = space_with("model.topology", SPACE.replace("sampler: random", "sampler: grid")
                      .replace("{{loguniform: [1.0e-3, 1.0e-2]}}", "1.0e-3")
                      .replace("samples_per_budget: 2", "samples_per_budget: 50"))
    assert grid.groups()[0].n_samples(grid) == 6
    bs = space_with("train.batch_size")
    assert [g.name for g in bs.groups()[:2]] == ["4", "8"]


def test_named_groups_fix_their_values():
    s = space_with(NAMED)
    groups = s.groups()
    assert [(g.budget.value, g.name) for g in groups] == [
        (4096, "coarse-to-fine"), (4096, "fine-to-coarse"),
        (8192, "coarse-to-fine"), (8192, "fine-to-coarse")]
    c2f, f2c = groups[:2]
    assert c2f.specs == (C2F,) and f2c.specs == (F2C,) and f2c.options == (
        ("train.batch_size", 8),)
    assert set(c2f.optuna_space(s)) == {"model.topology", "train.batch_size", "train.lr"}
    assert set(f2c.optuna_space(s)) == {"model.topology", "train.lr"}
    assert {str(c.model.spec) for c in sample(s, c2f)} == {C2F}
    trials = sample(s, f2c)
    assert {(str(c.model.spec), c.train.batch_size) for c in trials} == {(F2C, 8)}
    assert {c.model.topology for c in trials} == {"anchor", "mesh"}  # still searched
    # spec canonical form: "2+4x{1,1/2,1/4,1/8}+2" written another way is the same group
    same = space_with('[{name: a, model.spec: "2+4x{1, 1/2, 1/4, 1/8}+2"}]')
    assert same.groups()[0].specs == (F2C,)


BAD = [
    ("model.topolgy", r"^search\.group_by: 'model\.topolgy' is not a known option; did you "
     r"mean 'model\.topology'\? \(allowed: family, spec, none, model\.spec, .*train\.lr"),
    ("famly", r"^search\.group_by: 'famly' is not a known option; did you mean 'family'\?"),
    ("train.lr", r"^search\.group_by: train\.lr is a numeric range \(loguniform\); groups "
     r"need discrete values"),
    ("model.mesh_slots", r"^search\.group_by: model\.mesh_slots is not set in the space"),
    ("3", r"^search\.group_by: expected family, spec, none, an option key"),
    ("[]", r"^search\.group_by: expected .* a non-empty list of named groups"),
    (f'[{{name: a, model.spec: "{C2F}"}}, {{name: b, model.spec: "1+2x{{1,1}}+1"}}]',
     r"^search\.group_by\[1\]\.model\.spec: '1\+2x\{1,1\}\+1' is not one of the space's "
     r"model\.spec choices \('4', '2\+4x"),
    (f'[{{name: a, model.spec: "{C2F}"}}, {{name: a, model.spec: "{F2C}"}}]',
     r"^search\.group_by\[1\]\.name: 'a' repeats search\.group_by\[0\]\.name \(see "),
    ('[{name: "a b", model.topology: mesh}]',
     r"^search\.group_by\[0\]\.name: 'a b' must match \[A-Za-z0-9_\.-\]\+ \(see "),
    ("[{model.topology: mesh}]", r"^search\.group_by\[0\]\.name: required key missing"),
    ("[{name: a, model.topolgy: mesh}]", r"^search\.group_by\[0\]\.model\.topolgy: unknown "
     r"key; did you mean 'model\.topology'\?"),
    ("[{name: a, model.topology: ring}]", r"^search\.group_by\[0\]\.model\.topology: 'ring' "
     r"is not one of residual, anchor, mesh"),
    ("[{name: a, model.topology: residual}]", r"^search\.group_by\[0\]\.model\.topology: "
     r"'residual' is not one of the space's model\.topology choices \('anchor', 'mesh'\)"),
    ("[{name: a, model.d_model: 64}]", r"^search\.group_by\[0\]\.model\.d_model: 64 is not "
     r"the space's model\.d_model \(32\)"),
    ("[{name: a, train.lr: 1.0e-3}]", r"^search\.group_by\[0\]\.train\.lr: train\.lr is a "
     r"numeric range \(loguniform\) in the space; groups need discrete values"),
    ("[{name: a, model.topology: mesh}, {name: b, train.batch_size: 4}]",
     r"^search\.group_by\[1\]: group 'b' overlaps 'a' \(search\.group_by\[0\]\): a trial "
     r"could belong to both"),
    ("[{name: a}, 7]", r"^search\.group_by\[1\]: expected a mapping"),
]


@pytest.mark.parametrize(("group_by", "pattern"), BAD, ids=[b[0][:30] for b in BAD])
def test_bad_group_by_is_one_line_with_the_key_path(group_by, pattern):
    with pytest.raises(SpaceError, match=pattern) as e:
        space_with(group_by)
    assert "\n" not in str(e.value)


def test_check_candidates_names_the_group():
    # seq_len 32: batch 2 makes 64-token steps, batch 16 512-token ones (none fit 128 tokens)
    text = SPACE.replace("values: [4096, 8192]", "values: [4096, 128]").replace(
        "{{choice: [4, 8]}}", "{{choice: [2, 16]}}")
    both = space_with("[{name: small, train.batch_size: 2}, {name: big, train.batch_size: 16}]",
                      text)
    with pytest.raises(SpaceError, match=r"^budget\.values\[1\]: 128 tokens gives less than "
                       r"one step for every 'big' candidate \(6\); e\.g\. "):
        check_candidates(both)
    rows = check_candidates(space_with("[{name: small, train.batch_size: 2}]", text))
    assert {r["batch_size"]: r["budgets"][1]["status"] for r in rows} == {
        2: "ok", 16: "rejected"}  # the big candidates are rows, but no group needs them


def test_live_table_shows_group_names():
    from rich.console import Console

    from spiralsearch.search.recorder import LiveView

    s = space_with(NAMED)
    view = LiveView(s, enabled=False)
    view.update(s.groups()[1], "t1", "complete", 2.5)
    console = Console(record=True, width=160)
    console.print(view._table())
    text = console.export_text()
    assert "group" in text and "coarse-to-fine" in text and "fine-to-coarse" in text
    assert "2.5000" in text and "1/2" in text  # one of fine-to-coarse's 2 trials at 4096


def test_resume_maps_trials_by_budget_and_group_name(tmp_path):
    """Stored trials go back to their (budget, group_name) group; a row from before group
    names (NULL) by its family; a row whose group no longer gives it is left out."""
    from spiralsearch.search.resume import Previous
    from spiralsearch.store import ResultsStore

    s = space_with("model.topology")
    groups = s.groups()
    store = ResultsStore(tmp_path / "r.duckdb")
    store.begin_sweep("groups", s.yaml_text)
    params = {"model.spec": C2F, "train.batch_size": 4, "train.lr": 2e-3}
    rows = []
    for g, status in ((1, "complete"), (2, "running")):
        c = resolve(s, groups[g], params)
        rows.append(dict(sweep="groups", trial_id=c.trial_id, config=c.to_dict(), spec=C2F,
                         family="spiral", group_name=groups[g].name, status=status,
                         final_val_loss=3.0))
    wrong = resolve(s, groups[0], params)  # stored under the other topology's name
    rows.append(dict(sweep="groups", trial_id=wrong.trial_id, config=wrong.to_dict(),
                     spec=C2F, family="spiral", group_name="mesh", status="complete",
                     final_val_loss=3.0))
    store.write(trials=rows)
    prev = Previous.load(tmp_path / "r.duckdb", s, groups)
    assert prev.group_of == {rows[0]["trial_id"]: 1} and prev.finished == {1: 1}
    assert prev.unfinished == {2: [params]}
    assert prev.evaluated == {1: [(params, 3.0)]}

    # a file from before group names: group_by family, rows labelled by their family only
    fam = space_with("family")
    c = resolve(fam, fam.groups()[1], params | {"model.topology": "mesh"})
    old = ResultsStore(tmp_path / "old.duckdb")
    old.write(trials=[dict(sweep="groups", trial_id=c.trial_id, config=c.to_dict(), spec=C2F,
                           family="spiral", status="complete", final_val_loss=3.0)])
    assert Previous.load(tmp_path / "old.duckdb", fam, fam.groups()).group_of == {
        c.trial_id: 1}


def _trials(groups: dict[str, float], family="spiral", named=True, n=5) -> pd.DataFrame:
    """Synthetic complete trials of L(C) = 1.5 + 8000 (C shift)^-0.25, per group."""
    rows = []
    for name, shift in groups.items():
        for c in np.geomspace(1e12, 1e16, n):
            rows.append(dict(group_name=name if named else None, family=family, spec=name,
                             status="complete", budget_target=c, train_flops=c,
                             trial_id=f"{name}{c:.3g}{named}",
                             final_val_loss=1.5 + 8000 * (c * shift) ** -0.25))
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_fits_group_by_group_name_and_fall_back_to_family():
    df = _trials({"coarse-to-fine": 1.0, "fine-to-coarse": 2.0})
    assert group_column(df) == "group_name"
    rows = {r["group"]: r for r in fit_table(df, baseline="coarse-to-fine")}
    assert set(rows) == {"coarse-to-fine", "fine-to-coarse"}
    # fine-to-coarse's law is shifted by 2x in compute: it needs half the compute
    assert rows["fine-to-coarse"]["multiplier"] == pytest.approx(0.5, rel=0.05)
    assert rows["coarse-to-fine"]["alpha"] == pytest.approx(0.25, rel=0.05)
    # too few points to fit (quick): the rows still say how the trials were grouped
    old = _trials({"x": 1.0, "y": 1.0}, named=False, n=1)  # a file from before group names
    assert group_column(old) == "family"
    assert [(r["group"], r["n_trials"]) for r in fit_table(old)] == [("spiral", 2)]
    few = _trials({"coarse-to-fine": 1.0, "fine-to-coarse": 2.0}, n=1)
    assert [r["group"] for r in fit_table(few, by="family")] == ["spiral"]
    mixed = pd.concat([few, old])  # old rows (NULL group_name) count in their family
    assert [(r["group"], r["n_trials"]) for r in fit_table(mixed)] == [
        ("coarse-to-fine", 1), ("fine-to-coarse", 1), ("spiral", 2)]


def test_report_colours_per_group():
    assert group_colors(["spiral", "plain"]) == {"plain": COLORS["plain"],
                                                 "spiral": COLORS["spiral"]}
    names = [f"g{i:02d}" for i in range(12)]
    colors = group_colors(names)
    assert colors["g00"] == PALETTE[0] and colors["g10"] == PALETTE[0]  # cycles
    assert len(set(colors.values())) == len(PALETTE)


@pytest.mark.slow  # fits and plotly: a few seconds
def test_report_of_named_groups(tmp_path):
    from spiralsearch.analysis.report import build_report
    from spiralsearch.store import ResultsStore, config_hash

    store = ResultsStore(tmp_path / "g.duckdb")
    store.begin_sweep("g", "name: g\n")
    df = _trials({"coarse-to-fine": 1.0, "fine-to-coarse": 2.0})
    trials, metrics = [], {}
    for r in df.to_dict("records"):
        config = dict(model=dict(spec=C2F if r["spec"] == "coarse-to-fine" else F2C),
                      budget=dict(kind="flops", value=r["budget_target"]))
        trials.append(dict(sweep="g", config=config, family="spiral", spec=config["model"]
                           ["spec"], group_name=r["group_name"], status="complete",
                           budget_kind="flops", budget_target=r["budget_target"],
                           final_val_loss=r["final_val_loss"], params_non_embedding=1000))
        metrics[config_hash(config)] = [dict(step=1, train_flops=r["train_flops"],
                                             val_loss=r["final_val_loss"])]
    store.write(trials=trials, metrics=metrics)
    page = build_report(tmp_path / "g.duckdb", tmp_path / "g.html", bootstrap=0).read_text()
    assert "coarse-to-fine frontier" in page and "fine-to-coarse fit" in page
    assert PALETTE[0] in page and PALETTE[1] in page


@pytest.mark.slow
def test_sweep_stores_group_names_and_resumes(ray_session, tmp_path, monkeypatch):
    from spiralsearch.search.driver import run_sweep
    from spiralsearch.store import load

    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    text = (SPACE.replace('{{choice: ["4", "{c2f}", "{f2c}"]}}', '"1+1x{{1/2,1}}+0"')
            .replace("{{choice: [4, 8]}}", "4").replace("{{loguniform: [1.0e-3, 1.0e-2]}}",
                                                        "3.0e-3")
            .replace("values: [4096, 8192]", "values: [1024]")
            .replace("samples_per_budget: 2", "samples_per_budget: 1"))
    path = tmp_path / "groups.yaml"
    path.write_text(text.format(group_by="model.topology"))
    db = tmp_path / "groups.duckdb"
    report = run_sweep(path, results=db, progress=False)
    assert report.counts == {"complete": 2}
    trials = load(db)
    assert sorted(trials["group_name"]) == ["anchor", "mesh"]
    for row in trials.to_dict("records"):
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        assert config["model"]["topology"] == row["group_name"]
        assert row["family"] == "spiral"
    again = run_sweep(path, results=db, progress=False)
    assert again.skipped == 2 and again.counts == {"complete": 2} and len(load(db)) == 2
