"""The model-size axis of a study (docs/design.md §5.1, the IsoFLOP design of Hoffmann et al.
2022's approach 2): at every budget, every group trains P model sizes to the same budget, so
each budget gives a loss-vs-size curve whose minimum is that budget's compute-optimal size.

    sizes:
      count: 4                 # P sizes per (budget, group)
      span: 8                  # largest / smallest target, log-spaced
      tokens_per_param: 20     # centred on the size that sees 20 tokens per parameter
      params: non_embedding    # what a size counts: non_embedding (stored) or unrolled

or explicit targets: `sizes: {values: [1.0e5, 2.0e5, 4.0e5]}`. A size is a parameter target;
each trial's width is solved for it (training/budget.solve_width: d_model a multiple of
n_heads, then the MLP width, within 1%), and the budget then sets its tokens. The centre is a
guess to place the grid; where the fitted optimum lands at the grid's edge, the analysis says
so and the next grid should move.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from spiralsearch.config import Budget, Config
from spiralsearch.fields import ConfigError, check_keys, check_value, field_specs, opt
from spiralsearch.model.config import ModelConfig
from spiralsearch.training.budget import (
    MAX_D_MODEL,
    PARAM_MEASURES,
    BudgetError,
    param_count,
    solve_width,
    train_flops_per_token,
    widths,
)

__all__ = ["SizeAxis", "centre", "sized_model", "targets"]


@dataclass(frozen=True)
class SizeAxis(Config):
    """P model sizes per (budget, group): log-spaced over `span` around the size that sees
    `tokens_per_param` tokens per parameter at the budget, or explicit `values`."""

    count: int = opt(4, "sizes per (budget, group)", check=lambda v: 1 <= v <= 64,
                     what="an integer in [1, 64]")
    span: float = opt(8.0, "largest / smallest size (log-spaced between)",
                      check=lambda v: v > 1, what="> 1")
    tokens_per_param: float = opt(20.0, "the centre: the size whose training tokens / params "
                                  "equal this at each budget (Chinchilla's ~20)",
                                  check=lambda v: v > 0, what="> 0")
    values: tuple[float, ...] | None = opt(None, "explicit size targets (params), the same at "
                                           "every budget; then count, span and "
                                           "tokens_per_param are not used")
    params: str = opt("non_embedding", "what a size counts: non_embedding (stored) or "
                      "unrolled (each use of the shared core counted)", choices=PARAM_MEASURES)

    @classmethod
    def from_dict(cls, d: Any, path: str = "sizes") -> SizeAxis:
        """The `sizes:` section; `values` is a list of distinct positive numbers."""
        d = check_keys(path, d, tuple(field_specs(cls)))
        values = d.pop("values", None)
        axis = super().from_dict(d, path)
        if values is None:
            return axis
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}.values: need a non-empty list of positive numbers, "
                              f"got {values!r}")
        spec = field_specs(Budget)["value"]  # a positive finite number
        vals = tuple(check_value(f"{path}.values[{i}]", v, spec) for i, v in enumerate(values))
        if len(set(vals)) < len(vals) or list(vals) != sorted(vals):
            raise ConfigError(f"{path}.values: sizes must be distinct and increasing, got "
                              f"{list(vals)}")
        return axis.replace(values=vals, count=len(vals))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return d | {"values": list(self.values) if self.values else None}


def _tokens_per_param(cfg: ModelConfig, budget: Budget, seq_len: int, measure: str) -> float:
    """Training tokens / params of cfg under a flops or tokens budget."""
    n = param_count(cfg, measure)
    tokens = budget.value / train_flops_per_token(cfg, seq_len) if budget.kind == "flops" \
        else budget.value
    return tokens / n


@functools.lru_cache(maxsize=1024)
def centre(cfg: ModelConfig, axis: SizeAxis, budget: Budget, seq_len: int) -> float:
    """The grid's centre (params, by axis.params): the size at which training tokens per
    parameter equal axis.tokens_per_param under `budget`. For a tokens budget that is
    tokens / tokens_per_param; for FLOPs, widths are bisected at the config's MLP ratio
    (tokens per parameter falls as the model grows) and the crossing interpolated in log
    space."""
    if budget.kind == "tokens":
        return budget.value / axis.tokens_per_param
    target = math.log(axis.tokens_per_param)

    def gap(n: int) -> float:  # log(tokens / params) - log(target) at d_model = n x n_heads
        return math.log(_tokens_per_param(widths(cfg, n), budget, seq_len, axis.params)) - target

    lo, hi = 1, 2
    if gap(lo) <= 0:
        raise BudgetError(f"sizes.tokens_per_param: {axis.tokens_per_param:g} is more tokens "
                          f"per parameter than budget {budget} gives spec {cfg.spec} at its "
                          f"narrowest width; lower it or raise the budget")
    while gap(hi) > 0:
        lo, hi = hi, hi * 2
        if hi * cfg.n_heads > MAX_D_MODEL:
            raise BudgetError(f"sizes.tokens_per_param: {axis.tokens_per_param:g} needs "
                              f"d_model > {MAX_D_MODEL} at budget {budget}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    n_lo, n_hi = (math.log(param_count(widths(cfg, m), axis.params)) for m in (lo, hi))
    g_lo, g_hi = gap(lo), gap(hi)
    return math.exp(n_lo + (n_hi - n_lo) * g_lo / (g_lo - g_hi))


def targets(cfg: ModelConfig, axis: SizeAxis, budget: Budget, seq_len: int) -> list[float]:
    """The axis's P size targets (params) at `budget`: its values, or `count` sizes spaced
    evenly in log over `span`, centred on centre() (one size: the centre itself)."""
    if axis.values:
        return list(axis.values)
    c = centre(cfg, axis, budget, seq_len)
    if axis.count == 1:
        return [c]
    return [c * axis.span ** (i / (axis.count - 1) - 0.5) for i in range(axis.count)]


@functools.lru_cache(maxsize=4096)
def sized_model(cfg: ModelConfig, axis: SizeAxis, index: int, budget: Budget,
                seq_len: int) -> ModelConfig:
    """cfg with its width solved for size `index` of the axis at `budget` (within 1% of the
    target, by axis.params). Raises BudgetError, naming the size, when no width gets there."""
    target = targets(cfg, axis, budget, seq_len)[index]
    try:
        return solve_width(cfg, target, axis.params)
    except BudgetError as e:
        raise BudgetError(f"sizes: size {index + 1} of {axis.count} ({target:.4g} "
                          f"{axis.params} params) at budget {budget}: {e}") from None
