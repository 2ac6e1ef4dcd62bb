"""Checks of a search space's YAML (used by space.py): every key against the allowed ones
(with a did-you-mean), every value against its type and domain, every distribution against
its shape, every spec and model option by building it. Errors are one line: the key path,
the bad value, what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import types
import typing
from typing import Any

import optuna
import yaml

from spiralsearch.budget import BUDGET_KINDS
from spiralsearch.model import CHOICES, PRESETS, ConfigError, ModelConfig
from spiralsearch.sources import DataError, parse_source
from spiralsearch.spec import SpecError, parse_spec

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
UNITS = {"flops": "FLOPs", "tokens": "tokens", "params": "params"}
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


def read_yaml(text: str, source: str) -> dict:
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

def check_keys(path: str, d: Any, allowed, required=()) -> dict:
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


def field_types(cls) -> dict[str, tuple[type, bool]]:
    """Field name -> (type, nullable) from a dataclass's annotations."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        base = [a for a in args if a is not type(None)]
        out[name] = (base[0], len(base) < len(args))
    return out


def check_value(path: str, flat: str, value: Any, tp: tuple[type, bool]) -> Any:
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
        return check_value(flat, flat, v, tp)
    kinds = [k for k in v if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        check_keys(flat, {k: 0 for k in v if k not in ("step", "log")}, DISTRIBUTIONS)
        raise SpaceError(f"{flat}: give one of {', '.join(DISTRIBUTIONS)}, got {list(v)}")
    kind, base, p = kinds[0], tp[0], f"{flat}.{kinds[0]}"
    check_keys(flat, v, (kind, "step", "log") if kind == "int" else (kind,))
    if kind == "choice":
        out = [check_value(f"{p}[{i}]", flat, x, tp) for i, x in enumerate(_choice(flat, v))]
        _distinct(p, out, [repr(x) for x in out])
        return {"choice": out}
    if base not in (int, float) or kind != "int" and base is int:
        use = "{int: [lo, hi]}" if base is int else "a value or {choice: [...]}"
        raise SpaceError(f"{p}: {flat} takes {_WORDS[base]}; use {use}")
    pair = v[kind]
    if not (isinstance(pair, list) and len(pair) == 2):
        raise SpaceError(f"{p}: need [lo, hi], got {pair!r}")
    lo, hi = (check_value(f"{p}[{i}]", "", x, (int if kind == "int" else float, False))
              for i, x in enumerate(pair))
    if not lo < hi or kind == "loguniform" and lo <= 0:
        zero = "0 < " if kind == "loguniform" else ""
        raise SpaceError(f"{p}: need [lo, hi] with {zero}lo < hi, got {pair!r}")
    for x in (lo, hi):
        check_value(p, flat, x, tp)
    if kind != "int":
        return {kind: [lo, hi]}
    step = check_value(f"{flat}.step", "", v.get("step", 1), (int, False))
    log = check_value(f"{flat}.log", "", v.get("log", False), (bool, False))
    if step < 1 or (hi - lo) % step or log and step != 1:
        raise SpaceError(f"{flat}.step: need an integer >= 1 that divides hi - lo = "
                         f"{hi - lo} (and 1 with log), got {step}")
    if log and lo < 1:
        raise SpaceError(f"{p}: a log range needs lo >= 1, got {pair!r}")
    return {"int": [lo, hi], "step": step, "log": log}


def values_of(v: Any) -> list:
    """What the candidate check enumerates: a value, every choice, or a range's endpoints."""
    if not isinstance(v, dict):
        return [v]
    return v["choice"] if "choice" in v else v[next(k for k in DISTRIBUTIONS if k in v)]


def _every(v: Any) -> list:
    """Every value a model option can take, where few (an odd d_model between two good
    endpoints must not slip through); else as `values_of`."""
    if isinstance(v, dict) and "int" in v and (v["int"][1] - v["int"][0]) // v["step"] <= 256:
        return list(range(v["int"][0], v["int"][1] + 1, v["step"]))
    return values_of(v)


def to_optuna(v: dict) -> optuna.distributions.BaseDistribution:
    D = optuna.distributions
    if "choice" in v:
        return D.CategoricalDistribution(v["choice"])
    if "int" in v:
        return D.IntDistribution(*v["int"], log=v["log"], step=v["step"])
    kind = next(iter(v))
    return D.FloatDistribution(*v[kind], log=kind == "loguniform")


# --- sections ---------------------------------------------------------------------------------

MODEL_TYPES = {k: t for k, t in field_types(ModelConfig).items() if k != "spec"}
MODEL_TYPES |= {"preset": (str, False), "family": (str, False)}
_MODEL_KEYS = ("spec", "preset", *(f.name for f in dataclasses.fields(ModelConfig)
                                   if f.name != "spec"), "family")


def check_section(name: str, raw: Any, cls) -> dict:
    """data or train: fields of `cls`, each a value or a distribution."""
    tps = field_types(cls)
    return {k: _option(f"{name}.{k}", v, tps[k])
            for k, v in check_keys(name, raw, tuple(tps)).items()}


def _spec(path: str, text: Any) -> str:
    """Canonical spec text, so '12' and '6+0x{}+6' are one candidate."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)  # `spec: 12` unquoted
    try:
        return str(parse_spec(text))
    except SpecError as e:
        raise SpaceError(f"{path}: {e}") from None


def check_model(raw: Any) -> dict:
    d = check_keys("model", raw, _MODEL_KEYS, required=("spec",))
    out: dict[str, Any] = {k: _option(f"model.{k}", v, MODEL_TYPES[k])
                           for k, v in d.items() if k != "spec"}
    spec = d["spec"]
    if isinstance(spec, dict):
        given = _choice("model.spec", check_keys("model.spec", spec, ("choice",), ("choice",)))
        specs = [_spec(f"model.spec.choice[{i}]", s) for i, s in enumerate(given)]
        shown = [repr(g) + (f" (= {c!r})" if str(g) != c else "")
                 for g, c in zip(given, specs, strict=True)]
        _distinct("model.spec.choice", specs, shown)
        out["spec"] = {"choice": specs}
    else:
        out["spec"] = _spec("model.spec", spec)
    if isinstance(out.get("family"), dict):
        raise SpaceError("model.family: one family for the whole space, not a distribution")
    for s in values_of(out["spec"]):
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
        searched = {k: values_of(opts[k]) for k in searched}
    for combo in itertools.product(*searched.values()):
        o = {k: v for k, v in opts.items() if k not in searched} | dict(zip(searched, combo,
                                                                             strict=True))
        try:
            ModelConfig.from_spec(values_of(model["spec"])[0], o.pop("preset", None), **o)
        except ConfigError as e:
            if len(searched) == 1:  # one searched option: name its path
                (k, x), = zip(searched, combo, strict=True)
                kind = next(iter(opts[k]))
                at = f"choice[{opts[k]['choice'].index(x)}]" if kind == "choice" else \
                    f"{kind} (at {x!r})"
                raise SpaceError(f"model.{k}.{at}: {e}") from None
            what = ", ".join(f"{k}={v!r}" for k, v in zip(searched, combo, strict=True))
            raise SpaceError(f"model: {what or 'the fixed options'}: {e}") from None


def check_budget(raw: Any) -> tuple[str, tuple[float, ...], float | None]:
    d = check_keys("budget", raw, ("kind", "values", "value", "tokens"), required=("kind",))
    kind = check_value("budget.kind", "budget.kind", d["kind"], (str, False))
    if ("values" in d) == ("value" in d):
        raise SpaceError("budget.values: give either values (a list of positive numbers) "
                         "or a single value")
    raw_values = d["values"] if "values" in d else [d["value"]]
    if not isinstance(raw_values, list) or not raw_values:
        raise SpaceError(f"budget.values: need a non-empty list of positive numbers, "
                         f"got {raw_values!r}")
    paths = [f"budget.values[{i}]" if "values" in d else "budget.value"
             for i in range(len(raw_values))]
    values = [check_value(p, "budget.values", v, (float, False))
              for p, v in zip(paths, raw_values, strict=True)]
    _distinct("budget.values", values, [f"{v:g}" for v in values])
    if kind != "params":
        if "tokens" in d:
            raise SpaceError(f"budget.tokens: only for kind: params (kind is {kind!r})")
        return kind, tuple(values), None
    if "tokens" not in d:
        raise SpaceError("budget.tokens: required with kind: params (training tokens per "
                         "trial)")
    return kind, tuple(values), check_value("budget.tokens", "budget.tokens", d["tokens"],
                                       (float, False))


def check_settings(name: str, raw: Any, cls):
    tps = field_types(cls)
    d = check_keys(name, raw, tuple(tps))
    return cls(**{k: check_value(f"{name}.{k}", f"{name}.{k}", v, tps[k]) for k, v in d.items()})
