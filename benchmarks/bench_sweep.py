"""Overhead of the sweep harness on the quickstart space: the share of wall time spent
inside training (train() of each trial, evaluations included), Ray start-up time, and
per-trial start-up (trial launched by the driver -> its train loop running).

    .venv/bin/python benchmarks/bench_sweep.py     # writes benchmarks/results/sweep.json
Target: at least 75% of the trial slots' wall time inside training.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from spiralsearch.search.cluster import start_ray
from spiralsearch.search.driver import run_sweep
from spiralsearch.search.space import load_space
from spiralsearch.store import query

OUT = Path(__file__).parent / "results" / "sweep.json"
SPACE = Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml"


class TrialClock(Callback):
    """Driver-side launch and end times of every trial (seconds, monotonic)."""

    def __init__(self):
        self.start, self.end = {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end[trial.trial_id] = (time.monotonic(), trial.last_result or {})


def main() -> None:
    space = load_space(SPACE)
    slots = os.cpu_count() // max(1, int(space.resources.cpu))
    t0 = time.monotonic()
    start_ray()  # the sweep below reuses it, so its start-up is measured alone
    ray_start = time.monotonic() - t0
    clock = TrialClock()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t1 = time.monotonic()
        run_sweep(space, results=db, progress=False, callbacks=(clock,))
        sweep_wall = time.monotonic() - t1
        trials = query(db, "SELECT trial_id, status, wall_seconds FROM trials")
    inside = float(trials["wall_seconds"].fillna(0).sum())
    per_trial = []
    for rid, (end, result) in clock.end.items():
        span = end - clock.start[rid]
        per_trial.append(span - float(result.get("wall_seconds") or 0.0))
    per_trial.sort()
    total_wall = ray_start + sweep_wall
    result = dict(
        machine=platform.platform(), cpus=os.cpu_count(), trial_slots=slots,
        trials=len(trials), statuses=trials["status"].value_counts().to_dict(),
        ray_start_seconds=ray_start, sweep_wall_seconds=sweep_wall,
        total_wall_seconds=total_wall, seconds_inside_training=inside,
        share_inside_training=inside / (slots * total_wall),
        share_inside_training_after_ray_start=inside / (slots * sweep_wall),
        per_trial_overhead_seconds=dict(median=per_trial[len(per_trial) // 2],
                                        max=per_trial[-1], min=per_trial[0]),
        target_75pct_met=inside / (slots * total_wall) >= 0.75)
    print(json.dumps(result, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
