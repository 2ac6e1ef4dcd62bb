"""Which sweep of a results file a run continues (docs/design.md §4).

A results file remembers the YAML each sweep name ran with (the `sweeps` table). Re-running
a YAML whose content differs from what its name ran with would mix trials of two designs
under one name, so it is refused with the difference shown, unless `--force-new` starts a
new sweep name (NAME-2, NAME-3, ...). A YAML that one of those numbered sweeps ran resumes
that sweep. Comments and layout are not content: the YAML documents are compared, less
what does not change which trials run or what they compute (OPERATIONAL: the name, the
description, where checkpoints are stored, how many trials run at once, retries, which
checkpoints are kept, the memory limit, and the execution settings that are not part of a
trial's identity: train.compile, micro_batch, loss_chunk); an edit of those alone
continues the sweep and records the new YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

import yaml

from spiralsearch.identity import EXECUTION
from spiralsearch.search.space import SearchSpace
from spiralsearch.store import ResultsStore

DIFF_LINES = 24  # at most this many lines of the unified diff in the refusal


class SweepChanged(ValueError):
    """The YAML differs from the one this sweep name ran with in this results file. The
    message's first line is the error; the lines after it are a short unified diff."""


# and how a trial's steps are run (identity.EXECUTION: micro-batches after an OOM, ...)
OPERATIONAL = {"": ("name", "description", "storage"),
               "search": ("max_concurrent", "max_failures", "keep_checkpoints"),
               "resources": ("memory_gb",)} | EXECUTION


def _content(text: str | None) -> object:
    """A YAML's content less its OPERATIONAL keys; the text itself if it does not parse."""
    try:
        doc = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return text
    if not isinstance(doc, dict):
        return doc
    for section, keys in OPERATIONAL.items():
        part = doc if not section else doc.get(section)
        if isinstance(part, dict):
            for k in keys:
                part.pop(k, None)
    return {k: v for k, v in doc.items() if v not in ({}, None)}


def same_design(a: str | None, b: str | None) -> bool:
    """Whether two search-space YAML texts ask for the same trials (comments, layout and
    OPERATIONAL keys aside)."""
    return _content(a) == _content(b)


def diff(old: str, new: str, old_name: str, new_name: str, n: int = DIFF_LINES) -> str:
    """A short unified diff (1 line of context) from `old` to `new`."""
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name,
                                      n=1, lineterm=""))
    if len(lines) > n:
        lines = lines[:n] + [f"... ({len(lines) - n} more diff lines)"]
    return "\n".join(lines)


def sweep_name(store: ResultsStore, space: SearchSpace, *, force_new: bool = False,
               source: str = "this YAML") -> tuple[SearchSpace, str | None]:
    """The space to run, renamed if it continues or starts a numbered sweep, and a note
    saying so (None when it runs under its own name). SweepChanged when the file's sweep
    of this name ran other content and force_new is not set."""
    ran = store.sweep_yamls()
    name = space.name
    numbered = {n: y for n, y in ran.items()
                if re.fullmatch(re.escape(name) + r"-\d+", n)}
    if force_new:
        new = f"{name}-{_next(ran, name)}"
        return dataclasses.replace(space, name=new), f"started a new sweep {new!r} (--force-new)"
    if name not in ran or same_design(ran[name], space.yaml_text):
        return space, None
    for n in sorted(numbered, key=lambda n: int(n.rsplit("-", 1)[1])):
        if same_design(numbered[n], space.yaml_text):
            return dataclasses.replace(space, name=n), f"continues sweep {n!r}, which ran this YAML"
    shown = diff(ran[name] or "", space.yaml_text, f"{name} (as run before)", source)
    raise SweepChanged(
        f"sweep {name!r} in {store.path} ran with a different YAML; re-running it under "
        f"the same name would mix two designs. Rename it, use another --db, or pass "
        f"--force-new to start sweep {name}-{_next(ran, name)} in this file.\n{shown}")


def _next(ran: dict, name: str) -> int:
    k = 2
    while f"{name}-{k}" in ran:
        k += 1
    return k
