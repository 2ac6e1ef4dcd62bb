"""Re-train one stored trial from scratch and check that it reproduces (docs/design.md §4).

    result = rerun("3f2a9c0d1e2b4a5f", "results/demo.duckdb")
    result.equal          # final val and test loss both equal to the stored ones, exactly

The trial's config comes from the store (`trials.config`, the identity dict its id hashes).
It is placed as the sweep's worker placed it (worker.placed: threads from the sweep's
`resources.cpu`, an `auto` device from `resources.gpu`, read from the YAML the `sweeps`
table keeps), because the thread count changes how float sums are split. Training is
seeded and batches are a function of the step, so on the same machine and software the
losses come back bit for bit.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from spiralsearch.config import TrialConfig
from spiralsearch.schema import Status
from spiralsearch.search.checkpoints import runs_dir
from spiralsearch.search.space import Resources
from spiralsearch.search.validate import read_yaml
from spiralsearch.search.worker import placed
from spiralsearch.store import connect_readonly

LOSSES = ("final_val_loss", "final_test_loss")  # nats/token: what a rerun must reproduce


class RerunError(RuntimeError):
    """The re-run crashed while training (the stored trial itself was found and valid)."""


@dataclass
class StoredTrial:
    """A complete trial as the store holds it: its sweep, its config as the worker placed
    it, and its final losses (nats/token)."""

    trial_id: str
    sweep: str
    config: TrialConfig
    losses: dict[str, float]


@dataclass
class RerunResult:
    """A re-run next to the stored trial: final losses (nats/token) of both, and where the
    re-run's folder (summary.json, checkpoints/last.pt) is."""

    trial_id: str
    sweep: str
    out: Path
    status: str  # the re-run's
    threads: int
    device: str
    stored: dict[str, float] = field(default_factory=dict)
    rerun: dict[str, float] = field(default_factory=dict)

    def matches(self, loss: str) -> bool:
        """Whether the re-run's `loss` equals the stored one exactly (NaN, e.g. no test
        split, equals NaN)."""
        return _same(self.stored[loss], self.rerun[loss])

    @property
    def equal(self) -> bool:
        """The re-run ended complete with both final losses equal exactly."""
        return self.status == Status.COMPLETE and all(self.matches(k) for k in LOSSES)

    def to_dict(self) -> dict:
        """One flat record: ids, placement, stored_* and rerun_* losses, equal."""
        return dict(trial_id=self.trial_id, sweep=self.sweep, status=self.status,
                    out=str(self.out), threads=self.threads, device=self.device,
                    **{f"stored_{k}": self.stored[k] for k in LOSSES},
                    **{f"rerun_{k}": self.rerun[k] for k in LOSSES}, equal=self.equal)


def _same(a: float | None, b: float | None) -> bool:
    def missing(x):
        return x is None or (isinstance(x, float) and math.isnan(x))

    return missing(a) and missing(b) or a == b


def _float(v) -> float:
    """A stored loss as a float; NULL (None, pandas NA) as NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def stored_trial(trial_id: str, db: str | Path, *, timeout_s: float = 30.0) -> StoredTrial:
    """The complete trial `trial_id` of results file `db`, its config placed as its sweep's
    worker placed it. StoreError when `db` is missing; ValueError when the trial is unknown
    or not complete (only a complete trial has final losses to reproduce)."""
    with connect_readonly(db, timeout_s=timeout_s) as con:
        rows = con.execute(
            "SELECT t.sweep, t.status, t.config, t.final_val_loss, t.final_test_loss, s.yaml "
            "FROM trials t LEFT JOIN sweeps s ON s.name = t.sweep WHERE t.trial_id = ?",
            [trial_id]).fetchall()
    if not rows:
        raise ValueError(f"no trial {trial_id!r} in {db}")
    sweep, status, config, val, test, yaml_text = rows[0]
    if status != Status.COMPLETE:
        raise ValueError(f"trial {trial_id} in {db} is {status}, not complete: only a complete "
                         f"trial has final losses to reproduce")
    config = TrialConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
    doc = read_yaml(yaml_text, f"sweep {sweep!r} in {db}") if yaml_text else {}
    resources = Resources.from_dict(doc.get("resources"), "resources")
    if resources.workers > 1:
        raise ValueError(f"trial {trial_id} trained on {resources.workers} data-parallel "
                         f"workers (resources.workers); a rerun trains in one process, "
                         f"whose float sums differ, so it cannot reproduce it exactly")
    return StoredTrial(trial_id, sweep, placed(config, resources),
                       dict(final_val_loss=_float(val), final_test_loss=_float(test)))


def default_out(db: str | Path, trial_id: str) -> Path:
    """A new folder for a re-run: NAME.runs/rerun/<trial_id>/<UTC time>-<random>/."""
    parent = runs_dir(Path(db).resolve()) / "rerun" / trial_id
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-", time.gmtime()),
                                 dir=parent))


def rerun(trial_id: str, db: str | Path, out: str | Path | None = None, *,
          timeout_s: float = 30.0) -> RerunResult:
    """Re-train stored trial `trial_id` of results file `db` from scratch into `out`
    (default: a new folder, `default_out`) and compare its final val and test losses with
    the stored ones. Raises what `stored_trial` raises, ValueError when `out` already holds
    a checkpoint (training would resume from it rather than re-train) or the data or
    budget no longer allow the trial, and RerunError when training crashes."""
    import torch

    from spiralsearch.training.loop import prepare, train

    trial = stored_trial(trial_id, db, timeout_s=timeout_s)
    if out is not None and (Path(out) / "checkpoints" / "last.pt").exists():
        raise ValueError(f"{out} already holds a run (checkpoints/last.pt): a rerun trains "
                         f"from scratch, so give it an empty folder")
    prepare(trial.config)  # refuse missing data or a changed budget before writing
    out = Path(out) if out is not None else default_out(db, trial_id)
    before = torch.get_num_threads()  # train() sets the process-wide count; put it back
    try:
        result = train(trial.config, out_dir=out)
    except Exception as e:  # noqa: BLE001 — a crash mid-run is the rerun's failure
        raise RerunError(f"rerun of {trial_id} failed: {type(e).__name__}: {e}") from e
    finally:
        torch.set_num_threads(before)
    s = result.summary
    return RerunResult(trial_id, trial.sweep, out, s["status"], trial.config.train.threads,
                       trial.config.train.device, trial.losses,
                       {k: _float(s[k]) for k in LOSSES})
