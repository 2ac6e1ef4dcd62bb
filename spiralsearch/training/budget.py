"""Matched budgets (docs/design.md §3): turn a FLOP, token or parameter budget into a step count.

- `flops`: training FLOPs; tokens = budget / (3 x forward FLOPs per token at seq_len).
- `tokens`: training tokens.
- `params`: a target non-embedding parameter count; the width solver picks d_model (a multiple
  of n_heads) and then the MLP width that land it within 1%; training length comes from
  `tokens` (a second number the budget carries).

Every plan records target and achieved budget; one whose achieved budget misses its target by
more than 1% (or that gives less than one step) is refused with a `BudgetError`, unless the
budget is snapped (`budget.snap: true`, `train --snap`): then it runs the nearest whole
number of steps, whatever the miss, and `Plan.note` says where the budget moved. The
budget's `value` stays the target (trials of one budget stay one cell); `achieved` is what
the steps spend. Plans past the bounds of spiralsearch/limits.py (steps, tokens per step)
are refused too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from spiralsearch.config import BUDGET_KINDS, Budget, BudgetError
from spiralsearch.limits import LIMITS, at_most, too_large
from spiralsearch.model.config import ModelConfig
from spiralsearch.model.counting import analytic_flops, count_params
from spiralsearch.model.transformer import build_model

__all__ = ["BUDGET_KINDS", "PARAM_MEASURES", "TOLERANCE", "Budget", "BudgetError", "Plan",
           "non_embedding_params", "param_count", "plan", "solve_width", "train_flops_per_token"]

TOLERANCE = 0.01  # relative miss allowed between achieved and target budget


@dataclass(frozen=True)
class Plan:
    """What a budget means for one model: steps to run and what they achieve. `model` is
    the config that trains (a params budget solves its width)."""

    budget: Budget
    steps: int
    tokens_per_step: int
    flops_per_token: float  # training FLOPs per token (3 x forward)
    params_non_embedding: int
    model: ModelConfig

    @property
    def kind(self) -> str:
        return self.budget.kind

    @property
    def target(self) -> float:
        return self.budget.value

    @property
    def achieved(self) -> float:
        """The budget all planned steps achieve, in the budget's unit."""
        return self.achieved_at(self.steps)

    def achieved_at(self, step: int) -> float:
        """The budget spent after `step` steps (FLOPs, tokens, or the parameter count)."""
        tokens = step * self.tokens_per_step
        return float({"flops": tokens * self.flops_per_token, "tokens": tokens,
                      "params": self.params_non_embedding}[self.kind])

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def note(self) -> str | None:
        """Where a snapped budget moved (one line), or None when it was not snapped or its
        whole steps hit it within 0.01%."""
        miss = self.achieved / self.target - 1
        if not self.budget.snap or abs(miss) < 1e-4:
            return None
        return (f"{self.kind} budget {self.target:.4g} snapped to {self.achieved:.4g} "
                f"({miss:+.1%}): {self.steps:,} whole steps of {self.tokens_per_step:,} tokens "
                f"for spec {self.model.spec}")

    @property
    def train_flops(self) -> float:
        return self.tokens * self.flops_per_token

    def to_dict(self) -> dict:
        """Plain form: the budget, steps, tokens, FLOPs and the model that trains."""
        return dict(budget=self.budget.to_dict(), achieved=self.achieved, steps=self.steps,
                    tokens_per_step=self.tokens_per_step, flops_per_token=self.flops_per_token,
                    params_non_embedding=self.params_non_embedding, tokens=self.tokens,
                    train_flops=self.train_flops, model=self.model.to_dict())


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token at `seq_len`: 3 x forward FLOPs of one prefill / seq_len.
    Analytic count, which tests hold equal to fvcore's trace of the real module."""
    return 3 * analytic_flops(cfg, seq_len)["total"] / seq_len


PARAM_MEASURES = ("non_embedding", "unrolled")  # what a size counts (count_params keys)


@functools.lru_cache(maxsize=4096)
def param_count(cfg: ModelConfig, measure: str = "non_embedding") -> int:
    """Parameters of a config by `measure`: non_embedding (stored, less embedding and head)
    or unrolled (non-embedding, each use of the shared core counted). Built on the meta
    device (no memory) and cached: the width solvers ask for the same configs often."""
    with torch.device("meta"):
        return count_params(build_model(cfg))[measure]


def non_embedding_params(cfg: ModelConfig) -> int:
    """Non-embedding parameters of a config (built on the meta device: no memory)."""
    return param_count(cfg, "non_embedding")


def widths(cfg: ModelConfig, n: int) -> ModelConfig:
    """cfg at d_model = n x n_heads (the head count stays, so every width is valid)."""
    return cfg.replace(d_model=n * cfg.n_heads)


