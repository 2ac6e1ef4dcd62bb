"""The result schema of a trial (docs/design.md §5): its statuses, its summary and its
metric rows. The training loop writes these, the sweep worker reports them, and the store
builds its `trials` and `metrics` columns from them: one owner for every result field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spiralsearch.fields import field_specs, opt


class Status(StrEnum):
    """How a trial stands. `stopped`: ended early by the scheduler (ASHA). `interrupted`:
    cut off by a Ctrl-C or SIGTERM of the sweep driver; like `running` (a driver that was
    killed) it is not final, so a re-run of the sweep resumes it from its checkpoint."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    REJECTED = "rejected"  # refused before training (budget, data)
    INTERRUPTED = "interrupted"  # the driver was told to stop (SIGINT, SIGTERM)


FINAL_STATUSES = (Status.COMPLETE, Status.STOPPED, Status.DIVERGED, Status.FAILED,
                  Status.REJECTED)
NAN = math.nan
# why a `failed` trial failed (TrialSummary.failure); the error text says more
FAILURES = ("raised", "oom", "killed", "node_lost", "ray")


@dataclass
class MetricRow:
    """One evaluation of a running trial."""

    step: int = opt(0, "optimiser steps so far")
    tokens: int = opt(0, "training tokens so far")
    train_flops: float = opt(NAN, "training FLOPs so far")
    train_loss: float = opt(NAN, "mean training loss since the last evaluation (nats/token)")
    val_loss: float = opt(NAN, "validation loss (nats/token)")
    val_bpb: float = opt(NAN, "validation loss in bits per UTF-8 byte")
    lr: float = opt(NAN, "learning rate at this step")
    tokens_per_s: float = opt(NAN, "training throughput since the last evaluation")
    mfu: float = opt(NAN, "model FLOPs utilisation since the last evaluation: training "
                     "FLOP/s over the device's peak (NaN where no peak is known, e.g. CPU)")
    wall_seconds: float = opt(NAN, "seconds since the trial started (resumes included)")


@dataclass
class TrialSummary:
    """What a finished (or refused) trial reports: summary.json, the final Ray Tune report
    and a row of the store's `trials` table."""

    status: str = opt(Status.PENDING.value, "how the trial ended", choices=tuple(Status))
    error: str | None = opt(None, "why it failed, diverged, was refused or interrupted; for a "
                            "trial that was retried (search.max_failures), also why each "
                            "earlier attempt ended")
    failure: str | None = opt(None, "what ended a failed trial: raised (an exception in "
                              "training), oom (out of memory: MemoryError, torch's OOM or "
                              "Ray's memory monitor), killed (its worker process died, e.g. "
                              "SIGKILL), node_lost (its Ray node died), ray (another Ray "
                              "error); null unless failed", choices=FAILURES)
    attempts: int | None = opt(None, "times the trial's worker started in the sweep run that "
                               "last ran it: 1, plus one per retry (search.max_failures)")
    family: str | None = opt(None, "plain, looped or spiral (from the spec)")
    group_name: str | None = opt(None, "the comparison group the trial competes in")
    spec: str | None = opt(None, "canonical spec")
    size_index: int | None = opt(None, "0-based index on the study's size axis (sizes:), "
                                 "smallest first; null without one")
    size_target: float | None = opt(None, "the size axis's target for this trial's cell "
                                    "(params, by sizes.params); its width is solved within 1%")
    budget_kind: str | None = opt(None, "flops, tokens or params")
    budget_target: float | None = opt(None, "the budget asked for, in budget_kind units")
    budget_achieved: float | None = opt(None, "what whole steps achieve, same units")
    steps: int | None = opt(None, "optimiser steps run")
    tokens: int | None = opt(None, "training tokens seen")
    train_flops: float | None = opt(None, "training FLOPs spent")
    flops_per_token: float | None = opt(None, "training FLOPs per token (3 x forward)")
    params_total: int | None = opt(None, "stored parameters, embeddings included")
    params_non_embedding: int | None = opt(None, "stored parameters less embedding and head")
    params_unrolled: int | None = opt(None, "non-embedding, each use of the shared core counted")
    final_val_loss: float | None = opt(None, "validation loss at the end (nats/token)")
    best_val_loss: float | None = opt(None, "lowest validation loss of any evaluation")
    final_val_bpb: float | None = opt(None, "final validation loss in bits per byte")
    final_test_loss: float | None = opt(None, "test loss at the end (nats/token): what fits "
                                        "and reports use; selection never sees it")
    final_test_bpb: float | None = opt(None, "final test loss in bits per byte")
    wall_seconds: float | None = opt(None, "training seconds (resumes included)")
    unigram_entropy: float | None = opt(None, "entropy of the train split's unigrams (nats)")
    optimal_loss: float | None = opt(None, "Bayes-optimal loss where known (nats/token)")
    replicate: int | None = opt(None, "0: a search trial (the selected one included); r >= 1: "
                                "re-run r of its cell's selected point, train.seed + r")
    point_id: str | None = opt(None, "config_hash of the config without train.seed: the same "
                               "for the replicates (seeds) of one point")
    selected: bool | None = opt(None, "true for the search.replicates runs of each cell's "
                                "selected point (its best complete search trial by "
                                "search.metric); false for the other trials")
    imported: bool | None = opt(None, "true for rows imported from a CSV by `spiralsearch "
                                "import` (published or other-codebase runs); null for "
                                "trials trained here")


METRIC_KEYS = tuple(f.name for f in dataclasses.fields(MetricRow))
SUMMARY_KEYS = tuple(f.name for f in dataclasses.fields(TrialSummary))
# what the sweep driver, not the trial, says about a trial (a trial's report never sets them)
REPLICATE_KEYS = ("replicate", "point_id", "selected")
# the trial's cell, which the sweep knows and training does not (its summary leaves them null)
CELL_KEYS = ("group_name", "size_index", "size_target")


def sql_columns(cls) -> dict[str, str]:
    """DuckDB column types of a schema dataclass's fields."""
    types = {int: "BIGINT", float: "DOUBLE", str: "VARCHAR", bool: "BOOLEAN"}
    return {name: types[spec.type] for name, spec in field_specs(cls).items()}


def pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries of `d` that the schema names (a report carries other keys too)."""
    return {k: d[k] for k in keys if k in d}
