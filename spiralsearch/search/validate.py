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
from typing import Any

import optuna
import yaml

from spiralsearch.config import Budget, DataConfig, OptimConfig, resolve_model
from spiralsearch.fields import (
    TYPE_WORDS,
    ConfigError,
    FieldSpec,
    check_keys,
    check_value,
    field_specs,
)
from spiralsearch.identity import EXECUTION
from spiralsearch.model.config import CHOICES, PRESETS, ModelConfig
from spiralsearch.model.spec import SpecError, parse_spec
from spiralsearch.search.storage import is_uri

SECTIONS = ("name", "description", "data", "model", "train", "budget", "sizes", "search",
            "resources", "storage")
DISTRIBUTIONS = ("choice", "int", "uniform", "loguniform")
FAMILIES = ("plain", "looped", "spiral")
# A search space's errors are config errors: one type, one-line messages with the key path.
SpaceError = ConfigError

# What each model option accepts: ModelConfig's own fields (it checks its domains when
# built), their allowed values, and the two keys a space adds (preset, family).
MODEL_SPECS: dict[str, FieldSpec] = {
    k: dataclasses.replace(v, choices=CHOICES.get(k)) for k, v in field_specs(ModelConfig).items()
    if k != "spec"} | {
    "preset": FieldSpec(str, False, None, tuple(PRESETS), help="width preset"),
    "family": FieldSpec(str, False, None, FAMILIES, help="checked against every spec")}
_MODEL_KEYS = ("spec", "preset", *(k for k in MODEL_SPECS if k not in ("preset", "family")),
               "family")
SECTION_CLASSES = {"data": DataConfig, "train": OptimConfig}


