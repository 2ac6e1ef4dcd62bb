"""Trial checkpoints of a sweep (docs/design.md §4): where they live and which ones survive.

A sweep's worker trains each trial into `results/NAME.runs/checkpoints/<trial_id>/` (or
`STORAGE/NAME.runs/checkpoints/<trial_id>/` with a `storage:` folder or URI, which the
nodes of a cluster share; storage.py mirrors a trial's folder to a URI), the folder
`spiralsearch train --out` would write: `summary.json` and `checkpoints/last.pt` (model,
optimiser, step, RNG). The worker leaves the folder in place
when the trial ends. Once the sweep's search and replicate phases are done, `prune`
deletes the folders that `search.keep_checkpoints` does not keep:

- `selected` (default): the complete runs of each cell's selected point (its replicates,
  replicate 0 included), which reports and probes look at;
- `all`: every trial's folder, stopped, failed and diverged ones included;
- `none`: no finished trial's folder.

A trial without a final status (cut off `running` or `pending`) always keeps its folder,
because a re-run of the sweep resumes it from there. Resume never needs the others: it
reads the store, and complete trials are skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from spiralsearch.schema import FINAL_STATUSES, Status
from spiralsearch.search.storage import Remote, is_uri, join
from spiralsearch.store import ResultsStore

if TYPE_CHECKING:  # the space module imports optuna; pruning needs only two of its fields
    from spiralsearch.search.space import SearchSpace

KEEP = ("selected", "all", "none")


def runs_dir(results: str | Path, storage: str | None = None) -> Path | str:
    """The folder for what a results file's sweep writes outside the store: `ray/` (Ray
    Tune's and Ray Train's files), `checkpoints/` (one folder per trial) and `rerun/`.
    `NAME.runs` beside the results file, or inside the space's `storage:` (a shared
    filesystem, so every node of a cluster reads and writes the same checkpoints; or a
    URI, returned as a string, search/storage.py)."""
    path = Path(results)
    if storage is not None and is_uri(storage):
        return join(storage, f"{path.stem}.runs")
    root = path.parent if storage is None else Path(storage).expanduser()
    return root / f"{path.stem}.runs"


def checkpoints_dir(results: str | Path, storage: str | None = None) -> Path | str:
    """Where a sweep's trial folders live: `NAME.runs/checkpoints/` (a URI string when
    `storage:` is one)."""
    return join(runs_dir(results, storage), "checkpoints")


class StorageError(ValueError):
    """Where a sweep's checkpoints go cannot be written."""


def check_storage(results: str | Path, storage: str | None) -> Path | str:
    """The sweep's runs folder (runs_dir), refused with a one-line StorageError when it
    cannot be made or written (its nearest existing folder is not writable), or, for a
    URI, when pyarrow cannot resolve or reach it or it names a file. Creates nothing, so a
    dry run can ask too."""
    runs = runs_dir(results, storage)
    if isinstance(runs, str):
        return _check_uri(runs)
    where = runs
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        key = "storage" if storage is not None else "--db"
        raise StorageError(f"{key}: cannot write {runs} ({where} is not a writable folder); "
                           f"checkpoints and Ray's files go there")
    return runs


def _check_uri(runs: str) -> str:
    try:
        kind = Remote(runs).kind()
    except Exception as e:  # noqa: BLE001 — pyarrow raises its own kinds; say it in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage: cannot reach {runs} ({first}); checkpoints and Ray's "
                           f"files go there") from None
    if kind == "file":
        raise StorageError(f"storage: {runs} is a file, not a folder; checkpoints and "
                           f"Ray's files go there")
    return runs


def storages(results: str | Path) -> list[str]:
    """The `storage:` folders the sweeps of a results file ran with (from the YAML each
    sweep recorded); [] when none set one, or the file cannot be read."""
    import duckdb

    from spiralsearch.search.validate import read_yaml
    from spiralsearch.store import StoreError, query

    if not Path(results).is_file():
        return []
    try:
        yamls = query(results, "SELECT yaml FROM sweeps")["yaml"].tolist()
    except (StoreError, duckdb.Error, OSError):
        return []
    out = []
    for text in yamls:
        try:
            doc = read_yaml(text or "", "sweeps.yaml")
        except ValueError:
            continue
        s = doc.get("storage")
        if isinstance(s, str) and s not in out:
            out.append(s)
    return out


def checkpoint_of(results: str | Path, trial_id: str) -> Path | None:
    """The run folder of a stored trial (summary.json and checkpoints/last.pt, what
    `spiralsearch probe` reads), beside the results file or in a sweep's `storage:`
    folder; None when it has none (pruned, or never trained). A folder in a URI storage is
    pulled into `NAME.runs/pulled/<trial_id>/` beside the results file first."""
    for storage in (None, *storages(results)):
        run = join(checkpoints_dir(results, storage), trial_id)
        if isinstance(run, str):
            run = _pulled(results, Remote(run), trial_id)
            if run is None:
                continue
        if _complete(run):
            return run
    return None


def _complete(run: Path) -> bool:
    return (run / "summary.json").is_file() and (run / "checkpoints" / "last.pt").is_file()


def _pulled(results: str | Path, remote: Remote, trial_id: str) -> Path | None:
    """A local copy of a trial folder in a URI storage, or None when the URI has no
    complete folder or cannot be read. A copy whose files have the URI's sizes is reused
    (a kept checkpoint is not trained again), else it is pulled afresh."""
    try:
        sizes = remote.sizes()
        if not {"summary.json", "checkpoints/last.pt"} <= set(sizes):
            return None
        local = runs_dir(results) / "pulled" / trial_id
        have = {p.relative_to(local).as_posix(): p.stat().st_size
                for p in local.rglob("*") if p.is_file()} if local.is_dir() else {}
        if have != sizes:
            shutil.rmtree(local, ignore_errors=True)
            remote.pull(local)
    except (OSError, ValueError):  # pyarrow's: unreachable (OSError), unparsable (ValueError)
        return None
    return local


def keeps(keep: str, status: str, selected: bool | None) -> bool:
    """Whether a trial's folder survives pruning under search.keep_checkpoints `keep`."""
    if status not in FINAL_STATUSES:  # cut off mid-run: a re-run resumes from it
        return True
    if keep == "all":
        return True
    return keep == "selected" and status == Status.COMPLETE and bool(selected)


def prune(store: ResultsStore, space: SearchSpace) -> int:
    """Delete the checkpoint folders of the sweep's stored trials that
    `space.search.keep_checkpoints` does not keep; returns how many it deleted. Folders of
    trials the store does not know are left alone: nothing says what they are."""
    keep = space.search.keep_checkpoints
    if keep not in KEEP:
        raise ValueError(f"search.keep_checkpoints: {keep!r} is not one of {', '.join(KEEP)}")
    root = checkpoints_dir(store.path, space.storage)
    trials = store.trial_selection(space.name)
    removed = 0
    for name in _folders(root):
        state = trials.get(name)
        if state is None or keeps(keep, *state):
            continue
        if isinstance(root, str):
            Remote(root).child(name).delete()
        else:
            shutil.rmtree(root / name, ignore_errors=True)
        removed += 1
    return removed


def _folders(root: Path | str) -> list[str]:
    """The trial folders' names under a checkpoints folder, local or a URI."""
    if isinstance(root, str):
        return Remote(root).folders()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
