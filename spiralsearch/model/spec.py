"""The paper's spec notation: `N_pre + N_loop x {r_1, ..., r_T} + N_post`.

    parse_spec("2+4x{1/8,1/4,1/2,1}+2")   # SpiralFormer-B at 160M scale
    parse_spec("2+4x{1,1}+2")             # full-resolution looped
    parse_spec("12")                      # plain Transformer (== "12+0x{}+0")
    parse_spec("1+2x{1/4@3,1}+1")         # chunk 4 with offset 3

A resolution is `1` or `1/g` (chunk size g >= 1), optionally `@w` for a chunk offset
0 <= w < g. `x` and `×` are both accepted, as are spaces anywhere between tokens.
`str(spec)` gives the canonical text, and `parse_spec(str(spec)) == spec`.

Sizes are bounded before anything is built (spiralsearch/limits.py): at most 512 layers per
block, 256 iterations, chunks of 65,536 tokens and an lcm of the chunk sizes (the decode
period) of 65,536, so `2+1000000000x{1}+2` is refused at once, naming the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from spiralsearch.limits import LIMITS, at_most, too_large

__all__ = ["Iteration", "Spec", "SpecError", "parse_spec"]

DIGITS = "0123456789"


class SpecError(ValueError):
    """A spec string that does not parse, with the 0-based position of the problem."""

    def __init__(self, text: str, pos: int, expected: str):
        self.text, self.pos, self.expected = text, pos, expected
        shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} chars)"
        super().__init__(f"bad spec {shown} at position {pos}: {expected}")


class Iteration(NamedTuple):
    """One loop iteration: chunk size g (resolution 1/g) and chunk offset w (0 <= w < g)."""

    chunk: int
    offset: int = 0

    def __str__(self) -> str:
        r = "1" if self.chunk == 1 else f"1/{self.chunk}"
        return f"{r}@{self.offset}" if self.offset else r


@dataclass(frozen=True)
class Spec:
    """A Middle-cycle layout: n_pre layers, a shared core of n_loop layers run once per
    entry of `iterations`, then n_post layers. A plain model has n_loop == 0, no iterations,
    and all its layers in n_pre (so "12" and "6+0x{}+6" are the same spec)."""

    n_pre: int
    n_loop: int = 0
    n_post: int = 0
    iterations: tuple[Iteration, ...] = ()

    def __post_init__(self) -> None:
        its = tuple(Iteration(*it) for it in self.iterations)
        object.__setattr__(self, "iterations", its)
        if min(self.n_pre, self.n_loop, self.n_post) < 0:
            raise ValueError("layer counts must be >= 0")
        if self.n_loop == 0 and its:
            raise ValueError("iterations given but the shared core has 0 layers")
        if self.n_loop > 0 and not its:
            raise ValueError("a shared core of >0 layers needs at least one iteration")
        for g, w in its:
            if g < 1 or not 0 <= w < g:
                raise ValueError(f"iteration 1/{g}@{w}: need chunk >= 1 and 0 <= offset < chunk")
        if self.n_loop == 0 and self.n_post:  # canonical plain form: every layer is "pre"
            object.__setattr__(self, "n_pre", self.n_pre + self.n_post)
            object.__setattr__(self, "n_post", 0)
        if self.n_pre + self.n_loop + self.n_post == 0:
            raise ValueError("a model needs at least one layer")
        problem = bound_problem(self.n_pre, self.n_loop, self.n_post, its)
        if problem:
            raise ValueError(problem)

    @property
    def T(self) -> int:
        """Number of loop iterations."""
        return len(self.iterations)

    @property
    def n_stored(self) -> int:
        """Stored (unique) Transformer layers."""
        return self.n_pre + self.n_loop + self.n_post

    @property
    def unrolled_depth(self) -> int:
        """Layers applied in one forward pass: N_pre + T * N_loop + N_post."""
        return self.n_pre + self.T * self.n_loop + self.n_post

    @property
    def recurrence_ratio(self) -> float:
        """Fraction of stored layers that are shared: N_loop / (N_pre + N_loop + N_post)."""
        return self.n_loop / self.n_stored

    @property
    def family(self) -> str:
        """`plain` (no loop), `looped` (every iteration at full resolution) or `spiral`."""
        if self.T == 0:
            return "plain"
        if all(it == (1, 0) for it in self.iterations):
            return "looped"
        return "spiral"

    def __str__(self) -> str:
        if self.T == 0:
            return str(self.n_pre)
        its = ",".join(str(it) for it in self.iterations)
        return f"{self.n_pre}+{self.n_loop}x{{{its}}}+{self.n_post}"


def bound_problem(n_pre: int, n_loop: int, n_post: int,
                  iterations: tuple[Iteration, ...]) -> str | None:
    """Why a layout is past spiralsearch/limits.py's bounds (layers per block, iterations,
    chunk size, the lcm of the chunk sizes), or None when it is within them."""
    for n, block in ((n_pre, "pre-block"), (n_loop, "shared-core"), (n_post, "post-block")):
        if not at_most("layers", n):
            return too_large("layers", n, f"{block} layer count")
    if not at_most("iterations", len(iterations)):
        return too_large("iterations", len(iterations), "loop iteration count")
    for g, _ in iterations:
        if not at_most("chunk", g):
            return too_large("chunk", g, "chunk size")
    period = math.lcm(*(g for g, _ in iterations))
    if not at_most("period", period):
        return too_large("period", period, "lcm of the chunk sizes")
    return None


class _Parser:
    """Recursive descent over the spec grammar; every error names the position."""

    def __init__(self, text: str):
        self.text, self.i = text, 0

    def fail(self, expected: str, pos: int | None = None) -> SpecError:
        return SpecError(self.text, self.i if pos is None else pos, expected)

    def skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def pos(self) -> int:
        self.skip_ws()
        return self.i

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.i] if self.i < len(self.text) else ""

    def eat(self, chars: str, expected: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.fail(expected + (f", got {c!r}" if c else ", got end of spec"))
        self.i += 1
        return c

    def integer(self, expected: str) -> int:
        self.skip_ws()
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in DIGITS:  # not '²' or '٣'
            self.i += 1
        if start == self.i:
            c = self.text[start] if start < len(self.text) else ""
            raise self.fail(expected + (f", got {c!r}" if c else ", got end of spec"), start)
        digits = self.i - start
        if not at_most("spec_digits", digits):  # before int(): Python refuses 4300+ digits
            raise self.fail(f"a number of {digits} digits; every count is at most "
                            f"{LIMITS['spec_digits'].bound} digits (spiralsearch/limits.py)",
                            start)
        return int(self.text[start : self.i])

    def bounded(self, key: str, value: int, what: str, pos: int) -> int:
        """value, or a SpecError at pos when it is past LIMITS[key]."""
        if not at_most(key, value):
            raise self.fail(too_large(key, value, what), pos)
        return value

    def iteration(self) -> Iteration:
        start = self.pos()
        num = self.integer("expected a resolution (1 or 1/g)")
        if num != 1:
            raise self.fail("expected a resolution of the form 1 or 1/g", start)
        chunk = 1
        if self.peek() == "/":
            self.i += 1
            gpos = self.pos()
            chunk = self.integer("expected a chunk size g after '1/'")
            if chunk < 1:
                raise self.fail("chunk size must be >= 1", gpos)
            self.bounded("chunk", chunk, "chunk size", gpos)
        offset = 0
        if self.peek() == "@":
            self.i += 1
            opos = self.pos()
            offset = self.integer("expected an offset after '@'")
            if offset >= chunk:
                raise self.fail(f"offset {offset} must be < chunk size {chunk}", opos)
        return Iteration(chunk, offset)

    def parse(self) -> Spec:
        if not self.text.strip():
            raise self.fail("expected a layer count, got an empty spec")
        n_pre = self.bounded("layers", self.integer("expected a layer count"),
                             "layer count", 0)
        if self.peek() == "":
            if n_pre == 0:
                raise self.fail("a model needs at least one layer", 0)
            return Spec(n_pre)
        self.eat("+", "expected '+' after the pre-block layer count")
        loop_pos = self.pos()
        n_loop = self.bounded("layers", self.integer("expected the shared-core layer count"),
                              "shared-core layer count", loop_pos)
        self.eat("x×", "expected 'x' or '×' after the shared-core layer count")
        self.eat("{", "expected '{' to open the resolution list")
        iterations: list[Iteration] = []
        period = 1  # lcm of the chunk sizes so far: the decode period
        while self.peek() != "}" or iterations:
            if iterations:
                if self.peek() != ",":
                    break
                self.i += 1
            start = self.pos()
            self.bounded("iterations", len(iterations) + 1, "loop iteration count", start)
            iterations.append(self.iteration())
            period = self.bounded("period", math.lcm(period, iterations[-1].chunk),
                                  "lcm of the chunk sizes", start)
        self.eat("}", "expected ',' or '}' after a resolution")
        self.eat("+", "expected '+' before the post-block layer count")
        post_pos = self.pos()
        n_post = self.bounded("layers", self.integer("expected the post-block layer count"),
                              "post-block layer count", post_pos)
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r} after the end of the spec")
        if n_loop == 0 and iterations:
            raise self.fail("a shared core of 0 layers cannot have iterations", loop_pos)
        if n_loop > 0 and not iterations:
            raise self.fail(f"a shared core of {n_loop} layers needs at least one resolution",
                            loop_pos)
        if n_pre + n_loop + n_post == 0:
            raise self.fail("a model needs at least one layer", 0)
        if n_loop == 0:  # a plain model keeps all its layers in one block
            self.bounded("layers", n_pre + n_post, "plain layer count (pre + post)", 0)
        return Spec(n_pre, n_loop, n_post, tuple(iterations))


def parse_spec(text: str | Spec) -> Spec:
    """Parse spec notation (e.g. "2+4x{1/8,1/4,1/2,1}+2") into a `Spec`.

    Raises `SpecError` naming the 0-based character position and what was expected there.
    A `Spec` passes through unchanged.
    """
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str):
        raise SpecError(str(text), 0, f"expected a string, got {type(text).__name__}")
    return _Parser(text).parse()
