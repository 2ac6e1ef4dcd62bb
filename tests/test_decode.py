import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import VOCAB, examples, jittered, tiny
from models import configs as all_configs

from spiralsearch import ModelConfig, build_model
from spiralsearch.model.decode import Decoder, generate


def configs():
    return all_configs(max_chunk=6, max_iterations=3, max_seq_len=64)



def recompute(model, idx: torch.Tensor, n: int):
    """The naive reference: full forward on the growing sequence, argmax of the last
    position. Returns the tokens (B, L + n) and the logits each was chosen from (B, n, V)."""
    logits = []
    with torch.no_grad():
        for _ in range(n):
            last = model(idx)[:, -1]
            logits.append(last)
            idx = torch.cat([idx, last.argmax(-1, keepdim=True)], dim=1)
    return idx, torch.stack(logits, dim=1)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), L=st.integers(1, 9), n=st.integers(1, 14), prefill=st.booleans(),
       data=st.data())
def test_greedy_generate_equals_full_forward(cfg, L, n, prefill, data):
    model = jittered(cfg, seed=data.draw(st.integers(0, 2**16)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    idx = torch.randint(0, VOCAB, (2, L), generator=g)
    out, logits = generate(model, idx, n, prefill=prefill, return_logits=True)
    expected, expected_logits = recompute(model, idx, n)
    assert out.shape == (2, L + n) and torch.equal(out[:, :L], idx)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-9)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("spec", ["1+1x{1/4@3,1/2@1,1}+1", "0+2x{1/3@1}+0"])
def test_prefill_logits_equal_forward(spec):
    """A whole prompt fed at once gives the forward's logits at every prompt position."""
    model = jittered(tiny(spec, coarse_positions="token"))
    x = torch.randint(0, VOCAB, (3, 23))
    dec = Decoder(model, 3, 23)
    with torch.no_grad():
        torch.testing.assert_close(dec.feed(x[:, :17]), model(x[:, :17]), rtol=0, atol=1e-9)
        for i in range(17, 23):  # then token by token
            torch.testing.assert_close(dec.feed(x[:, i:i + 1])[:, 0], model(x[:, :i + 1])[:, -1],
                                       rtol=0, atol=1e-9)


@pytest.mark.parametrize("spec", ["4", "1+2x{1,1}+1", "1+2x{1/4,1/2,1}+1"])
def test_plain_looped_and_spiral_specs_batched(spec):
    """float32 at init, batch 3: the method on the model agrees with recompute."""
    torch.manual_seed(0)
    model = build_model(tiny(spec)).eval()
    idx = torch.randint(0, VOCAB, (3, 4))
    out = model.generate(idx, 12)
    assert out.shape == (3, 16) and out.dtype == torch.long
    assert torch.equal(out, recompute(model, idx, 12)[0])


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = jittered(tiny("1+1x{1/2,1}+1"))
    idx = torch.randint(0, VOCAB, (2, 3))

    def draw(seed, **kw):
        return model.generate(idx, 15, temperature=1.3, generator=torch.Generator().manual_seed(
            seed), **kw)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    top1 = draw(3, top_k=1)  # top-1 sampling is greedy
    assert torch.equal(top1, model.generate(idx, 15))


def test_zero_new_tokens_returns_the_prompt():
    model = build_model(tiny("2"))
    idx = torch.randint(0, VOCAB, (1, 5))
    assert torch.equal(model.generate(idx, 0), idx)


def test_refuses_to_run_past_max_seq_len():
    model = build_model(tiny("1+1x{1/2}+1", max_seq_len=20))
    idx = torch.randint(0, VOCAB, (1, 8))
    assert model.generate(idx, 12).shape == (1, 20)
    with pytest.raises(ValueError, match="exceeds max_seq_len=20"):
        model.generate(idx, 13)


@pytest.mark.parametrize("spec, options", [
    ("1+2x{1/4@1,1/2,1}+1", {}),
    ("2+1x{1/3@2,1}+1", dict(topology="residual", coarse_positions="token")),
    ("3", {}),
    ("1+1x{1/2,1/4@3}+0", dict(topology="anchor", downsample="mean", upsample="repeat",
                               shift="no_overlap")),
])
def test_decoder_flops_equal_the_decode_count(spec, options):
    """The decoder's real matmul FLOPs per token (torch's FlopCounterMode on the meta device,
    where it counts attention too) equal counting.decode_flops at every position."""
    from torch.utils.flop_counter import FlopCounterMode

    from spiralsearch.model.counting import decode_flops
    from spiralsearch.model.decode import Decoder

    cfg = ModelConfig.from_spec(spec, d_model=32, n_heads=2, vocab_size=50, max_seq_len=64,
                                **options)
    with torch.device("meta"):
        dec = Decoder(build_model(cfg), 1, 24)
        for p in range(24):
            with FlopCounterMode(display=False) as counter:
                dec.feed(torch.zeros(1, 1, dtype=torch.long))
            assert counter.get_total_flops() == decode_flops(cfg, p)["total"], p
