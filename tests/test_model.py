import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import VOCAB, configs, examples, jittered, tiny

from spiralsearch import ConfigError, ModelConfig, build_model, parse_spec
from spiralsearch.model.config import PRESET_LAYERS, PRESETS
from spiralsearch.model.resample import n_chunks


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), L=st.integers(1, 29), data=st.data())
def test_strict_causality(cfg, L, data):
    model = jittered(cfg, seed=data.draw(st.integers(0, 2**16)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randint(0, VOCAB, (2, L), generator=g)
    j = data.draw(st.integers(0, L - 1))
    x2 = x.clone()
    x2[:, j] = (x[:, j] + 1 + torch.randint(0, VOCAB - 1, (2,), generator=g)) % VOCAB
    with torch.no_grad():
        y, y2 = model(x), model(x2)
        assert y.shape == (2, L, VOCAB)
        # nothing before j may move; j or later must (the model reads its input). float64
        # noise is ~1e-15; a legit path can be weak (a router giving slot 0 little weight)
        assert (y[:, :j] - y2[:, :j]).abs().max().item() < 1e-10 if j else True
        assert (y[:, j:] - y2[:, j:]).abs().max().item() > 1e-9
        # full-sequence logits == prefix-only logits
        k = data.draw(st.integers(1, L))
        torch.testing.assert_close(model(x[:, :k]), y[:, :k], rtol=0, atol=1e-9)


@pytest.mark.parametrize("topology", ["residual", "anchor", "mesh"])
def test_a_leaky_shift_is_caught(topology, monkeypatch):
    """The property test has teeth: a shift one short of g - 1 leaks the future."""
    cfg = tiny("0+1x{1/4}+1", topology=topology)
    model = jittered(cfg)
    model.resamplers[0].shift = 2
    x = torch.randint(0, VOCAB, (1, 12))
    x2 = x.clone()
    x2[0, 7] = (x[0, 7] + 1) % VOCAB  # last token of chunk 1 (tokens 4..7)
    with torch.no_grad():
        assert (model(x)[0, :7] - model(x2)[0, :7]).abs().max() > 1e-6


def test_unit_resolution_is_plain_looping():
    """g=1, w=0 iterations add no parameters and equal a hand-written loop exactly (the
    residual topology; MeSH adds its routers)."""
    for options in [dict(downsample="score", upsample="allocate", topology="residual"),
                    dict(downsample="mean", upsample="repeat", topology="residual")]:
        looped = build_model(tiny("1+2x{1,1,1}+1", **options))
        plain = build_model(tiny("4", **options))
        assert sum(p.numel() for p in looped.parameters()) == \
            sum(p.numel() for p in plain.parameters())
        x = torch.randint(0, VOCAB, (2, 23))
        with torch.no_grad():
            rope = looped._rope(torch.arange(23), torch.float32)
            h = looped.wte(x)
            h = looped.pre[0](h, rope)
            for _ in range(3):
                for blk in looped.core:
                    h = blk(h, rope)
            h = looped.post[0](h, rope)
            expected = looped.lm_head(looped.ln_f(h))
            assert torch.equal(looped(x), expected)


def test_zero_init_score_and_allocate_equal_mean_and_repeat():
    x = torch.randint(0, VOCAB, (2, 21))
    torch.manual_seed(0)
    learned = build_model(tiny("1+1x{1/4@1,1/3}+1"))
    simple = build_model(tiny("1+1x{1/4@1,1/3}+1", downsample="mean", upsample="repeat"))
    simple.load_state_dict(learned.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(learned(x), simple(x))


@pytest.mark.parametrize("L", [1, 5, 8, 9, 31])
def test_any_length(L):
    model = build_model(tiny("1+1x{1/8@3,1/4,1}+1"))
    assert model(torch.randint(0, VOCAB, (3, L))).shape == (3, L, VOCAB)


def test_chunk_count_and_positions():
    model = build_model(tiny("0+1x{1/4@3}+0", coarse_positions="token"))
    rs = model.resamplers[0]
    assert n_chunks(10, 4, 3) == 4  # chunks: [0], [1..4], [5..8], [9]
    assert rs.positions(10, torch.device("cpu")).tolist() == [0, 4, 8, 9]
    rs.coarse_positions = "chunk"
    assert rs.positions(10, torch.device("cpu")).tolist() == [0, 1, 2, 3]


def test_mesh_init_picks_slot_zero():
    """With a pre block, slot 0 = embeddings and slot 0 = pre-block output differ; without
    one they are the same thing."""
    x = torch.randint(0, VOCAB, (2, 13))
    for spec, differ in (("1+1x{1/2,1}+1", True), ("0+1x{1/2,1}+1", False)):
        a = jittered(tiny(spec, topology="mesh"))
        b = build_model(tiny(spec, topology="mesh", mesh_init="loop_input")).double()
        b.load_state_dict(a.state_dict())
        with torch.no_grad():
            assert (not torch.equal(a(x), b(x))) == differ


@pytest.mark.parametrize("spec", ["1+1x{1/4,1/2,1}+1", "2+1x{1/8@5,1}+1", "1+2x{1/2@1}+0",
                                  "1+1x{1,1}+1", "0+1x{1/4}+1"])
@pytest.mark.parametrize("topology", ["residual", "anchor", "mesh"])
def test_pre_block_output_reaches_the_logits(spec, topology):
    """Perturbing the pre block's output at one position p (float64, at init) changes the
    logits at p or later, for every schedule: with MeSH's transitional cycle the token-level
    pre-block state reaches the loop even when iteration 0 is coarse. The perturbation keeps
    the chunk mean, the case the loop alone would miss."""
    torch.manual_seed(0)
    model = build_model(tiny(spec, topology=topology)).double().eval()
    L, p = 16, 9
    x = torch.randint(0, VOCAB, (1, L))
    delta = torch.zeros(1, L, 32, dtype=torch.float64)
    v = 1e-3 * torch.randn(32, dtype=torch.float64)  # not constant: LayerNorm would remove it
    delta[0, p], delta[0, p ^ 1] = v, -v  # p and its pair-mate: the chunk mean is kept
    last = model.pre[-1] if model.pre else model.wte
    with torch.no_grad():
        y = model(x)
        handle = last.register_forward_hook(lambda m, i, out: out + delta)
        y2 = model(x)
        handle.remove()
    moved = (y - y2).abs().amax(-1)[0]
    assert moved[p:].max().item() > 1e-9
    assert moved[:min(p, p ^ 1)].max().item() < 1e-12 if min(p, p ^ 1) else True


def test_mesh_router_pairs_are_t_plus_one():
    """MeSH has T + 1 router pairs (the transition, then one per iteration), B = T + 3 slots."""
    model = build_model(tiny("1+2x{1/4,1/2,1}+1"))  # mesh is the default
    assert model.cfg.topology == "mesh"
    assert len(model.topology.write) == len(model.topology.read) == 4
    assert model.topology.write[0].out_features == 6
    plain = build_model(tiny("4"))
    assert not list(plain.topology.parameters())  # no loop, no routers


def test_mesh_table5_router_parameters():
    """MeSH Table 5: the 1.4B `4+8R2+4` MeSH model (B = 5 slots) has 61,470 router
    parameters: 3 pairs of d x B linear maps with biases."""
    with torch.device("meta"):
        model = build_model(ModelConfig.from_spec("4+8x{1,1}+4", "pythia-1.4b"))
    assert sum(p.numel() for p in model.topology.parameters()) == 61_470
    looped_residual = ModelConfig.from_spec("4+8x{1,1}+4", "pythia-1.4b", topology="residual")
    with torch.device("meta"):
        base = build_model(looped_residual)
    extra = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in base.parameters())
    assert extra == 61_470


def test_embed_scale_multiplies_the_embeddings():
    x = torch.randint(0, VOCAB, (1, 7))
    torch.manual_seed(0)
    a = build_model(tiny("2", embed_scale=True))
    b = build_model(tiny("2"))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.wte.weight.mul_(32 ** 0.5)
        torch.testing.assert_close(a(x), b(x))


def test_plain_and_looped_share_one_class():
    assert type(build_model(tiny("4"))) is type(build_model(tiny("1+2x{1/2,1}+1")))


@pytest.mark.parametrize("preset, expected", [
    ("pythia-160m", 85_056_000), ("pythia-410m", 302_311_424),
    ("pythia-1b", 805_736_448), ("pythia-1.4b", 1_208_602_624)])
def test_pythia_non_embedding_params(preset, expected):
    with torch.device("meta"):
        model = build_model(ModelConfig.from_spec(str(PRESET_LAYERS[preset]), preset))
    total = sum(p.numel() for p in model.parameters())
    assert total - model.wte.weight.numel() - model.lm_head.weight.numel() == expected


def test_presets_and_overrides():
    cfg = ModelConfig.from_spec("2+4x{1/8,1/4,1/2,1}+2", "pythia-160m", d_model=512, n_heads=8)
    assert (cfg.d_model, cfg.n_heads, cfg.vocab_size) == (512, 8, 50304)
    assert cfg.parallel_residual and PRESETS["tiny"]["vocab_size"] == 256
    assert cfg.spec == parse_spec("2+4x{1/8,1/4,1/2,1}+2")


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(topology="ring"), "topology='ring' is not one of residual, anchor, mesh"),
    (dict(n_heads=5), "n_heads=5 does not divide d_model=64"),
    (dict(upsample="nearest"), "upsample='nearest'"),
    (dict(widht=3), "unknown model option(s) widht"),
])
def test_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        ModelConfig.from_spec("1+1x{1/2}+1", "tiny", **kwargs)
    assert fragment in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'pythia-7b'"):
        ModelConfig.from_spec("12", "pythia-7b")


def test_readme_example_runs():
    """examples/quickstart_model.py is the README's example, line for line."""
    import pathlib
    import runpy

    example = pathlib.Path(__file__).parents[1] / "examples" / "quickstart_model.py"
    code = example.read_text().split('"""', 2)[2].strip()
    readme = (example.parents[1] / "README.md").read_text()
    assert code in readme
    runpy.run_path(str(example))
