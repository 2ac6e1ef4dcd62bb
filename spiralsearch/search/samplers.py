"""The Optuna sampler of a group's study (search.sampler: tpe, random, grid, cmaes)."""


from __future__ import annotations

import importlib.util
import warnings

import optuna

from spiralsearch.search.space import SearchSettings
from spiralsearch.search.validate import (
    SpaceError,
)


def startup_trials(settings: SearchSettings) -> int:
    """Random trials TPE runs in a cell before its model guides the search. TPE's default
    10 would be every trial of a small cell."""
    return min(10, max(2, settings.samples_per_budget // 3))


def make_sampler(settings: SearchSettings, seed: int | None = None,
                 search_space: dict[str, optuna.distributions.BaseDistribution] | None = None,
                 ) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for settings.sampler, seeded (default settings.seed). grid needs
    `search_space` (a Group's optuna_space) and choices only; cmaes numeric options."""
    seed = settings.seed if seed is None else seed
    space = search_space or {}
    numeric = [k for k, d in space.items()
               if not isinstance(d, optuna.distributions.CategoricalDistribution)]
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(settings))
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        if search_space is None or numeric:
            raise SpaceError(f"search.sampler: grid needs the group's search space, all "
                             f"choices; not choices: {', '.join(numeric) or '(no space)'}")
        return optuna.samplers.GridSampler({k: list(d.choices) for k, d in space.items()},
                                           seed=seed)
    if importlib.util.find_spec("cmaes") is None:
        raise SpaceError("search.sampler: cmaes needs the `cmaes` package (pip install cmaes)")
    if search_space is not None and not numeric:
        raise SpaceError("search.sampler: cmaes samples numeric ranges; this group searches "
                         "choices only: use tpe, random or grid")
    if len(numeric) < len(space):
        warnings.warn("cmaes samples the choices (e.g. model.spec) at random", stacklevel=2)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