class _Loader(yaml.SafeLoader):
    """Reads `3e12` as a float (PyYAML's YAML 1.1 wants `3.0e12`), only true and false as
    booleans (YAML 1.2: `compile: off` is the string "off", not False) and refuses
    duplicate keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!set 0`: PyYAML's own error
            return super().construct_mapping(node, deep)
        seen = set()
        for k, _ in node.value:  # before merges (`<<`), whose keys may be overridden
            if not isinstance(k, yaml.ScalarNode):  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping",
                    k.start_mark)
            if k.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {k.value!r}", k.start_mark)
            seen.add(k.value)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {  # the float line above gave _Loader its own copy
    first: [(tag, rx) for tag, rx in rules if tag != _BOOL]
    for first, rules in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


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

def _distinct(path: str, values: list, shown: list[str]) -> None:
    for i, v in enumerate(values):
        if values.index(v) < i:
            raise SpaceError(f"{path}[{i}]: {shown[i]} repeats {path}[{values.index(v)}]")


def _choice(path: str, d: dict) -> list:
    if not isinstance(d["choice"], list) or not d["choice"]:
        raise SpaceError(f"{path}.choice: need a non-empty list, got {d['choice']!r}")
    return d["choice"]


def _option(flat: str, v: Any, spec: FieldSpec) -> Any:
    """A validated value or distribution dict; every value it can give is checked."""
    if not isinstance(v, dict):
        return check_value(flat, v, spec)
    kinds = [k for k in v if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        check_keys(flat, {k: 0 for k in v if k not in ("step", "log")}, DISTRIBUTIONS)
        raise SpaceError(f"{flat}: give one of {', '.join(DISTRIBUTIONS)}, got {list(v)}")
    kind, base, p = kinds[0], spec.type, f"{flat}.{kinds[0]}"
    check_keys(flat, v, (kind, "step", "log") if kind == "int" else (kind,))
    if kind == "choice":
        out = [check_value(f"{p}[{i}]", x, spec) for i, x in enumerate(_choice(flat, v))]
        _distinct(p, out, [repr(x) for x in out])
        return {"choice": out}
    if base not in (int, float) or kind != "int" and base is int:
        use = "{int: [lo, hi]}" if base is int else "a value or {choice: [...]}"
        raise SpaceError(f"{p}: {flat} takes {TYPE_WORDS[base]}; use {use}")
    pair = v[kind]
    if not (isinstance(pair, list) and len(pair) == 2):
        raise SpaceError(f"{p}: need [lo, hi], got {pair!r}")
    lo, hi = (check_value(f"{p}[{i}]", x, FieldSpec(int if kind == "int" else float, False))
              for i, x in enumerate(pair))
    if not lo < hi or kind == "loguniform" and lo <= 0:
        zero = "0 < " if kind == "loguniform" else ""
        raise SpaceError(f"{p}: need [lo, hi] with {zero}lo < hi, got {pair!r}")
    for x in (lo, hi):
        check_value(p, x, spec)
    if kind != "int":
        return {kind: [lo, hi]}
    step = check_value(f"{flat}.step", v.get("step", 1), FieldSpec(int, False))
    log = check_value(f"{flat}.log", v.get("log", False), FieldSpec(bool, False))
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

def check_section(name: str, raw: Any) -> dict:
    """data or train: fields of its config class, each a value or a distribution (but an
    execution setting, identity.EXECUTION, takes one value: it is not part of a trial's
    identity, so trials that differ only there are one trial)."""
    specs = field_specs(SECTION_CLASSES[name])
    out = {k: _option(f"{name}.{k}", v, specs[k])
           for k, v in check_keys(name, raw, tuple(specs)).items()}
    for k in EXECUTION.get(name, ()):
        if isinstance(out.get(k), dict):
            raise SpaceError(f"{name}.{k}: says how a trial's steps run, not what they "
                             f"compute, so it takes one value, not a distribution")
    return out


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
    out: dict[str, Any] = {k: _option(f"model.{k}", v, MODEL_SPECS[k])
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
            resolve_model(o | {"spec": values_of(model["spec"])[0]}, DataConfig(), path="")
        except ConfigError as e:
            e = str(e).removeprefix(": ")
            if len(searched) == 1:  # one searched option: name its path
                (k, x), = zip(searched, combo, strict=True)
                kind = next(iter(opts[k]))
                at = f"choice[{opts[k]['choice'].index(x)}]" if kind == "choice" else \
                    f"{kind} (at {x!r})"
                raise SpaceError(f"model.{k}.{at}: {e}") from None
            what = ", ".join(f"{k}={v!r}" for k, v in zip(searched, combo, strict=True))
            raise SpaceError(f"model: {what or 'the fixed options'}: {e}") from None


BUDGET_KEYS = ("kind", "values", "value", "tokens", "snap")


def check_budget(raw: Any) -> tuple[Budget, ...]:
    """The budget section: `kind`, `values` (or one `value`), for params `tokens`, and
    `snap`; one Budget per value."""
    d = check_keys("budget", raw, BUDGET_KEYS, required=("kind",))
    specs = field_specs(Budget)
    kind = check_value("budget.kind", d["kind"], specs["kind"])
    snap = check_value("budget.snap", d.get("snap", False), specs["snap"])
    if ("values" in d) == ("value" in d):
        raise SpaceError("budget.values: give either values (a list of positive numbers) "
                         "or a single value")
    raw_values = d["values"] if "values" in d else [d["value"]]
    if not isinstance(raw_values, list) or not raw_values:
        raise SpaceError(f"budget.values: need a non-empty list of positive numbers, "
                         f"got {raw_values!r}")
    paths = [f"budget.values[{i}]" if "values" in d else "budget.value"
             for i in range(len(raw_values))]
    values = [check_value(p, v, specs["value"]) for p, v in zip(paths, raw_values, strict=True)]
    _distinct("budget.values", values, [f"{v:g}" for v in values])
    tokens = None
    if kind != "params" and "tokens" in d:
        raise SpaceError(f"budget.tokens: only for kind: params (kind is {kind!r})")
    if kind == "params":
        if "tokens" not in d:
            raise SpaceError("budget.tokens: required with kind: params (training tokens per "
                             "trial)")
        tokens = check_value("budget.tokens", d["tokens"], specs["tokens"])
    return tuple(Budget(kind, v, tokens, snap) for v in values)


# --- search.group_by --------------------------------------------------------------------------

GROUP_WORDS = ("family", "spec", "none")
_GROUP_NAME = r"[A-Za-z0-9_.-]+"


def option_specs() -> dict[str, FieldSpec]:
    """Flat key ("model.topology", "train.lr", ...) -> FieldSpec of every option a space
    may set, model.spec included."""
    out = {"model.spec": FieldSpec(str, False, help="canonical spec")}
    out |= {f"model.{k}": MODEL_SPECS[k] for k in _MODEL_KEYS if k != "spec"}
    for s, cls in SECTION_CLASSES.items():
        out |= {f"{s}.{k}": v for k, v in field_specs(cls).items()}
    return out


def _range_kind(v: Any) -> str | None:
    """'uniform', 'loguniform' or 'int' for a numeric range, else None."""
    return next(iter(k for k in v if k in DISTRIBUTIONS), None) if isinstance(v, dict) \
        and "choice" not in v else None


def check_group_by(raw: Any, sections: dict[str, dict]) -> str | tuple:
    """search.group_by against the space's (validated) model, data and train sections:
    'family', 'spec', 'none', an option key whose values are discrete ('model.topology'),
    or named groups, returned as ((name, ((flat key, value), ...)), ...)."""
    path = "search.group_by"
    opts = option_specs()
    if isinstance(raw, str):
        raw = {"model.spec": "spec", "model.family": "family"}.get(raw, raw)
        if raw in GROUP_WORDS:
            return raw
        if raw not in opts:
            allowed = (*GROUP_WORDS, *opts)
            close = difflib.get_close_matches(raw, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpaceError(f"{path}: {raw!r} is not a known option; {hint}(allowed: "
                             f"{', '.join(allowed)}; or a list of named groups)")
        section, name = raw.split(".", 1)
        if name not in sections[section]:
            raise SpaceError(f"{path}: {raw} is not set in the space's {section} section; "
                             f"give it a {{choice: [...]}} to compare its values")
        kind = _range_kind(sections[section][name])
        if kind:
            raise SpaceError(f"{path}: {raw} is a numeric range ({kind}); groups need "
                             f"discrete values: make it a {{choice: [...]}}")
        return raw
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{path}: expected family, spec, none, an option key (e.g. "
                         f"model.topology) or a non-empty list of named groups, got {raw!r}")
    out: list[tuple[str, tuple]] = []
    for i, g in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(g, dict):
            raise SpaceError(f"{p}: expected a mapping {{name: NAME, KEY: value, ...}}, "
                             f"got {g!r}")
        check_keys(p, g, ("name", *opts), required=("name",))
        name = g["name"]
        if not isinstance(name, str) or not re.fullmatch(_GROUP_NAME, name):
            raise SpaceError(f"{p}.name: {name!r} must match {_GROUP_NAME}")
        names = [n for n, _ in out]
        if name in names:
            raise SpaceError(f"{p}.name: {name!r} repeats {path}[{names.index(name)}].name")
        fixed = tuple((k, _group_value(f"{p}.{k}", k, v, opts[k], sections))
                      for k, v in g.items() if k != "name")
        for j, (other, theirs) in enumerate(out):
            mine, theirs = dict(fixed), dict(theirs)
            if all(mine[k] == theirs[k] for k in mine.keys() & theirs.keys()):
                raise SpaceError(f"{p}: group {name!r} overlaps {other!r} ({path}[{j}]): a "
                                 f"trial could belong to both; fix a key they share to "
                                 f"different values")
        out.append((name, fixed))
    return tuple(out)


def _group_value(path: str, key: str, v: Any, spec: FieldSpec, sections: dict[str, dict]):
    """A named group's fixed value, which must be one the space allows."""
    v = _spec(path, v) if key == "model.spec" else check_value(path, v, spec)
    section, name = key.split(".", 1)
    if name not in sections[section]:
        raise SpaceError(f"{path}: {key} is not set in the space's {section} section; a "
                         f"group fixes only values the space allows")
    allowed = sections[section][name]
    kind = _range_kind(allowed)
    if kind:
        raise SpaceError(f"{path}: {key} is a numeric range ({kind}) in the space; groups "
                         f"need discrete values: make it a {{choice: [...]}}")
    if isinstance(allowed, dict) and v not in allowed["choice"]:
        raise SpaceError(f"{path}: {v!r} is not one of the space's {key} choices "
                         f"({', '.join(map(repr, allowed['choice']))})")
    if not isinstance(allowed, dict) and v != allowed:
        raise SpaceError(f"{path}: {v!r} is not the space's {key} ({allowed!r})")
    return v


