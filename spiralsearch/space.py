"""Search spaces as YAML (DESIGN.md §4): what to sample, under which budgets, and how.

    space = load_space("search_spaces/quickstart.yaml")  # SpaceError on any problem
    rows = check_candidates(space)        # every candidate planned under every budget
    for group in space.groups():          # one per (budget, family): fair frontiers
        dists = group.optuna_space(space)  # {"model.spec": Categorical, "train.lr": Float}
        config = resolve(space, group, params)  # nested dict for TrainConfig.from_dict

Model, data and train options are plain values or distributions: {choice: [...]},
{int: [lo, hi]} (optional step, log), {uniform: [lo, hi]}, {loguniform: [lo, hi]}. Allowed
keys come from the dataclasses (ModelConfig, DataConfig, OptimConfig), so they never drift.
Errors are one line: the key path, the bad value, what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from spiralsearch.budget import (
    BUDGET_KINDS,
    Budget,
    BudgetError,
    non_embedding_params,
    plan,
    train_flops_per_token,
)
from spiralsearch.model import CHOICES, PRESETS, ConfigError, ModelConfig
from spiralsearch.sources import DataError, parse_source
from spiralsearch.spec import SpecError, parse_spec
from spiralsearch.train import DataConfig, OptimConfig

__all__ = ["Group", "Resources", "SearchSettings", "SearchSpace", "SpaceError",
           "check_candidates", "load_space", "make_sampler", "parse_space", "resolve"]

SECTIONS = ("name", "description", "data", "model", "train", "budget", "search", "resources")
DISTRIBUTIONS = ("choice", "int", "uniform", "loguniform")
FAMILIES = ("plain", "looped", "spiral")
ENUMS = {"search.metric": ("val_loss", "best_val_loss", "final_val_bpb"),
         "search.mode": ("min", "max"), "search.sampler": ("tpe", "random", "grid", "cmaes"),
         "search.scheduler": ("asha", "none"), "search.group_by": ("family", "none"),
         "budget.kind": BUDGET_KINDS, "model.family": FAMILIES, "model.preset": tuple(PRESETS),
         **{f"model.{k}": v for k, v in CHOICES.items()}}
_GT0, _GE1 = (lambda v: v > 0, "> 0"), (lambda v: v >= 1, ">= 1")
_GE0, _UNIT = (lambda v: v >= 0, ">= 0"), (lambda v: 0 <= v <= 1, "a value in [0, 1]")
_BETA = (lambda v: 0 <= v < 1, "a value in [0, 1)")
# Domain checks beyond the type, by flat key (model options are checked by ModelConfig).
DOMAIN = {
    "data.seq_len": _GE1, "data.val_fraction": (lambda v: 0 < v < 1, "a value in (0, 1)"),
    "data.tokenizer": (lambda v: v == "bytes" or bool(re.fullmatch(r"bpe:\d+", v))
                       and int(v[4:]) >= 256, "'bytes' or 'bpe:N' with N >= 256"),
    "train.lr": _GT0, "train.batch_size": _GE1, "train.weight_decay": _GE0,
    "train.beta1": _BETA, "train.beta2": _BETA, "train.warmup_frac": _UNIT,
    "train.min_lr_frac": _UNIT, "train.grad_clip": _GT0, "train.evals": _GE1,
    "train.eval_batches": _GE1, "train.threads": _GE0,
    "train.device": (lambda v: bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)),
                     "auto, cpu, cuda or cuda:N"),
    "budget.values": _GT0, "budget.tokens": _GT0, "search.samples_per_budget": _GE1,
    "search.max_concurrent": _GE1, "search.grace_evals": _GE1, "resources.cpu": _GT0,
    "resources.gpu": (lambda v: v >= 0 and (v <= 1 or v == int(v)),
                      "a fraction in [0, 1] or a whole number of GPUs"),
}
_UNITS = {"flops": "FLOPs", "tokens": "tokens", "params": "params"}
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class SpaceError(ValueError):
    """A search space that cannot run; the one-line message starts with the key path."""


class _Loader(yaml.SafeLoader):
    """Reads `3e12` as a float (PyYAML's YAML 1.1 wants `3.0e12`) and refuses duplicate keys
    (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for k, _ in node.value:  # before merges (`<<`), whose keys may be overridden
            if isinstance(k, yaml.ScalarNode) and k.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {k.value!r}", k.start_mark)
            seen.add(getattr(k, "value", None))
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _read_yaml(text: str, source: str) -> dict:
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SpaceError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{source}: expected a mapping of sections, got {doc!r:.60}")
    return doc


# --- values and distributions -----------------------------------------------------------------

def _keys(path: str, d: Any, allowed, required=()) -> dict:
    """d as a mapping whose keys are allowed (did-you-mean otherwise) and include required."""
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise SpaceError(f"{path}: expected a mapping, got {d!r}")
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpaceError(f"{path + '.' if path else ''}{k}: unknown key; {hint}"
                             f"(allowed: {', '.join(allowed)})")
    for k in required:
        if k not in d:
            raise SpaceError(f"{path + '.' if path else ''}{k}: required key missing")
    return d


def _one_of(path: str, value: Any, allowed) -> Any:
    if value not in allowed:
        raise SpaceError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def _types(cls) -> dict[str, tuple[type, bool]]:
    """Field name -> (type, nullable) from a dataclass's annotations."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        base = [a for a in args if a is not type(None)]
        out[name] = (base[0], len(base) < len(args))
    return out


def _value(path: str, flat: str, value: Any, tp: tuple[type, bool]) -> Any:
    """A plain value of option `flat` (e.g. "train.lr") at `path`: type, enum, domain."""
    base, nullable = tp
    if value is None and nullable:
        return None
    if not {int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            bool: isinstance(value, bool), str: isinstance(value, str)}.get(base, True):
        raise SpaceError(f"{path}: expected {_WORDS[base]}{' or null' if nullable else ''}, "
                         f"got {value!r}")
    v = float(value) if base is float else value  # YAML `1` for a float option
    if flat in ENUMS:
        _one_of(path, v, ENUMS[flat])
    test, what = DOMAIN.get(flat, (None, ""))
    if test is not None and not test(v):
        raise SpaceError(f"{path}: expected {what}, got {v!r}")
    if flat == "data.source":
        try:
            parse_source(v)
        except DataError as e:
            raise SpaceError(f"{path}: {e}") from None
    return v


def _distinct(path: str, values: list, shown: list[str]) -> None:
    for i, v in enumerate(values):
        if values.index(v) < i:
            raise SpaceError(f"{path}[{i}]: {shown[i]} repeats {path}[{values.index(v)}]")


def _choice(path: str, d: dict) -> list:
    if not isinstance(d["choice"], list) or not d["choice"]:
        raise SpaceError(f"{path}.choice: need a non-empty list, got {d['choice']!r}")
    return d["choice"]


def _option(flat: str, v: Any, tp: tuple[type, bool]) -> Any:
    """A validated value or distribution dict; every value it can give is checked."""
    if not isinstance(v, dict):
        return _value(flat, flat, v, tp)
    kinds = [k for k in v if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        _keys(flat, {k: 0 for k in v if k not in ("step", "log")}, DISTRIBUTIONS)
        raise SpaceError(f"{flat}: give one of {', '.join(DISTRIBUTIONS)}, got {list(v)}")
    kind, base, p = kinds[0], tp[0], f"{flat}.{kinds[0]}"
    _keys(flat, v, (kind, "step", "log") if kind == "int" else (kind,))
    if kind == "choice":
        out = [_value(f"{p}[{i}]", flat, x, tp) for i, x in enumerate(_choice(flat, v))]
        _distinct(p, out, [repr(x) for x in out])
        return {"choice": out}
    if base not in (int, float) or kind != "int" and base is int:
        use = "{int: [lo, hi]}" if base is int else "a value or {choice: [...]}"
        raise SpaceError(f"{p}: {flat} takes {_WORDS[base]}; use {use}")
    pair = v[kind]
    if not (isinstance(pair, list) and len(pair) == 2):
        raise SpaceError(f"{p}: need [lo, hi], got {pair!r}")
    lo, hi = (_value(f"{p}[{i}]", "", x, (int if kind == "int" else float, False))
              for i, x in enumerate(pair))
    if not lo < hi or kind == "loguniform" and lo <= 0:
        zero = "0 < " if kind == "loguniform" else ""
        raise SpaceError(f"{p}: need [lo, hi] with {zero}lo < hi, got {pair!r}")
    for x in (lo, hi):
        _value(p, flat, x, tp)
    if kind != "int":
        return {kind: [lo, hi]}
    step = _value(f"{flat}.step", "", v.get("step", 1), (int, False))
    log = _value(f"{flat}.log", "", v.get("log", False), (bool, False))
    if step < 1 or (hi - lo) % step or log and step != 1:
        raise SpaceError(f"{flat}.step: need an integer >= 1 that divides hi - lo = "
                         f"{hi - lo} (and 1 with log), got {step}")
    if log and lo < 1:
        raise SpaceError(f"{p}: a log range needs lo >= 1, got {pair!r}")
    return {"int": [lo, hi], "step": step, "log": log}


def _values(v: Any) -> list:
    """What the candidate check enumerates: a value, every choice, or a range's endpoints."""
    if not isinstance(v, dict):
        return [v]
    return v["choice"] if "choice" in v else v[next(k for k in DISTRIBUTIONS if k in v)]


def _every(v: Any) -> list:
    """Every value a model option can take, where few (an odd d_model between two good
    endpoints must not slip through); else as `_values`."""
    if isinstance(v, dict) and "int" in v and (v["int"][1] - v["int"][0]) // v["step"] <= 256:
        return list(range(v["int"][0], v["int"][1] + 1, v["step"]))
    return _values(v)


def _to_optuna(v: dict) -> optuna.distributions.BaseDistribution:
    D = optuna.distributions
    if "choice" in v:
        return D.CategoricalDistribution(v["choice"])
    if "int" in v:
        return D.IntDistribution(*v["int"], log=v["log"], step=v["step"])
    kind = next(iter(v))
    return D.FloatDistribution(*v[kind], log=kind == "loguniform")


# --- sections ---------------------------------------------------------------------------------

_MODEL_TYPES = {k: t for k, t in _types(ModelConfig).items() if k != "spec"}
_MODEL_TYPES |= {"preset": (str, False), "family": (str, False)}
_MODEL_KEYS = ("spec", "preset", *(f.name for f in dataclasses.fields(ModelConfig)
                                   if f.name != "spec"), "family")


def _section(name: str, raw: Any, cls) -> dict:
    """data or train: fields of `cls`, each a value or a distribution."""
    tps = _types(cls)
    return {k: _option(f"{name}.{k}", v, tps[k])
            for k, v in _keys(name, raw, tuple(tps)).items()}


def _spec(path: str, text: Any) -> str:
    """Canonical spec text, so '12' and '6+0x{}+6' are one candidate."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)  # `spec: 12` unquoted
    try:
        return str(parse_spec(text))
    except SpecError as e:
        raise SpaceError(f"{path}: {e}") from None


def _model(raw: Any) -> dict:
    d = _keys("model", raw, _MODEL_KEYS, required=("spec",))
    out: dict[str, Any] = {k: _option(f"model.{k}", v, _MODEL_TYPES[k])
                           for k, v in d.items() if k != "spec"}
    spec = d["spec"]
    if isinstance(spec, dict):
        given = _choice("model.spec", _keys("model.spec", spec, ("choice",), ("choice",)))
        specs = [_spec(f"model.spec.choice[{i}]", s) for i, s in enumerate(given)]
        shown = [repr(g) + (f" (= {c!r})" if str(g) != c else "")
                 for g, c in zip(given, specs, strict=True)]
        _distinct("model.spec.choice", specs, shown)
        out["spec"] = {"choice": specs}
    else:
        out["spec"] = _spec("model.spec", spec)
    if isinstance(out.get("family"), dict):
        raise SpaceError("model.family: one family for the whole space, not a distribution")
    for s in _values(out["spec"]):
        if out.get("family", parse_spec(s).family) != parse_spec(s).family:
            raise SpaceError(f"model.family: {out['family']!r}, but spec {s!r} is a "
                             f"{parse_spec(s).family!r} model")
    _check_builds(out)
    return out


def _check_builds(model: dict) -> None:
    """Every combination of the model options' values (all of a small int range, else its
    endpoints) builds a ModelConfig: catches d_model / n_heads clashes before any trial."""
    opts = {k: v for k, v in model.items() if k not in ("spec", "family")}
    searched = {k: _every(v) for k, v in opts.items() if isinstance(v, dict)}
    if math.prod(map(len, searched.values())) > 100_000:
        searched = {k: _values(opts[k]) for k in searched}
    for combo in itertools.product(*searched.values()):
        o = {k: v for k, v in opts.items() if k not in searched} | dict(zip(searched, combo,
                                                                             strict=True))
        try:
            ModelConfig.from_spec(_values(model["spec"])[0], o.pop("preset", None), **o)
        except ConfigError as e:
            if len(searched) == 1:  # one searched option: name its path
                (k, x), = zip(searched, combo, strict=True)
                kind = next(iter(opts[k]))
                at = f"choice[{opts[k]['choice'].index(x)}]" if kind == "choice" else \
                    f"{kind} (at {x!r})"
                raise SpaceError(f"model.{k}.{at}: {e}") from None
            what = ", ".join(f"{k}={v!r}" for k, v in zip(searched, combo, strict=True))
            raise SpaceError(f"model: {what or 'the fixed options'}: {e}") from None


def _budget(raw: Any) -> tuple[str, tuple[float, ...], float | None]:
    d = _keys("budget", raw, ("kind", "values", "value", "tokens"), required=("kind",))
    kind = _value("budget.kind", "budget.kind", d["kind"], (str, False))
    if ("values" in d) == ("value" in d):
        raise SpaceError("budget.values: give either values (a list of positive numbers) "
                         "or a single value")
    raw_values = d["values"] if "values" in d else [d["value"]]
    if not isinstance(raw_values, list) or not raw_values:
        raise SpaceError(f"budget.values: need a non-empty list of positive numbers, "
                         f"got {raw_values!r}")
    paths = [f"budget.values[{i}]" if "values" in d else "budget.value"
             for i in range(len(raw_values))]
    values = [_value(p, "budget.values", v, (float, False))
              for p, v in zip(paths, raw_values, strict=True)]
    _distinct("budget.values", values, [f"{v:g}" for v in values])
    if kind != "params":
        if "tokens" in d:
            raise SpaceError(f"budget.tokens: only for kind: params (kind is {kind!r})")
        return kind, tuple(values), None
    if "tokens" not in d:
        raise SpaceError("budget.tokens: required with kind: params (training tokens per "
                         "trial)")
    return kind, tuple(values), _value("budget.tokens", "budget.tokens", d["tokens"],
                                       (float, False))


@dataclass(frozen=True)
class SearchSettings:
    """How trials are proposed and stopped: samples_per_budget trials per group (per
    (budget, family) with group_by family); grace_evals evaluations before ASHA may stop a
    trial; max_concurrent trials at once (None: as many as resources allow)."""

    metric: str = "val_loss"
    mode: str = "min"
    sampler: str = "tpe"
    scheduler: str = "asha"
    samples_per_budget: int = 8
    group_by: str = "family"
    seed: int = 0
    max_concurrent: int | None = None
    grace_evals: int = 2


@dataclass(frozen=True)
class Resources:
    """Per trial: CPU cores and GPUs (a fraction shares one GPU; more than 1, whole GPUs)."""

    cpu: float = 1.0
    gpu: float = 0.0


def _settings(name: str, raw: Any, cls):
    tps = _types(cls)
    d = _keys(name, raw, tuple(tps))
    return cls(**{k: _value(f"{name}.{k}", f"{name}.{k}", v, tps[k]) for k, v in d.items()})


# --- the space --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """Trials that compete: one budget value and one family ('all' when search.group_by is
    none); `specs` are the group's canonical specs."""

    budget: float
    family: str
    specs: tuple[str, ...]

    def optuna_space(self, space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
        """Flat keys ("model.spec", "train.lr", ...) of the searched options only."""
        out = {k: _to_optuna(v) for k, v in _searched(space).items() if k != "model.spec"}
        if len(self.specs) > 1:
            out = {"model.spec": optuna.distributions.CategoricalDistribution(self.specs)} | out
        return out

    def fixed(self, space: SearchSpace) -> dict[str, Any]:
        """Flat keys of the fixed options (model.spec too when the group has one spec)."""
        out = {"model.spec": self.specs[0]} if len(self.specs) == 1 else {}
        return out | {f"{s}.{k}": v for s, sec in _sections(space) for k, v in sec.items()
                      if not isinstance(v, dict) and f"{s}.{k}" != "model.family"}

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
    specs in canonical form. Budget values are FLOPs, tokens or non-embedding parameters;
    budget_tokens is the training length of a params budget."""

    name: str
    yaml_text: str
    data: dict
    model: dict
    train: dict
    budget_kind: str
    budget_values: tuple[float, ...]
    budget_tokens: float | None
    search: SearchSettings
    resources: Resources
    description: str = ""

    @property
    def specs(self) -> list[str]:
        return _values(self.model["spec"])

    def family_of(self, spec: str) -> str:
        return self.model.get("family") or parse_spec(spec).family

    def families(self) -> list[str]:
        """Families present, in the order plain, looped, spiral."""
        return [f for f in FAMILIES if f in {self.family_of(s) for s in self.specs}]

    def groups(self) -> list[Group]:
        if self.search.group_by == "none":
            return [Group(b, "all", tuple(self.specs)) for b in self.budget_values]
        return [Group(b, f, tuple(s for s in self.specs if self.family_of(s) == f))
                for b in self.budget_values for f in self.families()]


def _sections(space: SearchSpace):
    return (("model", space.model), ("data", space.data), ("train", space.train))


def _searched(space: SearchSpace) -> dict[str, dict]:
    """Flat key -> distribution dict of every searched option (model.spec included)."""
    return {f"{s}.{k}": v for s, sec in _sections(space) for k, v in sec.items()
            if isinstance(v, dict)}


def _cross_checks(space: SearchSpace) -> None:
    kinds = {k: next(iter(v)) for k, v in _searched(space).items() if k != "model.spec"}
    numeric = [k for k, kind in kinds.items() if kind != "choice"]
    if space.search.sampler == "grid" and numeric:
        raise SpaceError(f"search.sampler: grid needs every searched option to be a choice; "
                         f"{numeric[0]} is {kinds[numeric[0]]}")
    if space.search.sampler == "cmaes" and kinds and not numeric:
        raise SpaceError(f"search.sampler: cmaes samples numeric ranges, and every searched "
                         f"option ({', '.join(kinds)}) is a choice; use tpe, random or grid")
    evals = space.train.get("evals", OptimConfig.evals)
    if space.search.scheduler == "asha" and min(_values(evals)) < space.search.grace_evals:
        raise SpaceError(f"search.grace_evals: {space.search.grace_evals} is more than "
                         f"train.evals ({min(_values(evals))}): ASHA could stop nothing")
    for src, tok in itertools.product(*(_values(space.data.get(k, getattr(DataConfig, k)))
                                        for k in ("source", "tokenizer"))):
        if src.startswith("tokens:") and tok != "bytes":
            raise SpaceError(f"data.tokenizer: {tok!r} does not apply to the pre-tokenized "
                             f"source {src!r}; leave it out (bytes)")
    longest = max(_values(space.data.get("seq_len", DataConfig.seq_len)))
    shortest = min(_values(space.model.get("max_seq_len", longest)))
    if shortest < longest:
        raise SpaceError(f"model.max_seq_len: {shortest} is shorter than data.seq_len "
                         f"({longest})")


def parse_space(text: str, source: str = "<string>") -> SearchSpace:
    """Validate a search space given as YAML text; SpaceError on any problem."""
    doc = _read_yaml(text, source)
    _keys("", doc, SECTIONS, required=("name", "model", "budget"))
    name = _value("name", "", doc["name"], (str, False))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpaceError(f"name: {name!r} must match [A-Za-z0-9_.-]+")
    kind, values, tokens = _budget(doc["budget"])
    space = SearchSpace(
        name=name, yaml_text=text, data=_section("data", doc.get("data"), DataConfig),
        model=_model(doc["model"]), train=_section("train", doc.get("train"), OptimConfig),
        budget_kind=kind, budget_values=values, budget_tokens=tokens,
        search=_settings("search", doc.get("search"), SearchSettings),
        resources=_settings("resources", doc.get("resources"), Resources),
        description=_value("description", "", doc.get("description", ""), (str, False)))
    _cross_checks(space)
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; SpaceError on any problem."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read the search space: {e.strerror}") from None
    return parse_space(text, str(path))


def resolve(space: SearchSpace, group: Group, params: dict[str, Any]) -> dict:
    """Sampled flat params + the group's fixed values -> a nested trial config for
    TrainConfig.from_dict: {"model", "data", "train", "budget": {kind, value, tokens}}."""
    dists = group.optuna_space(space)
    if set(params) != set(dists):
        raise SpaceError(f"resolve: params {sorted(params)} are not the searched keys "
                         f"{sorted(dists)} of group ({group.budget:g}, {group.family})")
    for k, v in params.items():
        try:
            dists[k].to_internal_repr(v)
            inside = dists[k]._contains(dists[k].to_internal_repr(v))
        except ValueError:  # a choice that is not one
            inside = False
        if not inside:
            raise SpaceError(f"resolve: {k}={v!r} is outside {dists[k]}")
    out: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    tps = {"model": _MODEL_TYPES, "data": _types(DataConfig), "train": _types(OptimConfig)}
    for key, v in (group.fixed(space) | params).items():
        section, name = key.split(".", 1)
        is_float = tps[section].get(name, (str,))[0] is float
        out[section][name] = float(v) if is_float and v is not None else v  # int range
    out["budget"] = {"kind": space.budget_kind, "value": group.budget,
                     "tokens": space.budget_tokens}
    return out


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
        # TPE's default 10 random start-up trials would be every trial of a small group.
        startup = min(10, max(2, settings.samples_per_budget // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
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


# --- candidates vs budgets --------------------------------------------------------------------

def _vocab(tokenizer: str, source: str, model_vocab: int) -> int:
    """The data's vocabulary: 256 for bytes, N for bpe:N, vocab=N of a tokens: source, or
    (a tokens: file without vocab=) the model's own."""
    if tokenizer.startswith("bpe:"):
        return int(tokenizer[4:])
    src = parse_source(source)
    return int(src.options.get("vocab", 0)) or model_vocab if src.kind == "tokens" else 256


def _candidates(space: SearchSpace):
    """(model options, seq_len, batch_size, ModelConfig) for every choice and endpoint."""
    model = {k: _values(v) for k, v in space.model.items() if k != "family"}
    data = [_values(space.data.get(k, getattr(DataConfig, k)))
            for k in ("seq_len", "tokenizer", "source")]
    batch = _values(space.train.get("batch_size", OptimConfig.batch_size))
    for combo in itertools.product(*model.values()):
        opts = dict(zip(model, combo, strict=True))
        for seq_len, tok, src, bs in itertools.product(*data, batch):
            o = {k: v for k, v in opts.items() if k not in ("spec", "preset")}
            o.setdefault("max_seq_len", seq_len)  # as TrainConfig.model_config does
            cfg = ModelConfig.from_spec(opts["spec"], opts.get("preset"), **o)
            yield opts, seq_len, bs, cfg.replace(vocab_size=_vocab(tok, src, cfg.vocab_size))


def check_candidates(space: SearchSpace) -> list[dict]:
    """Plan every candidate (choices and range endpoints of model options x seq_len x
    batch_size) under every budget value, before anything trains. One row per candidate:
    spec, family, model (options), seq_len, batch_size, vocab_size, params_non_embedding,
    flops_per_token (training FLOPs per token) and budgets, a list with per budget value
    {budget, status ('ok' | 'rejected'), steps, tokens, train_flops, params_non_embedding,
    reason}. A refused candidate is a row (the sweep records it as rejected); a budget value
    that refuses every candidate of a group raises SpaceError."""
    rows = []
    for opts, seq_len, bs, cfg in _candidates(space):
        row = dict(spec=opts["spec"], family=space.family_of(opts["spec"]), model=opts,
                   seq_len=seq_len, batch_size=bs, vocab_size=cfg.vocab_size,
                   params_non_embedding=non_embedding_params(cfg),
                   flops_per_token=train_flops_per_token(cfg, seq_len), budgets=[])
        for value in space.budget_values:
            entry = dict(budget=value, status="ok", steps=None, tokens=None, train_flops=None,
                         params_non_embedding=None, reason=None)
            try:
                p = plan(cfg, Budget(space.budget_kind, value, space.budget_tokens),
                         batch_size=bs, seq_len=seq_len)
                entry.update(steps=p.steps, tokens=p.tokens, train_flops=p.train_flops,
                             params_non_embedding=p.params_non_embedding)
            except BudgetError as e:
                entry.update(status="rejected", reason=str(e))
            row["budgets"].append(entry)
        rows.append(row)
    for g in space.groups():
        i = space.budget_values.index(g.budget)
        reasons = [r["budgets"][i]["reason"] for r in rows if r["spec"] in g.specs]
        if reasons and all(reasons):
            what = f"{g.budget:.4g} {_UNITS[space.budget_kind]}"
            fam = "" if g.family == "all" else f"{g.family!r} "
            why = ("gives less than one step" if all("less than one step" in r for r in reasons)
                   else "is refused")
            raise SpaceError(f"budget.values[{i}]: {what} {why} for every {fam}candidate "
                             f"({len(reasons)}); e.g. {reasons[0]}")
    return rows
