"""Small models shared by the model and decode tests: a tiny config, a float64 model with
every parameter perturbed, and a hypothesis strategy over every schedule and option."""

from __future__ import annotations

import os

import torch
from hypothesis import strategies as st

from spiralsearch import ModelConfig, Spec, build_model

VOCAB = 17


def examples(n: int) -> int:
    """Hypothesis examples for a property test: n, or a quarter of it in `make test-fast`
    (SPIRALSEARCH_TEST_FAST=1), the inner loop; CI always runs all n."""
    return max(5, n // 4) if os.environ.get("SPIRALSEARCH_TEST_FAST") else n


def tiny(spec, max_seq_len: int = 128, **options) -> ModelConfig:
    """d=32, 2 heads, a 17-token vocabulary; options override."""
    base = dict(d_model=32, n_heads=2, vocab_size=VOCAB, rotary_pct=0.5, max_seq_len=max_seq_len)
    return ModelConfig.from_spec(spec, **(base | options))


def jittered(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A float64 model with every parameter perturbed, so zero-initialised scorers,
    allocators and routers cannot hide a leak (or a wrong chunk or slot) behind uniform
    weights."""
    torch.manual_seed(seed)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@st.composite
def configs(draw, max_chunk: int = 8, max_iterations: int = 4, max_seq_len: int = 128):
    """Random specs (offsets included) with every topology, resampler and schedule option."""
    chunks = draw(st.lists(st.integers(1, max_chunk), min_size=1, max_size=max_iterations))
    its = tuple((g, draw(st.integers(0, g - 1))) for g in chunks)
    spec = Spec(draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 2)), its)
    options = dict(
        topology=draw(st.sampled_from(["residual", "anchor", "mesh"])),
        downsample=draw(st.sampled_from(["mean", "score"])),
        upsample=draw(st.sampled_from(["repeat", "allocate"])),
        coarse_positions=draw(st.sampled_from(["chunk", "token"])),
        shift=draw(st.sampled_from(["minimal", "no_overlap"])),
        mesh_init=draw(st.sampled_from(["embed", "loop_input"])),
        parallel_residual=draw(st.booleans()),
        embed_scale=draw(st.booleans()),
    )
    return tiny(spec, max_seq_len=max_seq_len, **options)


def space_yaml(name: str, *, specs=("2", "1+1x{1/2,1}+0"), lr: str | None = "3.0e-3",
               evals: int = 2, train: str = "", budgets: str = "[1024]", batch_size: int = 4,
               seq_len: int = 32, source: str = "corpus:sotu",
               search: str = "sampler: tpe, scheduler: none, samples_per_budget: 1, seed: 0",
               resources: str = "cpu: 1, gpu: 0") -> str:
    """The tiny sweep space the sweep tests share: d=32, 2 heads, byte vocabulary, 32-token
    windows of corpus:sotu, batches of 4, token budgets (1024 tokens: 8 steps); one group
    per family, one trial each (TPE). `train` adds flow-style entries to the train section
    (`"device: cuda"`); `search` and `resources` are those sections' entries; `lr` None
    leaves the learning rate at its default."""
    spec = "{choice: [" + ", ".join(f'"{s}"' for s in specs) + "]}" if len(specs) > 1 \
        else f'"{specs[0]}"'
    entries = [f"batch_size: {batch_size}", f"evals: {evals}", "eval_batches: 1",
               *([f"lr: {lr}"] if lr is not None else []), *([train] if train else [])]
    return (f"name: {name}\n"
            f'data: {{source: "{source}", seq_len: {seq_len}}}\n'
            "model:\n  preset: tiny\n  d_model: 32\n  n_heads: 2\n"
            f"  spec: {spec}\n"
            f"train: {{{', '.join(entries)}}}\n"
            f"budget: {{kind: tokens, values: {budgets}}}\n"
            f"search: {{{search}}}\n"
            f"resources: {{{resources}}}\n")
