"""Fuzzing of what a user types: the spec parser, model options and the search-space YAML
loader. Whatever the input, it parses or ends in one of our own error types (all ValueError
subclasses with one-line messages, which the CLI prints as exit 2), never a TypeError,
OverflowError, RecursionError or a long computation."""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from models import examples

from spiralsearch.config import BudgetError, DataError
from spiralsearch.fields import ConfigError
from spiralsearch.limits import LIMITS
from spiralsearch.model.config import ModelConfig
from spiralsearch.model.spec import Spec, SpecError, parse_spec
from spiralsearch.search.space import SECTIONS, parse_space
from spiralsearch.search.validate import DISTRIBUTIONS, option_specs

OURS = (ConfigError, SpecError, BudgetError, DataError)
FUZZ = settings(max_examples=examples(400), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# spec-like text: the grammar's characters, digits of every length, a few strangers
SPEC_CHARS = st.sampled_from(list("0123456789+x×{}/,@ ") + ["1/", "99999999999", "\t", "-",
                                                            "٣", "²", "\x00", "1e3"])
spec_text = st.one_of(st.text(), st.lists(SPEC_CHARS, max_size=40).map("".join),
                      st.builds(lambda a, b, its, c: f"{a}+{b}x{{{','.join(its)}}}+{c}",
                                st.integers(-2, 10**12), st.integers(-2, 10**12),
                                st.lists(st.sampled_from(["1", "1/2", "1/8@7", "1/0",
                                                          "1/65536", "1/65537", "1/3@3",
                                                          "1/9999999999999999999", "2/3"]),
                                         max_size=300),
                                st.integers(-2, 10**12)))


def _bounded(spec: Spec) -> bool:
    return (max(spec.n_pre, spec.n_loop, spec.n_post) <= LIMITS["layers"].bound
            and spec.T <= LIMITS["iterations"].bound
            and math.lcm(*(g for g, _ in spec.iterations)) <= LIMITS["period"].bound)


@FUZZ
@given(spec_text)
@example("²")  # str.isdigit() says yes, int() says no
@example("1" * 5000)  # int() refuses 4,300 digits
@example("1+0x{}+512")  # plain: 513 layers in one block
def test_spec_parser_raises_only_spec_error(text):
    try:
        spec = parse_spec(text)
    except SpecError as e:
        assert "\n" not in str(e) and 0 <= e.pos <= len(text)
        return
    assert _bounded(spec)
    assert parse_spec(str(spec)) == spec


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.integers())))
def test_spec_parser_refuses_non_strings(value):
    try:
        parse_spec(value)
    except SpecError:
        return
    raise AssertionError(f"{value!r} parsed")


# any plain YAML value, nested a little
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["4", "2+4x{1/8,1/4,1/2,1}+2", "2+1000000000x{1}+2",
                                     "corpus:sotu", "text:/nonexistent", "tokens:x.bin",
                                     "synthetic:dyck:chars=99999999999", "bytes", "bpe:1",
                                     "mesh", "tiny", "huge", "flops", "params", "family"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        [*DISTRIBUTIONS, "step", "log", "name", "x"]), inner, max_size=3)), max_leaves=8)


@FUZZ
@given(st.dictionaries(st.sampled_from([k.split(".", 1)[1] for k in option_specs()
                                        if k.startswith("model.") and k != "model.spec"]
                                       + ["widht"]),
                       SCALARS, max_size=4), st.one_of(st.none(), st.sampled_from(
                           ["tiny", "pythia-160m", "huge"])))
def test_model_options_raise_only_our_errors(options, preset):
    options = {k: v for k, v in options.items() if k not in ("preset", "family")}
    try:
        ModelConfig.from_spec("1+2x{1/2,1}+1", preset, **options)
    except OURS:
        pass


def _keys(section: str) -> list[str]:
    return sorted({k.split(".", 1)[1] for k in option_specs() if k.startswith(section + ".")})


SECTION_KEYS = {"data": _keys("data"), "model": _keys("model"), "train": _keys("train"),
                "budget": ["kind", "values", "value", "tokens", "snap"],
                "sizes": ["count", "span", "tokens_per_param", "values", "params"],
                "search": ["metric", "mode", "sampler", "scheduler", "samples_per_budget",
                           "group_by", "seed", "replicates", "grace_evals"],
                "resources": ["cpu", "gpu"]}


@st.composite
def spaces(draw) -> dict:
    """A search space close to a valid one: the required sections, each with a few keys
    (known ones and strangers) holding any value, sometimes a whole section replaced."""
    def mostly(good, other):  # the valid value 9 times in 10, so checks further on run
        return good if draw(st.integers(0, 9)) else draw(other)

    doc: dict = {"name": mostly("fuzz", SCALARS),
                 "model": {"spec": mostly("1+1x{1/2,1}+1", VALUES), "preset": "tiny"},
                 "budget": {"kind": mostly("tokens", SCALARS), "values": [4096.0]}}
    for section in draw(st.lists(st.sampled_from(list(SECTION_KEYS)), max_size=4)):
        body = doc.setdefault(section, {})
        for key in draw(st.lists(st.sampled_from([*SECTION_KEYS[section], "bogus"]),
                                 min_size=1, max_size=3)):
            body[key] = draw(VALUES)
    if draw(st.booleans()):
        doc[draw(st.sampled_from([*SECTIONS, "other"]))] = draw(VALUES)
    return doc


@FUZZ
@given(spaces())
def test_space_loader_raises_only_our_errors(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):  # not representable as YAML: not a user's input
        return
    try:
        parse_space(text, "fuzz.yaml")
    except OURS as e:
        assert "\n" not in str(e)


@FUZZ
@example("!!set\n0")  # a mapping tag on a scalar
@example("a: &x [*x]")  # a self-referencing alias
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(["name: x", "model:", "  spec: 4", "budget:",
                                           "  kind: flops", "  values: [1e12]", "- ", "{",
                                           "}", "[", "&a", "*a", "<<: *a", "!!python/none",
                                           "!!binary", "? ", ": ", "\t", "%YAML 1.1", "---",
                                           "...", "!!set", "!!omap", "~", ".nan"]),
                          max_size=12).map("\n".join)))
def test_yaml_text_raises_only_our_errors(text):
    try:
        parse_space(text, "fuzz.yaml")
    except OURS as e:
        assert "\n" not in str(e)
