"""The YAML reference (docs/yaml.md, `spiralsearch keys`): generated from the config classes,
in sync with the file, complete, true to what validation accepts, and pointed to by
validation errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from spiralsearch.cli import main
from spiralsearch.search.space import SpaceError, parse_space
from spiralsearch.search.validate import SECTIONS, option_specs
from spiralsearch.yamlref import keys, markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "yaml.md"
BASE = """\
name: ref
model: {spec: "1+1x{1/2,1}+1", preset: tiny}
budget: {kind: tokens, values: [4096]}
"""


def test_docs_yaml_md_is_generated_from_the_config_classes():
    """Regenerate with `python -m spiralsearch.yamlref > docs/yaml.md` when this fails."""
    assert DOC.read_text() == markdown()


def test_every_key_the_validation_knows_is_listed():
    listed = [k.key for k in keys()]
    assert len(listed) == len(set(listed))
    assert set(option_specs()) <= set(listed)  # model, data, train options
    assert {k.split(".")[0] for k in listed} == set(SECTIONS)
    for k in keys():
        assert k.type and k.default and k.allowed and k.meaning, k


def _written(default: str):
    """A documented default as the YAML value it stands for; None for a sentence
    ("required", "none (the defaults below)") or null."""
    if "(" in default or default.startswith(("required", "each")):
        return None
    from spiralsearch.search.validate import read_yaml  # as a space reads it: `off` a string

    return read_yaml(f"v: {default}", "docs/yaml.md")["v"]


@pytest.mark.parametrize("key", [k for k in keys() if "." in k.key
                                 and _written(k.default) is not None], ids=lambda k: k.key)
def test_each_documented_default_is_accepted(key):
    """Setting a key to its documented default (where it is a value) parses."""
    value = _written(key.default)
    section, name = key.key.split(".", 1)
    doc = yaml.safe_load(BASE)
    doc.setdefault(section, {})[name] = value
    parse_space(yaml.safe_dump(doc))


def test_validation_errors_point_to_the_reference(capsys):
    with pytest.raises(SpaceError) as e:
        parse_space(BASE.replace("preset: tiny", "preset: tiny, topolgy: mesh"))
    assert str(e.value).startswith("model.topolgy: unknown key; did you mean 'topology'?")
    assert str(e.value).endswith("(see `spiralsearch keys model.` or docs/yaml.md)")
    with pytest.raises(SpaceError, match=r"^budgte: unknown key.*\(see `spiralsearch keys` "):
        parse_space(BASE + "budgte: {}\n")
    with pytest.raises(SpaceError, match=r"^bad\.yaml:4:1: YAML syntax error[^(]*$"):
        parse_space(BASE + "\tx: 1\n", "bad.yaml")  # the file's own problem: no pointer
    assert main(["keys", "model."]) == 0
    assert "model.topology" in capsys.readouterr().out


def test_keys_command_formats_and_prefix(capsys):
    assert main(["keys", "budget.", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == ["budget.kind", "budget.values", "budget.value",
                                        "budget.tokens", "budget.snap"]
    snap = rows[-1]
    assert (snap["type"], snap["default"], snap["allowed"]) == ("true/false", "false",
                                                                 "true | false")
    assert main(["keys", "train.lr", "--format", "csv"]) == 0
    (lr,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert lr["search"] == "choice, int, uniform, loguniform" and lr["default"] == "0.001"
    assert main(["keys", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown()
    assert main(["keys"]) == 0
    assert "resources.gpu" in capsys.readouterr().out
