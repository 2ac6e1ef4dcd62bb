"""Bounds on every size a spec, a model, a trial or a data source can ask for, in one place
(docs/design.md §1.8). Each is far above any published model, so no real study meets one,
and low enough that `describe` of anything inside them finishes in seconds with bounded
memory, and that nothing is built, tokenized or trained for a typo such as
`2+1000000000x{1}+2`. The spec parser, `ModelConfig`, the config sections, the budget
planner and the data sources check against these and refuse with `too_large(...)`'s one
line, which names the value, the bound and why. Plain Python: nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LIMITS", "Limit", "at_most", "too_large", "within"]


@dataclass(frozen=True)
class Limit:
    """The largest value of one quantity, in its unit, and why it is there."""

    bound: int
    unit: str
    why: str


LIMITS: dict[str, Limit] = {
    # the spec (spiralsearch.model.spec)
    "layers": Limit(512, "layers per block", "5x the deepest published stack (96 layers)"),
    "iterations": Limit(256, "loop iterations", "counts, decoding and describe grow with T"),
    "chunk": Limit(1 << 16, "tokens per chunk", "one latent per 65,536 tokens is coarser than "
                   "most contexts are long"),
    "period": Limit(1 << 16, "tokens (lcm of the chunk sizes)",
                    "decode_cost averages one period of the chunk sizes token by token"),
    "spec_digits": Limit(18, "digits in one number of a spec", "longer is past every other "
                         "bound, and Python refuses to read 4,300 digits"),
    # the model (spiralsearch.model.config)
    "d_model": Limit(1 << 16, "model width", "5x the widest published model (12,288)"),
    "n_heads": Limit(1 << 10, "attention heads", "head_dim = d_model / n_heads"),
    "d_mlp": Limit(1 << 20, "MLP width (mlp_ratio x d_model)", "16x the largest d_model"),
    "vocab_size": Limit(1 << 20, "vocabulary", "4x the largest published vocabularies (256k)"),
    "seq_len": Limit(1 << 20, "tokens of context", "an L x L attention count stays exact "
                     "and describe stays fast"),
    "mesh_slots": Limit(1 << 10, "MeSH buffer slots", "the default is T + 3 <= 259"),
    # a trial (spiralsearch.config, spiralsearch.training.budget)
    "batch_size": Limit(1 << 16, "sequences per step", "a batch is materialised on one device"),
    "tokens_per_step": Limit(1 << 24, "tokens per step (batch_size x seq_len)",
                             "Llama 3 trained at 16M tokens a step"),
    "steps": Limit(10**8, "optimiser steps", "50x the longest published runs"),
    "evals": Limit(10**4, "evaluations per run", "each one also writes a checkpoint"),
    "eval_batches": Limit(10**4, "validation batches per evaluation", "each evaluation "
                          "would take longer than training"),
    "seed": Limit((1 << 32) - 1, "a seed", "Optuna's samplers take 32-bit seeds"),
    "bootstrap": Limit(10**5, "bootstrap draws (fit, report)", "each draw refits the whole "
                       "study"),
    "probe_sequences": Limit(1 << 12, "held-out sequences a probe runs",
                             "they go through the model in one float64 batch"),
    # data (spiralsearch.data.synthetic)
    "synthetic_chars": Limit(1 << 25, "generated chars", "generated in one pass, in memory "
                             "(~30 bytes a char)"),
    "synthetic_depth": Limit(1 << 12, "nesting levels", "a Dyck stack or a PCFG derivation "
                             "is generated level by level"),
    "synthetic_doc": Limit(1 << 16, "chars per Dyck document", "each char is one step of "
                           "the generator's loop"),
    "synthetic_rules": Limit(1 << 10, "PCFG rules or branching per symbol", "every level's "
                             "rules are drawn at once"),
}


def too_large(key: str, value: float, what: str | None = None) -> str:
    """The one-line refusal of `value` for the quantity `key` of LIMITS, e.g. "d_model
    100,000,000 is above the bound of 65,536 (model width: 5x the widest ...)"."""
    lim = LIMITS[key]
    v = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
    return (f"{what or key} {v} is above the bound of {lim.bound:,} ({lim.unit}: {lim.why}; "
            f"spiralsearch/limits.py)")


def at_most(key: str, value: float) -> bool:
    """Whether `value` is within the bound of LIMITS[key]."""
    return value <= LIMITS[key].bound


def within(key: str, lo: int = 1) -> dict:
    """`opt(...)` keywords (check, what) for an integer field bounded by LIMITS[key]: in
    [lo, bound], described with the bound's reason (what the YAML reference shows)."""
    lim = LIMITS[key]
    return dict(check=lambda v: lo <= v <= lim.bound,
                what=f"an integer in [{lo}, {lim.bound:,}] ({lim.unit}: {lim.why})")
