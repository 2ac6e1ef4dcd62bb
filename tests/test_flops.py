import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralsearch import ModelConfig, Spec, build_model
from spiralsearch.cli import main
from spiralsearch.flops import analytic_flops, count_params, describe, fvcore_flops


def tiny(spec, **options) -> ModelConfig:
    base = dict(d_model=32, n_heads=2, vocab_size=50, max_seq_len=4096)
    return ModelConfig.from_spec(spec, **(base | options))


@st.composite
def configs(draw):
    chunks = draw(st.lists(st.integers(1, 16), min_size=0, max_size=4))
    its = tuple((g, draw(st.integers(0, g - 1))) for g in chunks)
    n_loop = draw(st.integers(1, 2)) if its else 0
    spec = Spec(draw(st.integers(0 if its else 1, 2)), n_loop, draw(st.integers(0, 2)), its)
    return tiny(spec, topology=draw(st.sampled_from(["residual", "anchor", "mesh"])),
                downsample=draw(st.sampled_from(["mean", "score"])),
                upsample=draw(st.sampled_from(["repeat", "allocate"])),
                mlp_ratio=draw(st.sampled_from([2.0, 4.0])),
                parallel_residual=draw(st.booleans()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), L=st.integers(1, 300))
def test_fvcore_equals_analytic(cfg, L):
    with torch.device("meta"):
        model = build_model(cfg)
    traced, analytic = fvcore_flops(model, L), analytic_flops(cfg, L)
    for block in ("pre", "loop", "post", "head", "total"):
        assert traced[block] == analytic[block], block


def _attention_coefficient(spec: Spec, d: int) -> int:
    """By hand: both attention products cost 2 * 2 * n^2 * d FLOPs per layer on n positions;
    an iteration at chunk g runs on L/g positions."""
    return 4 * d * (spec.n_pre + spec.n_post) + sum(4 * d * spec.n_loop / g**2
                                                    for g, _ in spec.iterations)


@pytest.mark.parametrize("spec", ["12", "2+4x{1,1}+2", "2+4x{1/8,1/4,1/2,1}+2",
                                  "4+4x{1/16,1/8,1/4,1/2}+4"])
def test_doubling_seq_len(spec):
    """Linear terms double, attention terms quadruple: F(2L) - 2F(L) = 2 c L^2."""
    L = 256  # a multiple of every chunk size
    cfg = tiny(spec)
    f1 = describe(cfg, seq_len=L)["flops_forward"]
    f2 = describe(cfg, seq_len=2 * L)["flops_forward"]
    assert f2 - 2 * f1 == pytest.approx(2 * _attention_coefficient(cfg.spec, 32) * L**2, abs=0)


@pytest.mark.parametrize("topology", ["residual", "anchor", "mesh"])
def test_full_resolution_loop_costs_the_plain_model(topology):
    """All iterations at r=1: the FLOPs of the plain model of the same unrolled depth, plus
    only the topology's own matmuls (MeSH routers: 2 routers x 2*L*d*slots for each of the
    T + 1 = 4 router pairs, the transition included)."""
    L, d = 100, 32
    looped = describe(tiny("1+2x{1,1,1}+1", topology=topology), seq_len=L)
    plain = describe(tiny("8"), seq_len=L)
    routers = 4 * 2 * 2 * L * d * 6 if topology == "mesh" else 0
    assert looped["flops_forward"] == plain["flops_forward"] + routers
    assert looped["params_unrolled"] == plain["params_non_embedding"] + (
        4 * 2 * (d * 6 + 6) if topology == "mesh" else 0)


def test_loop_options_change_nothing_for_a_plain_spec():
    plain = describe("12", "tiny", seq_len=128)
    same = describe("12", "tiny", seq_len=128, topology="mesh", downsample="mean",
                    upsample="repeat", coarse_positions="token", shift="no_overlap")
    assert plain == same


def test_params():
    model = build_model(tiny("1+2x{1/4,1}+1"))
    p = count_params(model)
    core = sum(t.numel() for t in model.core.parameters())
    assert p["total"] == sum(t.numel() for t in model.parameters())
    assert p["non_embedding"] == p["total"] - 2 * 50 * 32
    assert p["unrolled"] == p["non_embedding"] + core


def test_mesh_table5_non_embedding_count():
    """MeSH Table 5's 1.4B `4+8R2+4` MeSH model: Pythia-1.4B's 16 stored layers (2/3 of its
    24) plus 61,470 router parameters."""
    r = describe("4+8x{1,1}+4", "pythia-1.4b", seq_len=64)
    final_norm = 2 * 2048  # the plain count is 24 identical layers plus the final LayerNorm
    per_layer, rest = divmod(1_208_602_624 - final_norm, 24)
    assert rest == 0
    assert r["params_non_embedding"] == 16 * per_layer + final_norm + 61_470 == 805_797_918


def test_describe_keys_and_pythia_scale():
    r = describe("2+4x{1/8,1/4,1/2,1}+2", "pythia-1.4b", seq_len=4096)
    assert r["flops_forward"] == r["flops_forward_analytic"]
    assert r["family"] == "spiral" and r["unrolled_depth"] == 20
    assert r["flops_per_token_train"] == 3 * r["flops_forward"] / 4096
    assert len(r["breakdown"]["analytic"]["iterations"]) == 4


def test_cli_table_and_json(capsys):
    assert main(["describe", "12", "2+4x{1/8,1/4,1/2,1}+2", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "2+4x{1/8,1/4,1/2,1}+2" in out and "spiral" in out and "1.000" in out
    assert main(["describe", "1+2x{1/2,1}+1", "--seq-len", "64", "--json",
                 "--topology", "mesh"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flops_forward"] == describe("1+2x{1/2,1}+1", "tiny", 64,
                                             topology="mesh")["flops_forward"]


@pytest.mark.parametrize("argv, fragment", [
    (["describe", "2+4x{1/8@8}+2"], "offset 8 must be < chunk size 8"),
    (["describe", "12", "--preset", "pythia-7b"], "invalid choice: 'pythia-7b'"),
    (["describe", "12", "--seq-len", "0"], "seq_len must be >= 1"),
    (["describe", "12", "--n-heads", "5"], "n_heads=5 does not divide d_model=64"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
