"""The YAML reference: every key of a search space with its type, default, allowed values,
the distributions it takes and one line of meaning, read from the config tree itself (the
dataclass fields and their `opt(...)` metadata, docs/design.md §8), so it cannot drift from
what the validation accepts. `spiralsearch keys [PREFIX]` prints it; docs/yaml.md is

    python -m spiralsearch.yamlref > docs/yaml.md

and a test regenerates it and compares.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from spiralsearch.config import Budget, DataConfig, OptimConfig
from spiralsearch.fields import FieldSpec, field_specs
from spiralsearch.identity import EXECUTION
from spiralsearch.model.config import ModelConfig
from spiralsearch.search.sizes import SizeAxis
from spiralsearch.search.space import Resources, SearchSettings
from spiralsearch.search.validate import BUDGET_KEYS, MODEL_SPECS, SECTIONS

__all__ = ["Key", "keys", "markdown"]


@dataclass(frozen=True)
class Key:
    """One key of a search space: its flat path, type, default, allowed values, the
    distributions it may be searched with ("" if it takes a fixed value only) and meaning."""

    key: str
    type: str
    default: str
    allowed: str
    search: str
    meaning: str


_TYPES = {int: "integer", float: "number", bool: "true/false", str: "string"}
_NUMERIC_SEARCH = {int: "choice, int", float: "choice, int, uniform, loguniform"}


def _yaml(v: Any) -> str:
    """A default as YAML writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _type(spec: FieldSpec) -> str:
    if typing.get_origin(spec.type) is tuple:
        word = "list of numbers"
    elif spec.type is Any:  # search.group_by: a word, an option key or named groups
        word = "string or list"
    else:
        word = _TYPES.get(spec.type, spec.type.__name__)
    return word + (" or null" if spec.nullable else "")


def _allowed(spec: FieldSpec) -> str:
    if spec.choices:
        return " | ".join(map(str, spec.choices))
    if spec.type is bool:
        return "true | false"
    return spec.what or "any"


def _field(path: str, spec: FieldSpec, searchable: bool, default: Any = None) -> Key:
    search = ""
    if searchable:
        search = _NUMERIC_SEARCH.get(spec.type, "choice")
    return Key(path, _type(spec), _yaml(spec.default if default is None else default),
               _allowed(spec), search, spec.help)


def _section(name: str, cls, searchable: bool, skip=()) -> list[Key]:
    """A section's keys; its execution settings (identity.EXECUTION) take one value."""
    fixed = EXECUTION.get(name, ())
    return [_field(f"{name}.{k}", s, searchable and k not in fixed)
            for k, s in field_specs(cls).items() if k not in skip]


def _model() -> list[Key]:
    """model: the spec, the preset, every ModelConfig option, the family check."""
    spec = Key("model.spec", "string", "required", "spec notation N_pre+N_loopx{r_1,...,r_T}+"
               "N_post, e.g. 2+4x{1/8,1/4,1/2,1}+2; at most 512 layers per block, 256 "
               "iterations, chunks of 65,536 (spiralsearch/limits.py)", "choice",
               "the layout: depth, shared core and its resolutions (README: Spec notation)")
    preset = MODEL_SPECS["preset"]
    out = [spec, Key("model.preset", "string", "none (the defaults below)", _allowed(preset),
                     "", "width preset: its d_model, n_heads, mlp_ratio, vocabulary and "
                     "context replace the defaults below; the options given override it")]
    for name, s in MODEL_SPECS.items():
        if name in ("preset", "family"):
            continue
        out.append(_field(f"model.{name}", s, True))
    family = MODEL_SPECS["family"]
    out.append(Key("model.family", "string", "each spec's own", _allowed(family), "",
                   "checked against every spec (a space of one family)"))
    return out


