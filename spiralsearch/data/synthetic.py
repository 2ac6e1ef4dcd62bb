"""Synthetic languages with known structure: Dyck-k (nested brackets) and a random PCFG.

Both generators are seeded, pure numpy and vectorised over many independent chains or
sentences, so a few MB take well under a second. They return documents as Python strings;
`spiralsearch.data.dataset` turns those into a tokenized, cached dataset.

    generate_dyck(DyckConfig(k=2, depth=8, chars=10_000))   # list of balanced strings
    dyck_optimal_loss("()()", k=1, p=0.5, depth=1)          # 0.0 nats/char

Config validation raises ValueError; `spiralsearch.data.dataset` rewraps it as DataError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spiralsearch.limits import at_most, too_large

# Bracket pair i renders as OPEN[i] ... CLOSE[i]; letters extend the 4 ASCII pairs to k=30.
OPEN = "([{<abcdefghijklmnopqrstuvwxyz"
CLOSE = ")]}>ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GEN_VERSION = 1  # bump when a generator's output changes, so cached token files go stale


@dataclass(frozen=True)
class DyckConfig:
    """Dyck-k stream: k bracket types, nesting capped at `depth`, open probability p.

    At depth 0 the next symbol opens; at the cap it closes; otherwise it opens with prob p
    (type uniform over k) or closes the innermost open bracket. `chars` is the total size;
    documents are runs of whole excursions from depth 0, each about `doc` chars."""

    k: int = 4
    depth: int = 16
    p: float = 0.45
    chars: int = 2_000_000
    seed: int = 0
    doc: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.k <= len(OPEN):
            raise ValueError(f"k={self.k} must be in 1..{len(OPEN)}")
        if self.depth < 1 or self.chars < 1 or self.doc < 2:
            raise ValueError("depth, chars must be >= 1 and doc >= 2")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p={self.p} must be in [0, 1]")
        _bounded(chars=("synthetic_chars", self.chars), depth=("synthetic_depth", self.depth),
                 doc=("synthetic_doc", self.doc))
        if self.depth > self.doc:
            raise ValueError(f"depth={self.depth} is deeper than a document of doc={self.doc} "
                             f"chars can reach")


@dataclass(frozen=True)
class PCFGConfig:
    """A random hierarchical grammar (in the style of Allen-Zhu & Li's cfg3).

    Levels depth, depth-1, ..., 1 hold nonterminals; level 0 holds `symbols` terminals,
    rendered 'a', 'b', .... The start symbol is alone at the top level, every other level has
    `symbols` nonterminals. Each nonterminal has `rules` productions (chosen uniformly), each
    a string of branching-1 or branching symbols of the level below (at least 1), drawn
    once from `seed`. A sentence expands the start symbol down to terminals, so it has about
    (branching - 1/2)**depth chars; each sentence is one document, ended by a newline."""

    depth: int = 5
    branching: int = 3
    symbols: int = 4
    rules: int = 3
    chars: int = 2_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.depth, self.branching, self.symbols, self.rules, self.chars) < 1:
            raise ValueError("depth, branching, symbols, rules, chars must all be >= 1")
        if self.symbols > 26:
            raise ValueError(f"symbols={self.symbols} must be <= 26 (terminals are a-z)")
        _bounded(chars=("synthetic_chars", self.chars), depth=("synthetic_depth", self.depth),
                 rules=("synthetic_rules", self.rules),
                 branching=("synthetic_rules", self.branching))


def _bounded(**options: tuple[str, int]) -> None:
    """ValueError naming the first option past its bound in spiralsearch/limits.py."""
    for name, (key, value) in options.items():
        if not at_most(key, value):
            raise ValueError(too_large(key, value, name))


def _dyck_chains(cfg: DyckConfig, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Run n independent Dyck chains for cfg.doc steps each, vectorised over the chains.
    Returns each chain cut after its last return to depth 0 (symbol codes 2*type + is_close);
    chains that never return are dropped."""
    T, ar = cfg.doc, np.arange(n)
    u = rng.random((T, n))
    types = rng.integers(0, cfg.k, size=(T, n), dtype=np.int16)
    depth = np.zeros(n, dtype=np.int64)
    stack = np.zeros((n, cfg.depth), dtype=np.int16)  # bracket type at each open level
    codes = np.empty((T, n), dtype=np.int16)
    at_zero = np.empty((T, n), dtype=bool)
    for t in range(T):
        opens = (depth == 0) | ((depth < cfg.depth) & (u[t] < cfg.p))
        slot = np.where(opens, depth, depth - 1)
        typ = np.where(opens, types[t], stack[ar, slot])
        stack[ar, slot] = typ  # a close rewrites its own slot with the same value: a no-op
        depth += np.where(opens, 1, -1)
        codes[t] = 2 * typ + ~opens
        at_zero[t] = depth == 0
    has_zero = at_zero.any(axis=0)
    end = T - np.argmax(at_zero[::-1], axis=0)  # one past the last step that hit depth 0
    codes = codes.T
    return [codes[i, : end[i]] for i in np.flatnonzero(has_zero)]


def generate_dyck(cfg: DyckConfig) -> list[str]:
    """Dyck documents of about cfg.chars chars in total (whole documents, so a little over).

    Every document is balanced and starts at depth 0, so any concatenation of them is a valid
    stream. Cutting chains at their last return to 0 very slightly favours short final
    excursions; with doc >> excursion length this is negligible."""
    rng = np.random.default_rng(cfg.seed)
    table = np.frombuffer("".join(o + c for o, c in zip(OPEN, CLOSE, strict=True)).encode(),
                          dtype=np.uint8)
    docs: list[str] = []
    total = 0
    while total < cfg.chars:
        n = max(1, math.ceil((cfg.chars - total) / (0.9 * cfg.doc)))
        chains = _dyck_chains(cfg, n, rng)
        kept = sum(len(c) for c in chains)
        if kept < 0.01 * n * cfg.doc:  # the walk hardly ever comes back to depth 0
            raise ValueError(f"p={cfg.p} at depth={cfg.depth} rarely returns to depth 0 "
                             f"within doc={cfg.doc} chars; lower p or depth, or raise doc")
        for c in chains:
            if total >= cfg.chars:
                break
            docs.append(table[c].tobytes().decode("ascii"))
            total += len(c)
    return docs


def dyck_depths(text: str) -> np.ndarray:
    """Depth before each char of a bracket string (int64, same length as text)."""
    b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    is_open = np.isin(b, np.frombuffer(OPEN.encode(), dtype=np.uint8))
    step = np.where(is_open, 1, -1)
    return np.concatenate([[0], np.cumsum(step)[:-1]]).astype(np.int64)


def dyck_state_entropy(k: int, p: float, depth: int) -> np.ndarray:
    """Conditional entropy of the next symbol (nats) at each depth 0..depth of the chain."""
    hp = 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))
    h = np.full(depth + 1, hp + p * math.log(k))
    h[0], h[depth] = math.log(k), 0.0  # forced open (type uniform) / forced close
    return h


