"""Search spaces: validation messages, groups, optuna spaces, resolve, samplers, budgets."""

import math
from pathlib import Path

import optuna
import pytest

from spiralsearch.config import Budget, TrialConfig
from spiralsearch.model.spec import parse_spec
from spiralsearch.search.candidates import check_candidates
from spiralsearch.search.samplers import make_sampler
from spiralsearch.search.space import (
    Group,
    SearchSettings,
    SpaceError,
    load_space,
    parse_space,
    resolve,
)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

BASE = """\
name: spiral-vs-looped-tiny
data: {source: "corpus:sotu", tokenizer: bytes, seq_len: 256}
model:
  preset: tiny
  spec: {choice: ["4", "1+2x{1,1}+1", "1+2x{1/4,1/2,1}+1", "1+2x{1/4@2,1/2@1,1}+1"]}
  d_model: {choice: [64, 96, 128]}
  topology: mesh
train:
  lr: {loguniform: [3.0e-4, 3.0e-3]}
  batch_size: 16
budget:
  kind: flops
  values: [3.0e12, 1.0e13, 3.0e13]
search:
  metric: val_loss
  mode: min
  sampler: tpe
  scheduler: asha
  samples_per_budget: 8
  group_by: family
  seed: 0
resources: {cpu: 1, gpu: 0}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.fixture(scope="module")
def space():
    return parse_space(BASE)


ERRORS = [
    # unknown key, with did-you-mean
    (("topology: mesh", "topolgy: mesh"),
     "model.topolgy: unknown key; did you mean 'topology'? (allowed: spec, preset, d_model"),
    (("search:", "serch:"), "serch: unknown key; did you mean 'search'?"),
    # a bad spec inside a choice, with its path and the parser's position
    (('"1+2x{1/4,1/2,1}+1"', '"1+2x{1/4,,1}+1"'),
     "model.spec.choice[2]: bad spec '1+2x{1/4,,1}+1' at position 9: expected a resolution "
     "(1 or 1/g), got ','"),
    (('"4", ', '"4", "2+0x{}+2", '), "model.spec.choice[1]: '2+0x{}+2' (= '4') repeats "
     "model.spec.choice[0]"),
    # bad enum values
    (("topology: mesh", "topology: ring"), "model.topology: 'ring' is not one of residual, "
     "anchor, mesh"),
    (("kind: flops", "kind: steps"), "budget.kind: 'steps' is not one of flops, tokens, params"),
    (("sampler: tpe", "sampler: bayes"), "search.sampler: 'bayes' is not one of tpe, random, "
     "grid, cmaes"),
    (("preset: tiny", "preset: huge"), "model.preset: 'huge' is not one of tiny, pythia-160m"),
    (("metric: val_loss", "metric: acc"), "search.metric: 'acc' is not one of val_loss"),
    # bad distributions
    (("[3.0e-4, 3.0e-3]", "[0, 1]"),
     "train.lr.loguniform: need [lo, hi] with 0 < lo < hi, got [0, 1]"),
    (("{loguniform: [3.0e-4, 3.0e-3]}", "{normal: [0, 1]}"),
     "train.lr.normal: unknown key; did you mean 'uniform'? (allowed: choice, int, uniform, "
     "loguniform)"),
    (("{loguniform: [3.0e-4, 3.0e-3]}", "{uniform: [1, 2], choice: [1]}"),
     "train.lr: give one of choice, int, uniform, loguniform"),
    (("batch_size: 16", "batch_size: {uniform: [8, 16]}"),
     "train.batch_size.uniform: train.batch_size takes an integer; use {int: [lo, hi]}"),
    (("topology: mesh", "topology: {int: [1, 2]}"), "model.topology.int: model.topology takes a "
     "string; use a value or {choice: [...]}"),
    (("{choice: [64, 96, 128]}", "{int: [64, 128], step: 5}"), "model.d_model.step: need an "
     "integer >= 1 that divides hi - lo = 64"),
    (("{choice: [64, 96, 128]}", "{choice: []}"), "model.d_model.choice: need a non-empty list"),
    # model options that do not build, with the key path
    (("{choice: [64, 96, 128]}", "{choice: [64, 66]}"),
     "model.d_model.choice[1]: n_heads=4 does not divide d_model=66"),
    (("{choice: [64, 96, 128]}", "{int: [64, 128]}"),
     "model.d_model.int (at 65): n_heads=4 does not divide d_model=65"),
    (("d_model: {choice: [64, 96, 128]}", "d_model: {choice: [96, 128]}\n  n_heads: "
      "{choice: [4, 3]}"), "model: d_model=128, n_heads=3: n_heads=3 does not divide"),
    (("{choice: [64, 96, 128]}", "66"), "model: the fixed options: n_heads=4 does not divide "
     "d_model=66"),
    # bad types
    (("batch_size: 16", "batch_size: sixteen"), "train.batch_size: expected an integer, got "
     "'sixteen'"),
    (("batch_size: 16", "batch_size: 16\n  lr: fast"), None),  # duplicate key: YAML error
    (("seq_len: 256", "seq_len: 256.5"), "data.seq_len: expected an integer, got 256.5"),
    (("topology: mesh", "bias: maybe"), "model.bias: expected true or false, got 'maybe'"),
    (("topology: mesh", "mesh_slots: many"), "model.mesh_slots: expected an integer or null"),
    # bad budgets
    (("[3.0e12, 1.0e13, 3.0e13]", "[3.0e12, -1, 3.0e13]"),
     "budget.values[1]: expected > 0, got -1.0"),
    (("[3.0e12, 1.0e13, 3.0e13]", "[3e12, 1e13, 3e12]"),
     "budget.values[2]: 3e+12 repeats budget.values[0]"),
    (("values: [3.0e12, 1.0e13, 3.0e13]", "values: []"), "budget.values: need a non-empty list"),
    (("kind: flops", "kind: params"), "budget.tokens: required with kind: params"),
    (("values: [3.0e12, 1.0e13, 3.0e13]", "value: 3.0e12\n  tokens: 1.0e6"),
     "budget.tokens: only for kind: params (kind is 'flops')"),
    # missing required keys, names, resources, data, search
    (("name: spiral-vs-looped-tiny\n", ""), "name: required key missing"),
    (('  spec: {choice: ["4", "1+2x{1,1}+1", "1+2x{1/4,1/2,1}+1", "1+2x{1/4@2,1/2@1,1}+1"]}\n',
      ""), "model.spec: required key missing"),
    (("name: spiral-vs-looped-tiny", "name: spiral vs looped"), "name: 'spiral vs looped' must "
     "match [A-Za-z0-9_.-]+"),
    (("gpu: 0", "gpu: 1.5"), "resources.gpu: expected a fraction in [0, 1] (for K GPUs per "
     "trial, use resources.workers: K with gpu: 1), got 1.5"),
    (("cpu: 1", "cpu: 0"), "resources.cpu: expected > 0, got 0.0"),
    (("tokenizer: bytes", "tokenizer: bpe:100"), "data.tokenizer: expected 'bytes' or 'bpe:N' "
     "with N >= 256, got 'bpe:100'"),
    (('"corpus:sotu"', '"web:sotu"'), "data.source: unknown source kind 'web'"),
    (("seed: 0", "seed: 0\n  grace_evals: 11"), "search.grace_evals: 11 is more than "
     "train.evals (10)"),
    (("samples_per_budget: 8", "samples_per_budget: 0"), "search.samples_per_budget: expected "
     ">= 1, got 0"),
    (("sampler: tpe", "sampler: grid"), "search.sampler: grid needs every searched option to be "
     "a choice; train.lr is loguniform"),
    (("topology: mesh", "topology: mesh\n  family: spiral"), "model.family: 'spiral', but spec "
     "'4' is a 'plain' model"),
    (("topology: mesh", "max_seq_len: 128"), "model.max_seq_len: 128 is shorter than "
     "data.seq_len (256)"),
]


@pytest.mark.parametrize("change,message", ERRORS, ids=[m or e[1] for e, m in ERRORS])
def test_errors(change, message):
    with pytest.raises(SpaceError) as err:
        parse_space(edit(*change), "space.yaml")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message or "space.yaml:11:3: YAML syntax error: duplicate key 'lr'")


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(SpaceError, match=r"^bad\.yaml:23:1: YAML syntax error: expected ','"):
        parse_space(edit("gpu: 0}", "gpu: 0"), "bad.yaml")
    with pytest.raises(SpaceError, match=r"^bad\.yaml: expected a mapping of sections"):
        parse_space("- a\n- b\n", "bad.yaml")
    with pytest.raises(SpaceError, match=r"nope\.yaml: cannot read"):
        load_space("nope.yaml")


def test_values_are_validated_and_canonical(space):
    assert tuple(b.value for b in space.budgets) == (3e12, 1e13, 3e13)
    assert all(b.tokens is None and b.kind == "flops" for b in space.budgets)
    assert space.model["d_model"] == {"choice": [64, 96, 128]}
    assert space.train == {"lr": {"loguniform": [3e-4, 3e-3]}, "batch_size": 16}
    # 3e12 without a dot is a float too (PyYAML alone reads a string); an unquoted spec works
    s = parse_space(edit("[3.0e12, 1.0e13, 3.0e13]", "[3e12, 1e13]",
                         edit('{choice: ["4", "1+2x{1,1}+1", "1+2x{1/4,1/2,1}+1", '
                              '"1+2x{1/4@2,1/2@1,1}+1"]}', "6")))
    assert tuple(b.value for b in s.budgets) == (3e12, 1e13) and s.model["spec"] == "6"
    assert parse_space(edit('"4", ', '"2+0x{}+2", ')).specs[0] == "4"  # canonical form


def test_groups_per_budget_and_family(space):
    assert space.families() == ["plain", "looped", "spiral"]
    groups = space.groups()
    assert len(groups) == 9
    assert groups[0] == Group(Budget("flops", 3e12), "plain", ("4",))
    spiral = groups[2]
    assert spiral.specs == ("1+2x{1/4,1/2,1}+1", "1+2x{1/4@2,1/2@1,1}+1")
    dists = spiral.optuna_space(space)
    assert set(dists) == {"model.spec", "model.d_model", "train.lr"}
    assert dists["model.spec"].choices == spiral.specs  # restricted to the family
    assert dists["train.lr"] == optuna.distributions.FloatDistribution(3e-4, 3e-3, log=True)
    assert "model.spec" not in spiral.fixed(space)
    plain = groups[0]
    assert "model.spec" not in plain.optuna_space(space)  # a single spec is fixed
    assert plain.fixed(space) == {"model.spec": "4", "model.preset": "tiny",
                                  "model.topology": "mesh", "data.source": "corpus:sotu",
                                  "data.tokenizer": "bytes", "data.seq_len": 256,
                                  "train.batch_size": 16}
    none = parse_space(edit("group_by: family", "group_by: none"))
    assert [(g.budget.value, g.name, len(g.specs)) for g in none.groups()] == [
        (3e12, "all", 4), (1e13, "all", 4), (3e13, "all", 4)]


def test_explicit_family_and_int_ranges():
    s = parse_space(edit('"4", "1+2x{1,1}+1", ', "", edit("topology: mesh",
                    "topology: mesh\n  family: spiral\n  mesh_slots: {int: [4, 8], step: 2}")))
    assert s.families() == ["spiral"] and len(s.groups()) == 3
    d = s.groups()[0].optuna_space(s)["model.mesh_slots"]
    assert d == optuna.distributions.IntDistribution(4, 8, step=2)


def test_resolve_gives_a_trainable_config(space):
    group = space.groups()[2]
    params = {"model.spec": group.specs[1], "model.d_model": 96, "train.lr": 1e-3}
    cfg = resolve(space, group, params)
    assert cfg.budget.to_dict() == {"kind": "flops", "value": 3e12, "tokens": None}
    assert (cfg.preset, str(cfg.model.spec), cfg.model.topology, cfg.model.d_model) == (
        "tiny", "1+2x{1/4@2,1/2@1,1}+1", "mesh", 96)
    tc = TrialConfig.from_dict(cfg.to_dict())  # the dict form round-trips
    assert tc == cfg and tc.trial_id == cfg.trial_id
    m = tc.model
    assert (m.d_model, m.topology, str(m.spec), tc.train.lr) == (96, "mesh", group.specs[1], 1e-3)
    assert tc.budget.value == 3e12 and tc.data.seq_len == 256
    with pytest.raises(SpaceError, match="not the searched keys"):
        resolve(space, group, {"train.lr": 1e-3})
    with pytest.raises(SpaceError, match="model.spec='4' is outside"):
        resolve(space, group, params | {"model.spec": "4"})


def test_resolve_casts_int_ranges_of_float_options():
    s = parse_space(edit("lr: {loguniform: [3.0e-4, 3.0e-3]}", "lr: 1.0e-3\n  grad_clip: "
                         "{int: [1, 3]}"))
    g = s.groups()[0]
    cfg = resolve(s, g, {"model.d_model": 64, "train.grad_clip": 2})
    assert cfg.train.grad_clip == 2.0 and isinstance(cfg.train.grad_clip, float)


def test_make_sampler(space):
    group = space.groups()[2]
    dists = group.optuna_space(space)
    s = space.search
    assert isinstance(make_sampler(s, 1, dists), optuna.samplers.TPESampler)
    rand = SearchSettings(sampler="random")
    assert isinstance(make_sampler(rand, 1), optuna.samplers.RandomSampler)
    grid = SearchSettings(sampler="grid")
    with pytest.raises(SpaceError, match="grid needs .* train.lr"):
        make_sampler(grid, 0, dists)
    gs = parse_space(edit("sampler: tpe", "sampler: grid", edit(
        "{loguniform: [3.0e-4, 3.0e-3]}", "{choice: [1.0e-3, 3.0e-3]}")))
    g = gs.groups()[2]
    sampler = make_sampler(gs.search, 0, g.optuna_space(gs))
    assert isinstance(sampler, optuna.samplers.GridSampler)
    assert g.n_samples(gs) == 8 and gs.groups()[0].n_samples(gs) == 6  # 2 specs x 3 x 2; 3 x 2
    cma = SearchSettings(sampler="cmaes")
    with pytest.warns(UserWarning, match="at random"):
        sampler = make_sampler(cma, 0, dists)
    assert isinstance(sampler, optuna.samplers.CmaEsSampler)
    study = optuna.create_study(sampler=sampler)
    for _ in range(3):  # it really samples (its `cmaes` backend is a dependency)
        trial = study.ask(dists)
        study.tell(trial, trial.params["train.lr"])
    with pytest.raises(SpaceError, match="choices only"):
        make_sampler(cma, 0, {"model.spec": dists["model.spec"]})
    with pytest.raises(SpaceError, match="cmaes samples numeric ranges"):
        parse_space(edit("sampler: tpe", "sampler: cmaes", edit(
            "{loguniform: [3.0e-4, 3.0e-3]}", "1.0e-3")))


@pytest.mark.parametrize("name", ["quickstart", "paper-160m", "recurrence-ratio",
                                  "spiral-isoflop", "spiral-isoflop-mini"])
def test_shipped_spaces(name):
    space = load_space(SPACES / f"{name}.yaml")
    assert space.name == name
    rows = check_candidates(space)
    assert rows and all(b["status"] == "ok" for r in rows for b in r["budgets"])
    if name == "quickstart":  # small numbers, but the size axis and replicates
        assert space.families() == ["plain", "looped", "spiral"]
        assert len(space.budgets) >= 6 and space.resources.cpu == 1  # a frontier fit needs 5
        assert space.sizes.count == 2 and space.search.replicates == 2
        assert len(space.groups()) * space.search.replicates <= 72
    if name.startswith("spiral-isoflop"):  # the study design
        assert space.families() == ["plain", "looped", "spiral"]
        assert space.model["topology"] == "mesh" and space.data["source"] == "corpus:prose"
        decades = math.log10(space.budgets[-1].value / space.budgets[0].value)
        assert len(space.budgets) >= 5 and decades >= (1.5 if name == "spiral-isoflop" else 1)
        assert space.sizes.count >= 5  # an IsoFLOP parabola needs 5
        assert space.search.replicates >= (3 if name == "spiral-isoflop" else 2)
    # equal stored layers: every spec of a shipped comparison stores as many
    if name != "paper-160m":
        assert len({parse_spec(r["spec"]).n_stored for r in rows}) == 1


def test_check_candidates_reports_and_refuses(space):
    rows = check_candidates(space)
    assert len(rows) == 12  # 4 specs x 3 widths
    row = rows[0]
    assert (row["spec"], row["family"], row["model"]["d_model"], row["vocab_size"]) == \
        ("4", "plain", 64, 256)
    ok = row["budgets"][0]
    assert ok["status"] == "ok" and ok["steps"] * 16 * 256 == ok["tokens"]
    assert abs(ok["train_flops"] / 3e12 - 1) < 0.01
    # one step of 4096 tokens: batch 32 (8192 tokens) gets less than one step; rows, no error
    small = parse_space(edit("kind: flops", "kind: tokens", edit(
        "[3.0e12, 1.0e13, 3.0e13]", "[4096]", edit("batch_size: 16", "batch_size: "
                                                   "{choice: [16, 32]}"))))
    rows = check_candidates(small)
    assert len(rows) == 24
    status = {r["batch_size"]: r["budgets"][0]["status"] for r in rows}
    assert status == {16: "ok", 32: "rejected"}
    reason = next(r["budgets"][0]["reason"] for r in rows if r["batch_size"] == 32)
    assert "less than one step" in reason
    # every plain candidate refused: an error naming budget, family and the reason
    tiny = parse_space(edit("[3.0e12, 1.0e13, 3.0e13]", "[3.0e12, 3.0e9]"))
    with pytest.raises(SpaceError, match=r"^budget\.values\[1\]: 3e\+09 FLOPs gives less than "
                       r"one step for every 'plain' candidate \(3\); e\.g\. flops budget"):
        check_candidates(tiny)


def test_params_budget_needs_tokens_and_plans():
    s = parse_space(edit("kind: flops", "kind: params", edit(
        "values: [3.0e12, 1.0e13, 3.0e13]", "values: [2.0e5]\n  tokens: 4096000",
        edit("{choice: [64, 96, 128]}", "64"))))
    assert s.budgets[0].tokens == 4096000.0
    rows = check_candidates(s)
    assert all(abs(r["budgets"][0]["params_non_embedding"] / 2e5 - 1) <= 0.01 for r in rows)
    assert resolve(s, s.groups()[0], {"train.lr": 1e-3}).budget.tokens == 4096000.0


def test_only_true_and_false_are_booleans():
    """YAML 1.1 reads on/off/yes/no as booleans, so `compile: off` would be refused as
    False; spaces read them as the strings they look like (YAML 1.2)."""
    from models import space_yaml

    from spiralsearch.search.space import trial_config

    for value in ("off", "on"):
        space = parse_space(space_yaml("s", train=f"compile: {value}"))
        trial = trial_config(space, space.groups(), {"group": 0, "params": {}})
        assert trial.train.compile == value
    with pytest.raises(SpaceError, match="model.embed_scale: expected true or false, got 'yes'"):
        parse_space(space_yaml("s").replace("n_heads: 2", "n_heads: 2\n  embed_scale: yes"))
