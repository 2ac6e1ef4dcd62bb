"""The size axis (sizes:, the IsoFLOP design): P model sizes per (budget, group), log-spaced
around the size that sees tokens_per_param tokens per parameter, widths solved within 1% of
their targets, every size trained to the same budget."""

import itertools
import math

import pytest

from spiralsearch.search.candidates import check_candidates
from spiralsearch.search.driver import run_sweep
from spiralsearch.search.space import SpaceError, parse_space, resolve, size_target
from spiralsearch.store import load
from spiralsearch.training.budget import param_count, plan

SPACE = """
name: {name}
data: {{source: "corpus:sotu", seq_len: 32}}
model:
  preset: tiny
  n_heads: 2
  spec: {{choice: ["2", "1+2x{{1/2,1}}+1"]}}
train: {{batch_size: 4, evals: 2, eval_batches: 1, lr: {lr}}}
budget: {{kind: {kind}, values: {budgets}}}
sizes: {sizes}
search: {{group_by: spec, sampler: random, scheduler: none, samples_per_budget: 1,
          replicates: {replicates}}}
resources: {{cpu: 1, gpu: 0}}
"""


def space_text(name="sizes", kind="flops", budgets="[2.0e10, 8.0e10]", lr="3.0e-3",
               sizes="{count: 3, span: 4, tokens_per_param: 20}", replicates=1):
    return SPACE.format(name=name, kind=kind, budgets=budgets, sizes=sizes, lr=lr,
                        replicates=replicates)


def _entries(space):
    return [(row, e) for row in check_candidates(space) for e in row["budgets"]]


def test_every_cell_is_a_budget_group_and_size():
    space = parse_space(space_text())
    groups = space.groups()
    assert len(groups) == 2 * 2 * 3  # budgets x specs x sizes
    assert [g.size for g in groups[:3]] == [0, 1, 2]
    assert groups[0].label == "2 size 1" and groups[0].name == "2"
    assert parse_space(space_text(sizes="null")).sizes is None
    assert all(g.size is None for g in parse_space(space_text(sizes="null")).groups())


@pytest.mark.parametrize("measure", ["non_embedding", "unrolled"])
def test_sizes_are_solved_within_one_percent_at_equal_flops(measure):
    space = parse_space(space_text(sizes=f"{{count: 4, span: 8, params: {measure}}}"))
    cells = {}
    for row, e in _entries(space):
        assert e["status"] == "ok", e["reason"]
        assert abs(e["params_sized"] / e["size_target"] - 1) <= 0.01
        assert e["d_model"] % 2 == 0  # n_heads divides the width: heads stay valid
        assert abs(e["train_flops"] / e["budget"] - 1) <= 0.01  # each size meets the budget
        cells.setdefault((row["spec"], e["budget"]), []).append(e)
    for es in cells.values():
        t = [e["size_target"] for e in es]
        # log-spaced over the span: equal ratios, largest / smallest = span
        assert t[-1] / t[0] == pytest.approx(8.0)
        assert all(b / a == pytest.approx(8.0 ** (1 / 3)) for a, b in itertools.pairwise(t))
        flops = [e["train_flops"] for e in es]
        assert max(flops) / min(flops) - 1 <= 0.01  # equal FLOPs across sizes
        # a bigger model sees fewer tokens at the same FLOPs
        assert [e["tokens"] for e in es] == sorted((e["tokens"] for e in es), reverse=True)


def test_the_grid_is_centred_on_tokens_per_param():
    # an odd count puts a size on the centre: it sees ~tokens_per_param tokens per parameter
    space = parse_space(space_text(sizes="{count: 3, span: 4, tokens_per_param: 10}"))
    for _, e in _entries(space):
        if e["size"] == 1:
            assert e["tokens"] / e["params_sized"] == pytest.approx(10, rel=0.05)
    # a tokens budget: the centre is tokens / tokens_per_param
    space = parse_space(space_text(kind="tokens", budgets="[4096]",
                                   sizes="{count: 1, tokens_per_param: 0.5}"))
    for _, e in _entries(space):
        assert e["size_target"] == pytest.approx(4096 / 0.5)


def test_explicit_sizes_are_the_same_at_every_budget():
    space = parse_space(space_text(sizes="{values: [3.0e3, 6.0e3, 1.2e4]}"))
    assert space.sizes.count == 3
    for _, e in _entries(space):
        assert e["size_target"] == [3e3, 6e3, 1.2e4][e["size"]]
        assert abs(e["params_sized"] / e["size_target"] - 1) <= 0.01


