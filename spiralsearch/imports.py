"""External results (docs/design.md §5, §6): published or other-codebase training runs, one
CSV row per run, land in a results file as imported trials, and `fit` and the report treat
them like a sweep's.

    n = import_csv("tests/data/epoch_chinchilla.csv", "results/epoch.duckdb", "epoch",
                   params="Model Size", flops="Training FLOP")   # 245 rows written

A row needs parameters N, a loss L (nats/token) and training tokens D or training FLOPs C.
The missing one of D and C is derived as published fits do: D = C / (6 N), C = 6 N D.
Parameters are taken as non-embedding parameters and the loss as a held-out loss: it is
stored as `final_test_loss`, the loss fits use. Each row is its own budget cell (its FLOPs)
unless a budget column groups runs, e.g. an IsoFLOP dataset's nominal budget; within a
budget, `size_index` ranks the parameter counts.

A trial's config is {"imported": {source file name, group, row, the values}}, so its id is a
content hash: importing the same file again writes the same ids and no duplicates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D: training FLOPs of a dense Transformer, as published
QUANTITIES = ("params", "tokens", "flops", "loss", "budget")
OWN_BUDGET = "flops (each run its own budget)"  # `columns["budget"]` without a budget column


@dataclass
class Runs:
    """A CSV's runs, validated. `frame` has one row per run and the float columns params
    (non-embedding parameters), tokens, flops (training FLOPs), loss (nats/token) and
    budget (FLOPs), all finite and > 0; `columns` says which CSV column each came from,
    or how it was derived."""

    path: Path
    frame: pd.DataFrame
    columns: dict[str, str]


def default_sweep(group: str) -> str:
    """The sweep an import of `group` is recorded as."""
    return f"import-{group}"


def _read(path: Path) -> pd.DataFrame:
    """The CSV as pandas reads it; ValueError for an empty or unreadable file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    if df.empty:
        raise ValueError(f"{path}: a header and no rows")
    return df


def _missing(path: Path, df: pd.DataFrame, col: str, flag: str) -> ValueError:
    have = ", ".join(repr(str(c)) for c in df.columns)
    return ValueError(f"{path}: no column {col!r} (--{flag} COL names it); its columns: {have}")


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _numbers(path: Path, df: pd.DataFrame, col: str, flag: str,
             at_least: float = 0.0) -> np.ndarray:
    """Column `col` as finite floats > 0 (>= `at_least` when that is set); else ValueError
    naming the first bad row (1 = the first row after the header) and the column."""
    raw = df[col]
    x = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(x) | (x <= 0) | (x < at_least)
    if not bad.any():
        return x
    i = int(np.argmax(bad))
    v = raw.iloc[i]
    if pd.isna(v):
        why = "is empty"
    elif np.isnan(x[i]):
        why = f"{_show(v)} is not a number"
    elif not np.isfinite(x[i]):
        why = f"{_show(v)} is not finite"
    elif x[i] <= 0:
        why = f"{_show(v)} is not > 0"
    else:
        why = f"{_show(v)} is below {at_least:g}: {flag} are counts, not millions or billions"
    more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
    raise ValueError(f"{path}: row {i + 1}, column {col!r} (--{flag}): {why}{more}")


def _present(df: pd.DataFrame, col: str | None, default: str, path: Path, flag: str) -> bool:
    """Whether to read optional column `col` (tokens or flops): one named on purpose must
    exist, the default name may be absent (the value is then derived)."""
    if col is None:
        return False
    if col in df:
        return True
    if col == default:
        return False
    raise _missing(path, df, col, flag)


