"""Search spaces as YAML (docs/design.md §4): what to sample, under which budgets, and how.

    space = load_space("search_spaces/quickstart.yaml")  # SpaceError on any problem
    rows = check_candidates(space)        # every candidate planned under every budget
    for group in space.groups():          # one per (budget, group): fair frontiers
        dists = group.optuna_space(space)  # {"model.spec": Categorical, "train.lr": Float}
        config = resolve(space, group, params)  # nested dict for TrainConfig.from_dict

Model, data and train options are plain values or distributions: {choice: [...]},
{int: [lo, hi]} (optional step, log), {uniform: [lo, hi]}, {loguniform: [lo, hi]}. Allowed
keys come from the dataclasses (ModelConfig, DataConfig, OptimConfig), so they never drift.
Errors are one line: the key path, the bad value, what is allowed.

What competes is `search.group_by`: family (default), spec, none (one group, 'all'), an
option key with discrete values (model.topology: one group per value), or named groups
(a name plus fixed values: `- {name: coarse-to-fine, model.spec: "2+4x{1/8,1/4,1/2,1}+2"}`).
Every group is crossed with every budget and, with a `sizes:` section (the IsoFLOP axis,
sizes.py), with every model size: a cell is (budget, group, size), and each cell searches,
selects and replicates on its own.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from spiralsearch.config import (
    Budget,
    Config,
    ConfigError,
    DataConfig,
    OptimConfig,
    TrialConfig,
)
from spiralsearch.fields import FieldSpec, check_keys, check_value, opt
from spiralsearch.limits import within
from spiralsearch.model.spec import parse_spec
from spiralsearch.search.sizes import SizeAxis, sized_model, targets
from spiralsearch.search.validate import (
    FAMILIES,
    SECTIONS,
    SpaceError,
    check_budget,
    check_group_by,
    check_model,
    check_placement,
    check_section,
    check_storage,
    read_yaml,
    to_optuna,
    values_of,
)

__all__ = ["Group", "Resources", "SearchSettings", "SearchSpace", "SpaceError", "load_space",
           "parse_space", "resolve", "size_target", "trial_config"]


METRICS = ("val_loss", "best_val_loss", "final_val_bpb")


@dataclass(frozen=True)
class SearchSettings(Config):
    """How trials are proposed and stopped (the `search:` section)."""

    metric: str = opt("val_loss", "what the search minimises (or maximises)", choices=METRICS)
    mode: str = opt("min", "min or max", choices=("min", "max"))
    sampler: str = opt("tpe", "Optuna sampler", choices=("tpe", "random", "grid", "cmaes"))
    scheduler: str = opt("asha", "early stopping: ASHA, or none", choices=("asha", "none"))
    samples_per_budget: int = opt(8, "trials per group (per (budget, group))",
                                  check=lambda v: v >= 1, what=">= 1")
    # str or, for named groups, ((name, ((flat key, value), ...)), ...); parse_space checks
    # it against the space (validate.check_group_by)
    group_by: Any = opt("family", "what competes: family, spec, none (all together), an "
                        "option key with discrete values (model.topology), or a list of "
                        "named groups ({name: NAME, KEY: value, ...})")
    seed: int = opt(0, "sampler seed", **within("seed", 0))
    max_concurrent: int | None = opt(None, "trials at once (null: as resources allow)",
                                     check=lambda v: v >= 1, what=">= 1")
    grace_evals: int = opt(2, "evaluations before ASHA may stop a trial",
                           check=lambda v: v >= 1, what=">= 1")
    replicates: int = opt(1, "runs of each (budget, group)'s selected point: its best "
                          "search trial, then R - 1 re-runs with train.seed + 1 .. + R - 1",
                          check=lambda v: v >= 1, what=">= 1")
    max_failures: int = opt(1, "retries of a trial whose worker died, ran out of memory or "
                            "lost its node (from its last checkpoint); an exception in "
                            "training is not retried", check=lambda v: v >= 0, what=">= 0")
    keep_checkpoints: str = opt("selected", "which trials keep their final checkpoint: "
                                "selected (the replicates of each cell's selected point), "
                                "all, or none", choices=("selected", "all", "none"))


@dataclass(frozen=True)
class Resources(Config):
    """Per trial worker: CPU cores, a GPU or a share of one, and optionally memory; a trial
    trains on `workers` of them (data-parallel when more than 1)."""

    cpu: float = opt(1.0, "CPU cores per trial (per worker with workers > 1)",
                     check=lambda v: v > 0, what="> 0")
    gpu: float = opt(0.0, "GPUs per trial (per worker with workers > 1): 0.5 puts two "
                     "trials on a GPU", check=lambda v: 0 <= v <= 1,
                     what="a fraction in [0, 1] (for K GPUs per trial, use resources.workers: "
                     "K with gpu: 1)")
    memory_gb: float | None = opt(None, "memory a trial may allocate on top of its worker's "
                                  "own (Ray and torch), GiB: Ray schedules by it, and a CPU "
                                  "trial that allocates past it fails as out of memory "
                                  "(null: no limit; per worker with workers > 1)",
                                  check=lambda v: v > 0, what="> 0")
    workers: int = opt(1, "processes one trial trains on, data-parallel (DDP under Ray "
                       "Train; each takes cpu, gpu and memory_gb): every step's batch is "
                       "split over them", check=lambda v: v >= 1, what=">= 1")

    @property
    def trial_cpu(self) -> float:
        """CPU cores one trial holds: cpu on each of its workers."""
        return self.cpu * self.workers

    @property
    def trial_gpu(self) -> float:
        """GPUs one trial holds: gpu on each of its workers."""
        return self.gpu * self.workers


@dataclass(frozen=True)
class Group:
    """Trials that compete: one budget and one group of search.group_by (a family, a spec,
    an option's value, a named group, or 'all'), and with a size axis one of its sizes.
    `specs`: the group's canonical specs; `options`: the other options it fixes, as (flat
    key, value) pairs; `size`: the index on the space's size axis (None without one)."""

    budget: Budget
    name: str
    specs: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()
    size: int | None = None

    @property
    def label(self) -> str:
        """The cell's name in messages and tables: the group, and its size if any."""
        return self.name if self.size is None else f"{self.name} size {self.size + 1}"

    def optuna_space(self, space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
        """Flat keys ("model.spec", "train.lr", ...) of the options the group leaves open."""
        fixed = dict(self.options)
        out = {k: to_optuna(v) for k, v in _searched(space).items()
               if k != "model.spec" and k not in fixed}
        if len(self.specs) > 1:
            out = {"model.spec": optuna.distributions.CategoricalDistribution(self.specs)} | out
        return out

    def fixed(self, space: SearchSpace) -> dict[str, Any]:
        """Flat keys of the fixed options: the space's, and the group's own (model.spec too
        when the group has one spec)."""
        out = {"model.spec": self.specs[0]} if len(self.specs) == 1 else {}
        return out | {f"{s}.{k}": v for s, sec in _sections(space) for k, v in sec.items()
                      if not isinstance(v, dict) and f"{s}.{k}" != "model.family"} \
            | dict(self.options)

    def n_samples(self, space: SearchSpace) -> int:
        """Trials to run: samples_per_budget, capped at the grid's size for grid."""
        n = space.search.samples_per_budget
        if space.search.sampler == "grid":
            n = min(n, math.prod(len(d.choices) for d in self.optuna_space(space).values()))
        return n


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: data, model and train hold plain values or distribution dicts
    ({"choice": [...]}, {"int": [lo, hi], "step", "log"}, {"uniform"|"loguniform": [lo, hi]}),
    specs in canonical form; `budgets`, one Budget per value of the YAML's budget section."""

    name: str
    yaml_text: str
    data: dict
    model: dict
    train: dict
    budgets: tuple[Budget, ...]
    search: SearchSettings
    resources: Resources
    description: str = ""
    sizes: SizeAxis | None = None  # the IsoFLOP axis: P sizes per (budget, group)
    storage: str | None = None  # checkpoints and Tune state: a shared folder (None: local)

    @property
    def specs(self) -> list[str]:
        return values_of(self.model["spec"])

    def family_of(self, spec: str) -> str:
        return self.model.get("family") or parse_spec(spec).family

    def families(self) -> list[str]:
        """Families present, in the order plain, looped, spiral."""
        return [f for f in FAMILIES if f in {self.family_of(s) for s in self.specs}]

    @property
    def budget_kind(self) -> str:
        return self.budgets[0].kind

    def groups(self) -> list[Group]:
        """One group per (budget, group of search.group_by[, size]), budgets in YAML order,
        sizes from smallest to largest."""
        sizes = range(self.sizes.count) if self.sizes else [None]
        return [Group(b, name, specs, options, i) for b in self.budgets
                for name, specs, options in self._group_defs() for i in sizes]

    def _group_defs(self) -> list[tuple[str, tuple[str, ...], tuple]]:
        """(name, specs, other fixed options) of each group, whatever the budget."""
        by, specs = self.search.group_by, tuple(self.specs)
        if by == "none":
            return [("all", specs, ())]
        if by == "family":
            return [(f, tuple(s for s in specs if self.family_of(s) == f), ())
                    for f in self.families()]
        if by == "spec":
            return [(s, (s,), ()) for s in specs]
        if isinstance(by, str):  # an option key: one group per value
            section, name = by.split(".", 1)
            return [(group_label(v), specs, ((by, v),))
                    for v in values_of(getattr(self, section)[name])]
        out = []
        for name, fixed in by:  # named groups
            f = dict(fixed)
            out.append((name, (f.pop("model.spec"),) if "model.spec" in f else specs,
                        tuple(f.items())))
        return out


def group_label(v: Any) -> str:
    """A group's name from an option's value: as YAML writes it."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return str(v)


def _sections(space: SearchSpace):
    return (("model", space.model), ("data", space.data), ("train", space.train))


def _searched(space: SearchSpace) -> dict[str, dict]:
    """Flat key -> distribution dict of every searched option (model.spec included)."""
    return {f"{s}.{k}": v for s, sec in _sections(space) for k, v in sec.items()
            if isinstance(v, dict)}


def _check_combinations(name: str, section: dict[str, Any], cls: type) -> None:
    """Build the section's config for each combination of its values (choices and range
    endpoints, at most 512 combinations) so that a rule between two of its keys (e.g.
    train.micro_batch must divide batch_size) refuses the space now, not a trial later."""
    keys = list(section)
    combos = itertools.islice(itertools.product(*(values_of(section[k]) for k in keys)), 512)
    for combo in combos:
        try:
            cls.from_dict(dict(zip(keys, combo, strict=True)), name)
        except ConfigError as e:
            raise SpaceError(str(e)) from None


def _cross_checks(space: SearchSpace) -> None:
    kinds = {k: next(iter(v)) for k, v in _searched(space).items() if k != "model.spec"}
    if space.search.replicates > 1 and "train.seed" in kinds:
        raise SpaceError(f"search.replicates: {space.search.replicates} re-runs each selected "
                         f"point with train.seed + 1, ..., so train.seed cannot be searched "
                         f"({kinds['train.seed']}); fix train.seed or set replicates: 1")
    if space.sizes is not None:
        _check_sizes(space)
    numeric = [k for k, kind in kinds.items() if kind != "choice"]
    if space.search.sampler == "grid" and numeric:
        raise SpaceError(f"search.sampler: grid needs every searched option to be a choice; "
                         f"{numeric[0]} is {kinds[numeric[0]]}")
    if space.search.sampler == "cmaes" and kinds and not numeric:
        raise SpaceError(f"search.sampler: cmaes samples numeric ranges, and every searched "
                         f"option ({', '.join(kinds)}) is a choice; use tpe, random or grid")
    evals = space.train.get("evals", OptimConfig().evals)
    if space.search.scheduler == "asha" and min(values_of(evals)) < space.search.grace_evals:
        raise SpaceError(f"search.grace_evals: {space.search.grace_evals} is more than "
                         f"train.evals ({min(values_of(evals))}): ASHA could stop nothing")
    for src, tok in itertools.product(*(values_of(space.data.get(k, getattr(DataConfig(), k)))
                                        for k in ("source", "tokenizer"))):
        if src.startswith("tokens:") and tok != "bytes":
            raise SpaceError(f"data.tokenizer: {tok!r} does not apply to the pre-tokenized "
                             f"source {src!r}; leave it out (bytes)")
    for name, cls in (("data", DataConfig), ("train", OptimConfig)):
        _check_combinations(name, getattr(space, name), cls)
    check_placement(space.resources, space.train)
    longest = max(values_of(space.data.get("seq_len", DataConfig().seq_len)))
    shortest = min(values_of(space.model.get("max_seq_len", longest)))
    if shortest < longest:
        raise SpaceError(f"model.max_seq_len: {shortest} is shorter than data.seq_len "
                         f"({longest})")


def _check_sizes(space: SearchSpace) -> None:
    """A size axis solves each trial's width for a budget's FLOPs or tokens."""
    if space.budget_kind == "params":
        raise SpaceError("sizes: a params budget already fixes the size; use budget.kind "
                         "flops (the IsoFLOP design) or tokens")
    if "d_model" in space.model:
        raise SpaceError("model.d_model: the size axis (sizes:) solves each trial's width; "
                         "leave d_model out (n_heads and mlp_ratio set the shape)")


_TEXT = FieldSpec(str, False)


def parse_space(text: str, source: str = "<string>") -> SearchSpace:
    """Validate a search space given as YAML text; SpaceError on any problem, whose message
    starts with the key path and, for a key's problem, ends by pointing to the reference
    (`spiralsearch keys SECTION.`, docs/yaml.md)."""
    try:
        return _parse_space(text, source)
    except SpaceError as e:
        text = str(e)  # about the file itself (YAML syntax, not a mapping): no key to point to
        raise SpaceError(text if text.startswith(f"{source}:") else with_reference(text)) \
            from None


def with_reference(message: str) -> str:
    """A validation message that starts with a key path ("model.d_model: ...", "trian:
    unknown key; ...") with a pointer to that section's reference appended."""
    path = message.split(": ", 1)[0]
    root = re.split(r"[.\[]", path, maxsplit=1)[0]
    if not re.fullmatch(r"[\w.\[\]-]+", path) or (root not in SECTIONS
                                                  and "unknown key" not in message):
        return message  # a YAML syntax error (file:line:col) or a file that cannot be read
    scalar = root in ("name", "description", "storage")  # a top-level key, not a section
    prefix = root if scalar else f"{root}." if root in SECTIONS else ""
    return f"{message} (see `spiralsearch keys{' ' + prefix if prefix else ''}` or docs/yaml.md)"


def _parse_space(text: str, source: str) -> SearchSpace:
    doc = read_yaml(text, source)
    check_keys("", doc, SECTIONS, required=("name", "model", "budget"))
    name = check_value("name", doc["name"], _TEXT)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpaceError(f"name: {name!r} must match [A-Za-z0-9_.-]+")
    data, model = check_section("data", doc.get("data")), check_model(doc["model"])
    train = check_section("train", doc.get("train"))
    budgets = check_budget(doc["budget"])
    search = SearchSettings.from_dict(doc.get("search"), "search")
    search = search.replace(group_by=check_group_by(
        search.group_by, {"model": model, "data": data, "train": train}))
    space = SearchSpace(
        name=name, yaml_text=text, data=data, model=model, train=train, budgets=budgets,
        search=search, resources=Resources.from_dict(doc.get("resources"), "resources"),
        description=check_value("description", doc.get("description", ""), _TEXT),
        sizes=SizeAxis.from_dict(doc["sizes"]) if doc.get("sizes") is not None else None,
        storage=check_storage(doc.get("storage")))
    _cross_checks(space)
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; SpaceError on any problem."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read the search space: {e.strerror}") from None
    return parse_space(text, str(path))