# --- where trials run -------------------------------------------------------------------------

def check_placement(resources, train: dict) -> None:
    """`resources` (a space's Resources) against the train section: a sweep's trial sees
    only the devices Ray gives it, so `train.device: cuda:N` names a GPU that may not be
    its own, and `cuda` with `gpu: 0` puts trials Ray never gave a GPU on GPU 0; K
    data-parallel workers share out the batch, and each needs a whole GPU (NCCL runs one
    rank per GPU) or none."""
    devices = [str(d) for d in values_of(train.get("device", OptimConfig().device))]
    for d in devices:
        if d.startswith("cuda:"):
            raise SpaceError(f"train.device: {d!r} names one GPU, but a sweep's trial sees "
                             f"only the GPUs Ray gives it; use cuda (or auto) and "
                             f"resources.gpu")
        if d == "cuda" and resources.gpu == 0:
            raise SpaceError("train.device: cuda with resources.gpu: 0 would put trials that "
                             "Ray gave no GPU on GPU 0; set resources.gpu (0.5: two trials "
                             "per GPU), or use device: auto")
    k = resources.workers
    if k > 1 and 0 < resources.gpu < 1:
        raise SpaceError(f"resources.gpu: {resources.gpu:g} with resources.workers: {k}; "
                         f"a data-parallel worker needs a whole GPU (gpu: 1) or none (gpu: 0)")
    batch = train.get("batch_size", OptimConfig().batch_size)
    if isinstance(batch, dict) and "int" in batch:  # every value of the range must split
        (lo, _), step = batch["int"], batch["step"]
        if lo % k or step % k or batch["log"] and k > 1:
            raise SpaceError(f"train.batch_size: the range {batch['int']} (step {step}) has "
                             f"sizes that do not split evenly over resources.workers: {k} "
                             f"data-parallel workers; make lo and step multiples of {k}")
        return
    micro = values_of(train.get("micro_batch", OptimConfig().micro_batch))
    for b in values_of(batch):
        if b % k:
            raise SpaceError(f"train.batch_size: {b} sequences do not split evenly over "
                             f"resources.workers: {k} data-parallel workers")
        rows = b // k
        for m in micro:
            if k > 1 and rows % min(m or rows, rows):
                raise SpaceError(f"train.micro_batch: {m} does not divide the {rows} "
                                 f"sequences of batch_size {b} that each of resources.workers: "
                                 f"{k} data-parallel workers takes")


def check_storage(raw: Any) -> str | None:
    """The top-level `storage:` key, for trial checkpoints and Ray Tune's state: an absolute
    folder (or ~/...) on a filesystem every node of the cluster mounts, or a URI that
    pyarrow resolves, as Ray does (`s3://`, `gs://`, `hdfs://`, `file://`; search/storage.py
    mirrors each trial's folder there); None (the default) keeps them beside the results
    file. Whether the URI's store is reachable is checked when the sweep starts."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise SpaceError(f"storage: expected a folder path or URI, got {raw!r}")
    if is_uri(raw):
        if not raw.partition("?")[0].split("://", 1)[1].strip("/"):
            raise SpaceError(f"storage: {raw!r} names no folder; give one, e.g. "
                             f"s3://bucket/runs")
        return raw
    if not (raw.startswith("/") or raw.startswith("~")):
        raise SpaceError(f"storage: {raw!r} is a relative path; give an absolute one (or "
                         f"~/...) that names the same folder on every node, or a URI")
    return raw