def _budget() -> list[Key]:
    """budget: kind, the values (or one value), tokens of a params budget, snap."""
    specs = field_specs(Budget)
    value = specs["value"]
    rows = {"kind": _field("budget.kind", specs["kind"], False, default="required"),
            "values": Key("budget.values", "list of numbers", "required (or value)",
                          value.what + ", distinct", "", "the budgets, in the kind's unit; "
                          "every (budget, group) is a cell with its own search"),
            "value": Key("budget.value", "number", "(or values)", value.what, "",
                         "one budget instead of a list"),
            "tokens": _field("budget.tokens", specs["tokens"], False),
            "snap": _field("budget.snap", specs["snap"], False)}
    assert tuple(rows) == BUDGET_KEYS, "a budget key without its reference row"
    return list(rows.values())


def keys(prefix: str = "") -> list[Key]:
    """Every key of a search space, in the order of its sections, whose path starts with
    `prefix` ("model." gives the model section, "" everything)."""
    sections = {
        "name": [Key("name", "string", "required", "[A-Za-z0-9_.-]+", "",
                     "the sweep's name: its results file is results/NAME.duckdb")],
        "description": [Key("description", "string", '""', "any", "",
                            "one line of text, stored with the sweep")],
        "data": _section("data", DataConfig, True),
        "model": _model(),
        "train": _section("train", OptimConfig, True),
        "budget": _budget(),
        "sizes": _section("sizes", SizeAxis, False),
        "search": _section("search", SearchSettings, False),
        "resources": _section("resources", Resources, False),
        "storage": [Key("storage", "string or null", "null (results/NAME.runs/, beside the "
                        "results file)", "an absolute path (or ~/...) on a filesystem every "
                        "node mounts, or a URI pyarrow resolves (s3://, gs://, hdfs://, "
                        "file://)", "",
                        "where trial checkpoints and Ray Tune's state go: STORAGE/NAME.runs/, "
                        "so a trial resumed on another node finds its checkpoint (a URI: "
                        "each trial trains in local scratch, pulled from it and pushed back "
                        "at every checkpoint)")],
    }
    assert tuple(sections) == SECTIONS, "a section without its reference"
    return [k for rows in sections.values() for k in rows if k.key.startswith(prefix)]


_INTRO = """\
# Search-space YAML reference

Every key a search space (`search_spaces/*.yaml`, run by `spiralsearch sweep`) accepts, with
its type, default, allowed values, the distributions it can be searched with and what it
means. Generated from the config dataclasses that validate it (`python -m
spiralsearch.yamlref > docs/yaml.md`; a test keeps this file in sync); `spiralsearch keys
[PREFIX]` prints the same on the command line.

A key with distributions takes a fixed value or one of `{choice: [...]}`, `{int: [lo, hi]}`
(optional `step`, `log`), `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`; every value a
distribution can give is checked as a fixed value would be. The bounds on sizes (layers,
iterations, chunks, widths, vocabulary, context, batch, steps) are in
`spiralsearch/limits.py`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"


def markdown() -> str:
    """docs/yaml.md: one table per section, the section's meaning from its class."""
    docs = {"data": DataConfig, "model": ModelConfig, "train": OptimConfig, "budget": Budget,
            "sizes": SizeAxis, "search": SearchSettings, "resources": Resources}
    out = [_INTRO]
    rows = keys()
    for section in dict.fromkeys(k.key.split(".")[0] for k in rows):
        cls = docs.get(section)
        out.append(f"\n## `{section}`\n")
        if cls is not None:
            out.append(" ".join(cls.__doc__.split("\n\n")[0].split()) + "\n")
        out.append("| key | type | default | allowed | distributions | meaning |")
        out.append("|---|---|---|---|---|---|")
        for k in rows:
            if k.key.split(".")[0] == section:
                out.append(f"| `{k.key}` | {_cell(k.type)} | {_cell(k.default)} | "
                           f"{_cell(k.allowed)} | {_cell(k.search)} | {_cell(k.meaning)} |")
    return "\n".join(out) + "\n"


def as_dicts(rows: list[Key]) -> list[dict[str, str]]:
    """Rows as plain dicts (JSON and CSV output)."""
    return [dataclasses.asdict(k) for k in rows]


if __name__ == "__main__":
    print(markdown(), end="")
