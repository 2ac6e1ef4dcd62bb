"""Config fields that know their own domain: help text, allowed values and a check, read
by the YAML validation, the CLI flags and the key reference alike (docs/design.md §8).
Nothing here imports torch, so the store and the result schema stay light.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TYPE_WORDS", "ConfigError", "FieldSpec", "check_keys", "check_value",
           "field_specs", "opt"]


class ConfigError(ValueError):
    """A configuration (model, trial or search space) that cannot run; the one-line
    message starts with the key path or names the bad option."""


def opt(default: Any = dataclasses.MISSING, help: str = "", *, check: Callable | None = None,
        what: str = "", choices: tuple | None = None, **kw) -> Any:
    """A dataclass field with its help text, a domain check (`check(v) -> bool`, described
    by `what`) and allowed values (`choices`)."""
    meta = dict(help=help, check=check, what=what, choices=choices)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class FieldSpec:
    """What a config field accepts: its type, whether None is allowed, allowed values, a
    domain check and one line of help."""

    type: type
    nullable: bool
    default: Any = None
    choices: tuple | None = None
    check: Callable | None = None
    what: str = ""
    help: str = ""


def field_specs(cls) -> dict[str, FieldSpec]:
    """Field name -> FieldSpec of a (config) dataclass, from its annotations and metadata."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        base = [a for a in args if a is not type(None)]
        default = f.default if f.default is not dataclasses.MISSING else None
        m = f.metadata
        out[f.name] = FieldSpec(base[0], len(base) < len(args), default, m.get("choices"),
                                m.get("check"), m.get("what", ""), m.get("help", ""))
    return out


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_keys(path: str, d: Any, allowed, required=()) -> dict:
    """d as a mapping whose keys are allowed (did-you-mean otherwise) and include required."""
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {d!r}")
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{path + '.' if path else ''}{k}: unknown key; {hint}"
                              f"(allowed: {', '.join(allowed)})")
    for k in required:
        if k not in d:
            raise ConfigError(f"{path + '.' if path else ''}{k}: required key missing")
    return dict(d)


def check_value(path: str, value: Any, spec: FieldSpec) -> Any:
    """A plain value at `path` against its FieldSpec: type, allowed values, domain. Ints
    are accepted for floats (YAML `1`) and returned as floats."""
    if value is None and spec.nullable:
        return None
    base = spec.type
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}.get(base, True)
    if not ok:
        raise ConfigError(f"{path}: expected {TYPE_WORDS.get(base, base.__name__)}"
                          f"{' or null' if spec.nullable else ''}, got {value!r}")
    v = float(value) if base is float else value
    if base is float and not math.isfinite(v):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if spec.choices is not None and v not in spec.choices:
        raise ConfigError(f"{path}: {v!r} is not one of {', '.join(map(str, spec.choices))}")
    if spec.check is not None and not spec.check(v):
        raise ConfigError(f"{path}: expected {spec.what}, got {v!r}")
    return v