def resolve(space: SearchSpace, group: Group, params: dict[str, Any]) -> TrialConfig:
    """Sampled flat params + the group's fixed values -> the trial's TrialConfig (with a
    size axis, its width solved for the group's size)."""
    config = _unsized(space, group, params)
    if group.size is None:
        return config
    # the width is part of the trial's config (and identity): a rerun trains the same model
    return config.replace(model=sized_model(config.model, space.sizes, group.size,
                                            group.budget, config.data.seq_len))


def size_target(space: SearchSpace, group: Group, params: dict[str, Any]) -> float | None:
    """The size axis's target (params, by sizes.params) of a trial of the group; None
    without a size axis."""
    if group.size is None:
        return None
    config = _unsized(space, group, params)
    return targets(config.model, space.sizes, group.budget, config.data.seq_len)[group.size]


def _unsized(space: SearchSpace, group: Group, params: dict[str, Any]) -> TrialConfig:
    dists = group.optuna_space(space)
    if set(params) != set(dists):
        raise SpaceError(f"resolve: params {sorted(params)} are not the searched keys "
                         f"{sorted(dists)} of group ({group.budget}, {group.label})")
    for k, v in params.items():
        try:
            inside = dists[k]._contains(dists[k].to_internal_repr(v))
        except ValueError:  # a choice that is not one
            inside = False
        if not inside:
            raise SpaceError(f"resolve: {k}={v!r} is outside {dists[k]}")
    out: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    for key, v in (group.fixed(space) | params).items():
        section, name = key.split(".", 1)
        out[section][name] = v
    return TrialConfig.from_dict(out | {"budget": group.budget.to_dict()})


def trial_config(space: SearchSpace, groups: list[Group], trial: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of a Tuner trial's config {"group": i, "params": {...}} and, for a
    replicate, "replicate": r (r >= 1: the same point with train.seed + r)."""
    config = resolve(space, groups[trial["group"]], trial["params"])
    r = trial.get("replicate", 0)
    return config.replace(train=config.train.replace(seed=config.train.seed + r)) if r else config