MAX_D_MODEL = LIMITS["d_model"].bound


def solve_width(cfg: ModelConfig, target: float, measure: str = "non_embedding") -> ModelConfig:
    """A copy of cfg whose parameter count (by `measure`, see param_count) is within 1% of
    `target`: the d_model (multiple of n_heads) closest to it at the config's MLP ratio,
    then the MLP width that closes the gap. Raises BudgetError when no width gets there."""
    def count(c: ModelConfig) -> int:
        return param_count(c, measure)

    lo, hi = 1, 1
    while count(widths(cfg, hi)) < target:
        lo, hi = hi, hi * 2
        if hi * cfg.n_heads > MAX_D_MODEL:
            raise BudgetError(f"{measure} params {target:.4g} need d_model > {MAX_D_MODEL}")
    while hi - lo > 1:  # largest multiple of h whose count stays below the target
        mid = (lo + hi) // 2
        if count(widths(cfg, mid)) < target:
            lo = mid
        else:
            hi = mid
    best = min((widths(cfg, m) for m in (lo, hi)), key=lambda c: abs(count(c) - target))
    d = best.d_model
    # Fine-tune the MLP width: params are linear in it, so two probes give the slope.
    p0 = count(best.replace(mlp_ratio=(best.d_mlp + 0.5) / d))
    p1 = count(best.replace(mlp_ratio=(best.d_mlp + 1.5) / d))
    d_mlp = max(1, best.d_mlp + round((target - p0) / (p1 - p0)))
    tuned = best.replace(mlp_ratio=(d_mlp + 0.5) / d)
    got = count(tuned)
    if abs(got - target) > TOLERANCE * target:
        raise BudgetError(f"{measure} params {target:.4g} for spec {cfg.spec}: the closest "
                          f"width (d_model {d}) gives {got:,} ({got / target - 1:+.1%}); "
                          f"allowed ±1%")
    return tuned


def plan(cfg: ModelConfig, budget: Budget, *, batch_size: int, seq_len: int) -> Plan:
    """Steps that spend `budget` on `cfg` at batch_size x seq_len tokens per step.
    Raises BudgetError if it gives less than one step, misses the target by over 1% (unless
    the budget is snapped), or runs past the bounds on steps and tokens per step."""
    if batch_size < 1 or seq_len < 1:
        raise BudgetError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    tokens_per_step = batch_size * seq_len
    if not at_most("tokens_per_step", tokens_per_step):
        raise BudgetError(too_large("tokens_per_step", tokens_per_step,
                                    f"batch_size {batch_size} x seq_len {seq_len} ="))
    if budget.kind == "params":
        cfg = solve_width(cfg, budget.value)
    fpt = train_flops_per_token(cfg, seq_len)
    n_params = non_embedding_params(cfg)
    if budget.kind == "flops":
        exact_steps, unit = budget.value / (fpt * tokens_per_step), "training FLOPs"
    else:
        tokens = budget.value if budget.kind == "tokens" else budget.tokens
        exact_steps, unit = tokens / tokens_per_step, "tokens"
    if not at_most("steps", exact_steps):  # before round(): a float, maybe huge
        raise BudgetError(too_large("steps", float(exact_steps), f"{budget.kind} budget "
                                    f"{budget.value:.4g} for spec {cfg.spec} at "
                                    f"{tokens_per_step} tokens a step: steps"))
    steps = round(exact_steps)
    if steps < 1:
        raise BudgetError(f"{budget.kind} budget {budget.value:.4g} gives {exact_steps:.3g} "
                          f"steps of {tokens_per_step} tokens for spec {cfg.spec}: less than "
                          f"{'half a' if budget.snap else 'one'} step; raise the budget or "
                          f"shrink batch_size x seq_len")
    p = Plan(budget, steps, tokens_per_step, fpt, n_params, cfg)
    if budget.snap:
        return p
    snap = "or snap it to whole steps (budget.snap: true; train --snap)"
    if budget.kind == "params":
        length_miss = abs(steps / exact_steps - 1)
        if length_miss > TOLERANCE:
            raise BudgetError(f"budget tokens {budget.tokens:.4g} gives {exact_steps:.3g} "
                              f"steps, {length_miss:.1%} off a whole step; allowed ±1%: {snap}")
    if abs(p.achieved / p.target - 1) > TOLERANCE:
        raise BudgetError(f"{budget.kind} budget {p.target:.4g} for spec {cfg.spec}: whole "
                          f"steps of {tokens_per_step} tokens give {p.achieved:.4g} {unit} "
                          f"({p.achieved / p.target - 1:+.1%}); allowed ±1%: raise the budget, "
                          f"shrink batch_size x seq_len, {snap}")
    return p