def test_a_trial_config_carries_its_solved_width():
    space = parse_space(space_text())
    for g in space.groups():
        config = resolve(space, g, {})
        target = size_target(space, g, {})
        got = param_count(config.model, "non_embedding")
        assert abs(got / target - 1) <= 0.01
        p = plan(config.model, config.budget, batch_size=4, seq_len=32)
        assert p.model == config.model  # the plan trains the stored width as it is
    # the same cell resolves to the same trial: the width is part of its identity
    g = space.groups()[4]
    assert resolve(space, g, {}).trial_id == resolve(space, g, {}).trial_id
    assert resolve(space, g, {}).trial_id != resolve(space, space.groups()[5], {}).trial_id


@pytest.mark.parametrize(("sizes", "kind", "message"), [
    ("{count: 0}", "flops", r"^sizes\.count: expected an integer in \[1, 64\]"),
    ("{span: 1}", "flops", r"^sizes\.span: expected > 1"),
    ("{spam: 2}", "flops", r"^sizes\.spam: unknown key; did you mean 'span'"),
    ("{params: stored}", "flops", r"^sizes\.params: 'stored' is not one of"),
    ("{values: [2.0e4, 1.0e4]}", "flops", r"^sizes\.values: .*increasing"),
    ("{values: []}", "flops", r"^sizes\.values: need a non-empty list"),
    ("{values: [1.0e4, -1]}", "flops", r"^sizes\.values\[1\]: expected > 0"),
    ("{count: 2}", "params", r"^sizes: a params budget already fixes the size"),
])
def test_bad_size_axes_are_refused_in_one_line(sizes, kind, message):
    text = space_text(sizes=sizes, kind=kind)
    if kind == "params":
        text = text.replace("kind: params, values: [2.0e10, 8.0e10]",
                            "kind: params, values: [2.0e4], tokens: 4096")
    with pytest.raises(SpaceError, match=message) as e:
        parse_space(text)
    assert "\n" not in str(e.value)


def test_a_fixed_width_and_an_unreachable_size_are_refused():
    with pytest.raises(SpaceError, match=r"^model\.d_model: the size axis"):
        parse_space(space_text().replace("n_heads: 2", "n_heads: 2\n  d_model: 32"))
    # no width of a 2-layer model has 10 non-embedding parameters
    space = parse_space(space_text(sizes="{values: [10, 1.0e4]}"))
    with pytest.raises(SpaceError, match=r"^sizes: size 1 of 2 \(10 non_embedding params\)"):
        check_candidates(space)
    # more tokens per parameter than the budget gives even the narrowest model
    space = parse_space(space_text(sizes="{tokens_per_param: 1.0e9}"))
    with pytest.raises(SpaceError, match=r"^sizes\.tokens_per_param: 1e\+09 is more tokens"):
        check_candidates(space)


@pytest.mark.slow
def test_a_sized_sweep_stores_each_cell_and_resumes(tmp_path):
    text = space_text(name="sized", budgets="[1.0e10]", replicates=2,
                      sizes="{count: 2, span: 2, tokens_per_param: 5}")
    text = text.replace('spec: {choice: ["2", "1+2x{1/2,1}+1"]}', 'spec: "2"')
    db = tmp_path / "r.duckdb"
    run_sweep(parse_space(text), results=db, progress=False)
    df = load(db).sort_values(["size_index", "replicate"])
    assert len(df) == 4 and set(df["status"]) == {"complete"}
    assert list(df["size_index"]) == [0, 0, 1, 1] and list(df["replicate"]) == [0, 1, 0, 1]
    assert df["selected"].all()
    for _, r in df.iterrows():  # each trial trains its cell's size, within 1%
        assert abs(r["params_non_embedding"] / r["size_target"] - 1) <= 0.01
        assert math.isfinite(r["final_test_loss"])
    # replicates of a size share its point; the two sizes are two points
    assert df.groupby("size_index")["point_id"].nunique().tolist() == [1, 1]
    assert df["point_id"].nunique() == 2
    # a re-run finds every cell's trials in the store: nothing runs again
    report = run_sweep(parse_space(text), results=db, progress=False)
    assert report.skipped == 4 and len(load(db)) == 4