def read_runs(path: str | Path, *, params: str = "params", tokens: str | None = "tokens",
              flops: str | None = "flops", loss: str = "loss",
              budget: str | None = None) -> Runs:
    """Read and validate a CSV of training runs: `params`, `loss` (and `budget`, if given)
    are column names that must exist; `tokens` and `flops` too, unless left at their
    default name and absent (or None), when the value is derived from the other
    (D = C / (6 N), C = 6 N D). Raises FileNotFoundError or ValueError naming the problem."""
    path = Path(path)
    df = _read(path)
    for col, flag in ((params, "params"), (loss, "loss"), (budget, "budget")):
        if col is not None and col not in df:
            raise _missing(path, df, col, flag)
    has_d = _present(df, tokens, "tokens", path, "tokens")
    has_c = _present(df, flops, "flops", path, "flops")
    if not (has_d or has_c):
        raise ValueError(f"{path}: needs training tokens (--tokens COL) or training FLOPs "
                         f"(--flops COL); its columns: "
                         f"{', '.join(repr(str(c)) for c in df.columns)}")
    N = _numbers(path, df, params, "params", at_least=1.0)
    L = _numbers(path, df, loss, "loss")
    D = _numbers(path, df, tokens, "tokens", at_least=1.0) if has_d else None
    C = _numbers(path, df, flops, "flops") if has_c else None
    columns = dict(params=params, loss=loss)
    if D is None:
        D, columns["tokens"] = C / (FLOPS_PER_PARAM_TOKEN * N), "flops / (6 params)"
    else:
        columns["tokens"] = tokens
    if C is None:
        C, columns["flops"] = FLOPS_PER_PARAM_TOKEN * N * D, "6 params tokens"
    else:
        columns["flops"] = flops
    B = _numbers(path, df, budget, "budget") if budget is not None else C
    columns["budget"] = budget if budget is not None else OWN_BUDGET
    frame = pd.DataFrame(dict(params=N, tokens=D, flops=C, loss=L, budget=B))
    return Runs(path, frame, {k: columns[k] for k in QUANTITIES})


def trial_rows(runs: Runs, group: str, sweep: str) -> list[dict[str, Any]]:
    """One complete, selected, imported trial row per run (see the module docstring)."""
    f = runs.frame
    size = f.groupby("budget")["params"].rank(method="dense").astype(int) - 1
    budgeted = runs.columns["budget"] != OWN_BUDGET
    rows = []
    for i, r in enumerate(f.itertuples(index=False)):
        values = dict(params=r.params, tokens=r.tokens, flops=r.flops, loss=r.loss)
        if budgeted:
            values["budget"] = r.budget
        config = {"imported": dict(source=runs.path.name, group=group, row=i + 1, **values)}
        rows.append(dict(
            sweep=sweep, config=config, status="complete", imported=True, family="imported",
            group_name=group, budget_kind="flops", budget_target=float(r.budget),
            budget_achieved=float(r.flops), train_flops=float(r.flops),
            tokens=round(r.tokens), flops_per_token=float(r.flops / r.tokens),
            params_non_embedding=round(r.params), final_test_loss=float(r.loss),
            replicate=0, selected=True, size_index=int(size.iloc[i])))
    return rows


def import_yaml(runs: Runs, group: str, sweep: str) -> str:
    """The `sweeps.yaml` text of an import: the file (and its sha256), the columns used."""
    import yaml

    digest = hashlib.sha256(runs.path.read_bytes()).hexdigest()
    doc = dict(name=sweep, imported=dict(
        source=str(runs.path), sha256=digest, rows=len(runs.frame), group=group,
        columns=runs.columns, loss="taken as a held-out loss: final_test_loss (nats/token)"))
    return yaml.safe_dump(doc, sort_keys=False)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("spiralsearch", "pandas", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_runs(runs: Runs, db: str | Path, group: str, *, sweep: str | None = None) -> int:
    """Write `runs` into results file `db` as the trials of sweep `sweep` (default
    `import-GROUP`), in comparison group `group`; returns the rows written."""
    from spiralsearch.store import ResultsStore

    if not group.strip():
        raise ValueError("--group: must name the imported runs' comparison group")
    sweep = sweep or default_sweep(group)
    store = ResultsStore(db)
    store.begin_sweep(sweep, import_yaml(runs, group, sweep), versions=_versions())
    try:
        store.write(trials=trial_rows(runs, group, sweep))
    except BaseException:
        store.end_sweep(sweep, "failed")
        raise
    store.end_sweep(sweep)
    return len(runs.frame)


def import_csv(path: str | Path, db: str | Path, group: str, *, params: str = "params",
               tokens: str | None = "tokens", flops: str | None = "flops", loss: str = "loss",
               budget: str | None = None, sweep: str | None = None) -> int:
    """Import a CSV of training runs (one per row) into results file `db` as group `group`;
    returns the rows written. Columns as in `read_runs`; see the module docstring."""
    runs = read_runs(path, params=params, tokens=tokens, flops=flops, loss=loss, budget=budget)
    return write_runs(runs, db, group, sweep=sweep)
