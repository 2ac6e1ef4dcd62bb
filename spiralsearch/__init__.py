"""spiralsearch: architecture search and scaling laws for looped, multi-resolution Transformers.

The public API, loaded on first use (so `spiralsearch --help` and the store do not pay for
torch): the model generator (`parse_spec`, `ModelConfig`, `build_model`), counting
(`describe`), one trial's config (`TrialConfig`), training (`train`), results (`load`,
`query`), re-training a stored trial exactly (`rerun`) and scaling-law fits
(`fit_power_law`, `fit_nd`, `frontier`, `compare`, `backtest`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that owns it
_API = {
    "PRESETS": "spiralsearch.model.config", "ModelConfig": "spiralsearch.model.config",
    "build_model": "spiralsearch.model.transformer", "ConfigError": "spiralsearch.fields",
    "Iteration": "spiralsearch.model.spec", "Spec": "spiralsearch.model.spec",
    "SpecError": "spiralsearch.model.spec", "parse_spec": "spiralsearch.model.spec",
    "describe": "spiralsearch.model.counting", "count_params": "spiralsearch.model.counting",
    "TrialConfig": "spiralsearch.config", "Budget": "spiralsearch.config",
    "train": "spiralsearch.training.loop",
    "load": "spiralsearch.store", "query": "spiralsearch.store",
    "rerun": "spiralsearch.search.rerun",
    "fit_power_law": "spiralsearch.analysis.scaling", "frontier": "spiralsearch.analysis.scaling",
    "compare": "spiralsearch.analysis.scaling", "backtest": "spiralsearch.analysis.scaling",
    "fit_nd": "spiralsearch.analysis.scaling_nd",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'spiralsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time (F401 off)
    from spiralsearch.analysis.scaling import backtest, compare, fit_power_law, frontier
    from spiralsearch.analysis.scaling_nd import fit_nd
    from spiralsearch.config import Budget, TrialConfig
    from spiralsearch.fields import ConfigError
    from spiralsearch.model.config import PRESETS, ModelConfig
    from spiralsearch.model.counting import count_params, describe
    from spiralsearch.model.spec import Iteration, Spec, SpecError, parse_spec
    from spiralsearch.model.transformer import build_model
    from spiralsearch.search.rerun import rerun
    from spiralsearch.store import load, query
    from spiralsearch.training.loop import train
