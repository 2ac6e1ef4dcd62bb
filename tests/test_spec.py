import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiralsearch import Spec, SpecError, parse_spec
from spiralsearch.limits import LIMITS


@st.composite
def specs(draw):
    n_loop = draw(st.integers(0, 6))
    if n_loop == 0:
        return Spec(draw(st.integers(1, 48)))
    chunks, period = [], 1
    for g in draw(st.lists(st.integers(1, 64), min_size=1, max_size=6)):
        if math.lcm(period, g) <= LIMITS["period"].bound:  # past it, parse_spec refuses
            chunks.append(g)
            period = math.lcm(period, g)
    its = tuple((g, draw(st.integers(0, g - 1))) for g in chunks)
    return Spec(draw(st.integers(0, 6)), n_loop, draw(st.integers(0, 6)), its)


@given(specs())
def test_round_trip(spec):
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text


def test_paper_specs():
    b = parse_spec("2+4x{1/8,1/4,1/2,1}+2")
    assert (b.n_pre, b.n_loop, b.n_post) == (2, 4, 2)
    assert b.iterations == ((8, 0), (4, 0), (2, 0), (1, 0))
    assert b.family == "spiral" and b.unrolled_depth == 20 and b.recurrence_ratio == 0.5
    assert parse_spec("2+4x{1,1}+2").family == "looped"
    assert parse_spec("12").family == "plain"
    assert parse_spec("12+0x{}+0") == parse_spec("12") == parse_spec("6+0x{}+6")


def test_spaces_unicode_times_and_offsets():
    s = parse_spec(" 2 + 4 × { 1/8@3 , 1/4@1, 1 } + 2 ")
    assert s.iterations == ((8, 3), (4, 1), (1, 0))
    assert str(s) == "2+4x{1/8@3,1/4@1,1}+2"


@pytest.mark.parametrize("text, pos, fragment", [
    ("2+4x{1/3.5}+2", 8, "expected ',' or '}'"),
    ("2+4x{1/8@8}+2", 9, "offset 8 must be < chunk size 8"),
    ("0x{}", 1, "expected '+'"),
    ("2+4x{1/8}+", 10, "expected the post-block layer count"),
    ("1+2x{1/4,,1}+1", 9, "expected a resolution"),
    ("2+4x{}+2", 2, "needs at least one resolution"),
    ("2+0x{1}+2", 2, "cannot have iterations"),
    ("2+4x{2/8}+2", 5, "of the form 1 or 1/g"),
    ("2+4x{1/0}+2", 7, "chunk size must be >= 1"),
    ("2+4y{1}+2", 3, "expected 'x' or '×'"),
    ("12 13", 3, "expected '+' after the pre-block layer count, got '1'"),
    ("2+1x{1}+1 x", 10, "unexpected 'x'"),
    ("", 0, "empty spec"),
    ("0", 0, "at least one layer"),
    ("-2", 0, "expected a layer count"),
])
def test_errors_name_position(text, pos, fragment):
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    assert e.value.pos == pos
    assert fragment in str(e.value)
    assert f"position {pos}" in str(e.value)