def dyck_optimal_loss(text: str, k: int, p: float, depth: int) -> float:
    """Bayes-optimal loss of a Dyck stream in nats per char: the mean over positions of the
    entropy of the next symbol given the whole prefix (which fixes the depth and the stack).
    A model that sees only a window starting mid-stream does not know the depth or the open
    brackets at its start, so it pays a little more, an excess that fades as seq_len grows."""
    d = dyck_depths(text)
    if len(d) == 0:
        raise ValueError("empty Dyck stream")
    if d.min() < 0 or d.max() > depth:
        raise ValueError(f"not a Dyck stream with depth cap {depth}")
    return float(dyck_state_entropy(k, p, depth)[d].mean())


def make_grammar(cfg: PCFGConfig) -> list[np.ndarray]:
    """The grammar's rules: entry l-1 (for level l = 1..depth) is an int array of shape
    (nonterminals at level l, rules, branching) of child ids at level l-1, -1 padded."""
    rng = np.random.default_rng([cfg.seed, 0])  # stream 0: the grammar; 1: the sentences
    shortest = max(1, cfg.branching - 1)
    levels = []
    for level in range(1, cfg.depth + 1):
        n = 1 if level == cfg.depth else cfg.symbols
        body = rng.integers(0, cfg.symbols, size=(n, cfg.rules, cfg.branching))
        length = rng.integers(shortest, cfg.branching + 1, size=(n, cfg.rules))
        body[np.arange(cfg.branching) >= length[..., None]] = -1
        levels.append(body)
    return levels


def _expand(grammar: list[np.ndarray], n: int, rules: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Expand n start symbols to terminals, all sentences at once, one level per step.
    Returns (terminal ids, sentence id of each terminal)."""
    sym = np.zeros(n, dtype=np.int64)
    sent = np.arange(n)
    for body in reversed(grammar):
        kids = body[sym, rng.integers(0, rules, size=len(sym))]  # (len, branching)
        keep = kids >= 0
        sym, sent = kids[keep], np.broadcast_to(sent[:, None], kids.shape)[keep]
    return sym, sent


def generate_pcfg(cfg: PCFGConfig) -> list[str]:
    """PCFG sentences (one per document, each ending in a newline), cfg.chars chars or a
    little more in total."""
    grammar = make_grammar(cfg)
    mean_len = np.prod([(b >= 0).sum(-1).mean() for b in grammar]) + 1
    if not at_most("synthetic_chars", mean_len):  # one sentence is generated at once
        raise ValueError(f"sentences of ~{mean_len:.3g} chars are too long; "
                         "lower depth or branching")
    rng = np.random.default_rng([cfg.seed, 1])
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    docs: list[str] = []
    total = 0
    while total < cfg.chars:
        n = max(1, math.ceil((cfg.chars - total) / mean_len))
        sym, sent = _expand(grammar, n, cfg.rules, rng)
        bounds = np.searchsorted(sent, np.arange(n + 1))
        text = letters[sym].tobytes().decode("ascii")
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if total >= cfg.chars:
                break
            docs.append(text[a:b] + "\n")
            total += b - a + 1
    return docs
