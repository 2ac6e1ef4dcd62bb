import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import examples

import spiralsearch.model.counting as counting
from spiralsearch import ModelConfig, Spec, build_model
from spiralsearch.cli import main
from spiralsearch.model.counting import (
    _decode_totals,
    analytic_flops,
    count_params,
    decode_cost,
    decode_flops,
    describe,
    fvcore_flops,
    kv_cache_bytes,
)


def tiny(spec, **options) -> ModelConfig:
    base = dict(d_model=32, n_heads=2, vocab_size=50, max_seq_len=4096)
    return ModelConfig.from_spec(spec, **(base | options))


@st.composite
def configs(draw, closed_at: int | None = None):
    """Random specs, options and offsets; with `closed_at` = L, every offset is chosen so
    that each level's last chunk closes at L tokens, (L + w) % g == 0."""
    chunks = draw(st.lists(st.integers(1, 16), min_size=0, max_size=4))
    its = tuple((g, draw(st.integers(0, g - 1)) if closed_at is None else -closed_at % g)
                for g in chunks)
    n_loop = draw(st.integers(1, 2)) if its else 0
    spec = Spec(draw(st.integers(0 if its else 1, 2)), n_loop, draw(st.integers(0, 2)), its)
    return tiny(spec, topology=draw(st.sampled_from(["residual", "anchor", "mesh"])),
                downsample=draw(st.sampled_from(["mean", "score"])),
                upsample=draw(st.sampled_from(["repeat", "allocate"])),
                mlp_ratio=draw(st.sampled_from([2.0, 4.0])),
                parallel_residual=draw(st.booleans()))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    """MeSH Table 5's 1.4B `4+8R2+4` MeSH model (B = 5): 805,797,918 non-embedding parameters,
    i.e. Pythia-1.4B's 16 stored layers (2/3 of its 24) plus 61,470 router parameters."""
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
    assert main(["describe", "1+2x{1/2,1}+1", "--seq-len", "64", "--format", "json",
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


# --- prefill conventions and decoding --------------------------------------------------


def _layers_at(cfg: ModelConfig, L: int) -> list[int]:
    """Positions each unrolled layer runs on: L for pre/post, L_t for each core use."""
    spec = cfg.spec
    coarse = [math.ceil((L + w) / g) for g, w in spec.iterations for _ in range(spec.n_loop)]
    return [L] * (spec.n_pre + spec.n_post) + coarse


@settings(max_examples=examples(40), deadline=None)
@given(data=st.data(), L=st.integers(1, 300))
def test_decode_sums_to_causal_prefill(data, L):
    """With every level's last chunk closed at L, decoding tokens 0..L-1 one by one costs
    exactly the causal prefill of L tokens, block by block."""
    cfg = data.draw(configs(closed_at=L))
    steps = [decode_flops(cfg, p) for p in range(L)]
    causal = analytic_flops(cfg, L, causal=True)
    for block in ("pre", "transition", "loop", "post", "head", "total"):
        assert sum(s[block] for s in steps) == causal[block], block
    for t, it in enumerate(causal["iterations"]):
        assert sum(s["iterations"][t]["closed"] for s in steps) == it["n_chunks"]
        for part in ("core", "resample", "topology", "total"):
            assert sum(s["iterations"][t][part] for s in steps) == it[part], (t, part)


@settings(max_examples=examples(25), deadline=None)
@given(cfg=configs(), L=st.integers(1, 300))
def test_full_minus_causal_attention(cfg, L):
    """Only attention products differ: per layer on n positions, 2 products x 2 FLOPs x d x
    (n² - n(n+1)/2) pairs = 2·d·n(n-1). fvcore counts the full convention."""
    full, causal = analytic_flops(cfg, L), analytic_flops(cfg, L, causal=True)
    assert analytic_flops(cfg, L, causal=False) == full
    expected = sum(2 * 2 * 32 * (n * n - n * (n + 1) // 2) for n in _layers_at(cfg, L))
    assert full["total"] - causal["total"] == expected
    assert expected == sum(2 * 32 * n * (n - 1) for n in _layers_at(cfg, L))


def test_plain_decode_by_hand():
    """12 layers of d=32, d_mlp=128: 4d² + 2d·d_mlp = 12,288 weights of matmuls per layer
    (2 FLOPs each), attention 2 products x 2 x d per key over p + 1 keys, head 2·d·vocab."""
    cfg = tiny("12")
    for p in (0, 7, 99):
        expected = 12 * (2 * 12_288 + 4 * (p + 1) * 32) + 2 * 32 * 50
        f = decode_flops(cfg, p)
        assert f["total"] == f["pre"] + f["head"] == expected
        assert f["loop"] == f["post"] == 0 and f["iterations"] == []
    cost = decode_cost(cfg, 100)
    assert cost["period"] == 1
    assert cost["flops_per_token"] == cost["flops_per_token_peak"] == decode_flops(cfg, 100)[
        "total"]


def test_coarse_level_runs_the_core_only_when_a_chunk_closes():
    """1/4@1: chunk j ends at token e_j = 4(j+1) - 2, so tokens 2, 6, 10, ... close chunks
    0, 1, 2, ... and the core runs there on one latent against j + 1 cached latents."""
    cfg = tiny("1+2x{1/4@1}+1", topology="residual")
    linear = 2 * 12_288  # one layer on one position
    for p, keys in ((0, 0), (1, 0), (2, 1), (3, 0), (6, 2), (10, 3)):
        it = decode_flops(cfg, p)["iterations"][0]
        assert it["closed"] == (keys > 0) and it["keys"] == keys
        assert it["core"] == (2 * (linear + 4 * keys * 32) if keys else 0)
        assert it["resample"] == 2 * 32 + (2 * 32 * 4 if keys else 0)  # score + allocator


def test_decode_cost_is_the_mean_over_one_period():
    """{1/8,1/4,1/2,1}: period 8, every level closes at tokens 7, 15, ...: over a window of 8
    tokens starting at a multiple of 8, decoding costs causal(L + 8) - causal(L)."""
    cfg = tiny("2+4x{1/8,1/4,1/2,1}+2")
    L = 256
    cost = decode_cost(cfg, L)
    window = [decode_flops(cfg, p)["total"] for p in range(L, L + 8)]
    assert cost["period"] == 8 and cost["flops_per_token"] == sum(window) / 8
    assert cost["flops_per_token_peak"] == max(window) == window[-1]
    assert all(it["closed"] for it in decode_flops(cfg, L + 7)["iterations"])
    causal = [analytic_flops(cfg, n, causal=True)["total"] for n in (L, L + 8)]
    assert 8 * cost["flops_per_token"] == causal[1] - causal[0]
    with pytest.raises(ValueError):
        decode_cost(cfg, -1)


def test_kv_cache_bytes():
    L, d = 1000, 32
    plain = kv_cache_bytes(tiny("12"), L)
    assert plain["total"] == plain["pre"] == 2 * 12 * L * d * 2  # K and V, bf16
    assert kv_cache_bytes(tiny("12"), L, bytes_per_value=4)["total"] == 2 * plain["total"]
    coarse = kv_cache_bytes(tiny("1+2x{1/8@3,1}+1"), L)
    assert [it["n_latents"] for it in coarse["iterations"]] == [126, 1000]  # ⌈1003/8⌉
    assert coarse["iterations"][0]["bytes"] == 2 * 126 * 2 * d * 2
    assert coarse["total"] == (2 + 2 * 126 / L + 2) * L * 2 * d * 2
    spiral = kv_cache_bytes(tiny("2+4x{1/8,1/4,1/2,1}+2"), L)["total"]
    for looped in ("2+4x{1,1,1,1}+2", "2+4x{1,1}+2"):
        assert spiral < kv_cache_bytes(tiny(looped), L)["total"]
    assert decode_cost(tiny("12"), L)["kv_cache"] == plain


def test_describe_decode_and_causal_keys():
    r = describe("2+4x{1/8,1/4,1/2,1}+2", "tiny", seq_len=256)
    cfg = ModelConfig.from_spec("2+4x{1/8,1/4,1/2,1}+2", "tiny")
    assert r["flops_forward_causal"] == analytic_flops(cfg, 256, causal=True)["total"]
    assert r["flops_forward_causal"] < r["flops_forward"] == r["flops_forward_analytic"]
    assert r["decode"] == decode_cost(cfg, 256)
    other = describe("2+4x{1/8,1/4,1/2,1}+2", "tiny", seq_len=256, decode_context=64)
    assert other["decode"] == decode_cost(cfg, 64)
    assert {k: v for k, v in other.items() if k != "decode"} == {
        k: v for k, v in r.items() if k != "decode"}


def test_cli_shows_decode_columns(capsys):
    assert main(["describe", "12", "2+4x{1/8,1/4,1/2,1}+2", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    for header in ("full L×L", "causal", "decode", "per token", "KV", "bf16"):
        assert header in out, header
    assert "2+4x{1/8,1/4,1/2,1}+2" in out  # the spec column is not truncated
    assert main(["describe", "12", "--seq-len", "64", "--decode-context", "32",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decode"] == decode_cost(ModelConfig.from_spec("12", "tiny"), 32)
    assert data["flops_forward_causal"] < data["flops_forward"]


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 11)), min_size=1, max_size=4),
       st.sampled_from(["mesh", "residual", "anchor"]), st.sampled_from(["score", "mean"]),
       st.sampled_from(["allocate", "repeat"]), st.integers(0, 300), st.integers(1, 40))
def test_decode_totals_equal_decode_flops_token_by_token(its, topology, down, up, start, n):
    """decode_cost's vectorised window is decode_flops, the definition, at every token."""
    spec = Spec(1, 2, 1, tuple((g, w % g) for g, w in its))
    cfg = tiny(spec, topology=topology, downsample=down, upsample=up)
    assert _decode_totals(cfg, start, n).tolist() == [
        decode_flops(cfg, p)["total"] for p in range(start, start + n)]


def test_describe_counts_past_the_trace_depth_analytically(monkeypatch):
    """Past FVCORE_MAX_DEPTH unrolled layers describe counts from the config alone (the
    same number, which the traced tests pin), and says so."""
    monkeypatch.setattr(counting, "FVCORE_MAX_DEPTH", 6)
    traced = describe("1+1x{1/2,1,1,1}+1", "tiny", seq_len=64)  # 6 unrolled layers
    deep = describe("1+1x{1/2,1,1,1,1}+1", "tiny", seq_len=64)  # 7
    assert traced["flops_traced"] and traced["breakdown"]["fvcore"] is not None
    assert not deep["flops_traced"] and deep["breakdown"]["fvcore"] is None
    for r in (traced, deep):
        assert r["flops_forward"] == r["flops_forward_analytic"]
    cfg = ModelConfig.from_spec("1+1x{1/2,1,1,1,1}+1", "tiny")
    assert fvcore_flops(build_model(cfg), 64)["total"] == deep["flops_forward"]  # untraced
    assert main(["describe", "1+1x{1/2,1,1,1,1}+1", "--seq-len", "64"]) == 0


@pytest.mark.slow
def test_describe_at_every_bound():
    """The largest spec and widths the bounds allow are described (analytically, on the meta
    device): 3 x 512 layers, 256 iterations, chunks of 65,536 at a period of 65,536,
    d_model 65,536, a vocabulary and a context of 2**20. benchmarks/bench_bounds.py times it."""
    its = ",".join(["1/65536@65535", "1/256", "1/4096"] * 85 + ["1"])
    r = describe(f"512+512x{{{its}}}+512", "tiny", seq_len=1 << 20, d_model=1 << 16,
                 n_heads=1024, mlp_ratio=16.0, vocab_size=1 << 20)
    assert not r["flops_traced"] and r["decode"]["period"] == 65536
    assert r["unrolled_depth"] == 512 + 256 * 512 + 512
    assert r["flops_forward"] > r["flops_forward_causal"] > 0
    assert r["decode"]["flops_per_token_peak"] >= r["decode"]["flops_per_token"] > 0
