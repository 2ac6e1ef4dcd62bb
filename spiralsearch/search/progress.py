"""What a running sweep shows (docs/design.md §4): per (budget, group) cell the trials done,
running and failed and the best loss so far; over the sweep the elapsed time, FLOPs done out
of the plan, an ETA from the FLOP rate so far, and each running trial's step.

On a terminal it is a live table (rich). Without one (`make quickstart | tee log`, CI) it
prints a plain line per finished trial and a heartbeat line every `heartbeat_s` seconds, so
a log shows that the sweep is alive. The driver's StoreCallback feeds it (recorder.py).
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from spiralsearch.search.space import Group, SearchSpace

DONE = ("complete", "stopped", "diverged")
BAD = ("failed", "rejected")


@dataclass
class Plan:
    """What the sweep expects to run: trials and training FLOPs over all cells (an
    estimate: early stopping ends some trials sooner, a small discrete space may hold
    fewer points than samples)."""

    trials: int = 0
    flops: float = 0.0


def plan_of(space: SearchSpace, cell_flops: dict[int, float] | None = None) -> Plan:
    """Trials per cell (its samples, 1 when it searches nothing, plus R - 1 replicates)
    times each cell's mean training FLOPs per trial (`cell_flops`, by group index)."""
    out = Plan()
    for g, group in enumerate(space.groups()):
        n = group.n_samples(space) if group.optuna_space(space) else 1
        n += space.search.replicates - 1
        out.trials += n
        out.flops += n * (cell_flops or {}).get(g, 0.0)
    return out


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _si(x: float) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                          (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}"
    return f"{x:.3g}"


class LiveView:
    """The sweep's progress. mode: 'live' (a rich table), 'plain' (lines), or None (state
    only). `enabled` (older callers): True picks live on a terminal, else plain."""

    def __init__(self, space: SearchSpace, enabled: bool = True, *, mode: str | None = "auto",
                 plan: Plan | None = None, heartbeat_s: float = 30.0, out=None):
        if mode == "auto":
            mode = None if not enabled else ("live" if sys.stdout.isatty() else "plain")
        self.space, self.mode, self.heartbeat_s = space, mode, heartbeat_s
        self.plan = plan or plan_of(space)
        self.out = out
        self.status: dict[tuple, dict[str, str]] = defaultdict(dict)
        self.replicas: dict[tuple, dict[str, str]] = defaultdict(dict)
        self.best: dict[tuple, float] = {}
        self.flops_before = 0.0  # FLOPs of trials finished before this run
        self.flops_done = 0.0  # finished in this run
        self.running: dict[str, dict] = {}  # tid -> {label, step, steps, flops}
        self.t0 = time.monotonic()
        self._beat = self.t0
        self._drawn = 0.0
        self.live = None

    def __getstate__(self) -> dict:  # Ray pickles callbacks; the live display stays here
        return self.__dict__ | {"live": None, "out": None}

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def __enter__(self) -> LiveView:
        self.t0 = self._beat = time.monotonic()
        if self.mode == "live":
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            print()

    # --- what the recorder tells it --------------------------------------------------

    def update(self, group: Group, tid: str | None, status: str, loss: float | None = None,
               replicate: int = 0, *, seconds: float | None = None,
               flops: float | None = None, before: bool = False,
               failure: str | None = None) -> None:
        """A trial started (status 'running') or ended. `flops`: training FLOPs it ran;
        `before`: it finished in an earlier run of the sweep; `failure`: what ended a
        failed one."""
        key = (group.budget.value, group.label)
        tid_key = tid or f"?{len(self.status[key]) + len(self.replicas[key])}"
        (self.replicas if replicate else self.status)[key][tid_key] = status
        if not replicate and loss is not None and math.isfinite(loss):
            self.best[key] = min(loss, self.best.get(key, math.inf))
        if status == "running":
            self.running.setdefault(tid_key, dict(label=group.label, step=0, steps=None,
                                                  flops=0.0))
        else:
            self.running.pop(tid_key, None)
            if flops is not None and math.isfinite(flops):
                if before:
                    self.flops_before += flops
                else:
                    self.flops_done += flops
            if self.mode == "plain" and not before and status != "interrupted":
                shown = f"{status} ({failure})" if failure else status
                self._line(group, tid_key, shown, loss, seconds, replicate)
        self._draw(force=True)

    def step(self, tid: str, step: int, steps: int | None, flops: float | None) -> None:
        """A running trial reported an evaluation at `step` of `steps`, `flops` FLOPs in."""
        r = self.running.get(tid)
        if r is not None:
            r.update(step=step, steps=steps or r["steps"], flops=flops or r["flops"])
        self._draw()

    def tick(self) -> None:
        """Called often (every Ray Tune step): the heartbeat, or a redraw of the table."""
        now = time.monotonic()
        if self.mode == "plain" and now - self._beat >= self.heartbeat_s:
            self._beat = now
            self._print(self.summary())
        self._draw()

    # --- the numbers -----------------------------------------------------------------

    def done_trials(self) -> int:
        cells = list(self.status.values()) + list(self.replicas.values())
        return sum(s not in ("running", "pending", "interrupted") for c in cells
                   for s in c.values())

    def flops(self) -> float:
        """Training FLOPs done: trials finished before, finished now, and running."""
        return self.flops_before + self.flops_done + sum(r["flops"] for r in
                                                         self.running.values())

    def eta(self) -> float | None:
        """Seconds left at the FLOP rate of this run so far; None before any progress, 0
        once every planned trial is done (early stopping leaves FLOPs of the plan unspent)."""
        if not self.running and self.done_trials() >= self.plan.trials:
            return 0.0
        elapsed = time.monotonic() - self.t0
        now = self.flops() - self.flops_before
        left = self.plan.flops - self.flops()
        if now <= 0 or elapsed < 1 or self.plan.flops <= 0:
            return None
        return max(0.0, left) * elapsed / now

    def summary(self) -> str:
        """One line: trials, FLOPs, elapsed, ETA."""
        eta = self.eta()
        flops = (f"{_si(self.flops())}/{_si(self.plan.flops)} FLOPs" if self.plan.flops
                 else f"{_si(self.flops())} FLOPs")
        return (f"sweep {self.space.name}: {self.done_trials()}/{self.plan.trials} trials "
                f"done, {len(self.running)} running; {flops}; elapsed "
                f"{duration(time.monotonic() - self.t0)}; ETA "
                + ("-" if eta is None else f"~{duration(eta)}"))

    # --- output ----------------------------------------------------------------------

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def _line(self, group: Group, tid: str, status: str, loss: float | None,
              seconds: float | None, replicate: int) -> None:
        size = "-" if group.size is None else f"{group.size + 1}/{self.space.sizes.count}"
        loss_s = "-" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"
        secs = ("-" if seconds is None or not math.isfinite(seconds)
                else f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s")
        rep = f" replicate {replicate}" if replicate else ""
        self._print(f"trial {tid[:12]} group {group.name} budget {group.budget.value:.3g} "
                    f"size {size}{rep}: {status}, val loss {loss_s}, {secs}")

    def _draw(self, force: bool = False) -> None:
        if self.live is None:
            return
        now = time.monotonic()
        if force or now - self._drawn >= 1.0:
            self._drawn = now
            self.live.update(self._table())

    def _table(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.space.name}", caption=self._caption())
        reps = self.space.search.replicates - 1
        for c in ("budget", "group", "done", "running", "failed/rejected", "best val loss",
                  *(("replicates",) if reps else ())):
            t.add_column(c, justify="right")
        for g in self.space.groups():
            key = (g.budget.value, g.label)
            st = list(self.status[key].values())
            done = sum(s in DONE for s in st)
            bad = sum(s in BAD for s in st)
            best = self.best.get(key)
            extra = ()
            if reps:
                rs = list(self.replicas[key].values())
                extra = (f"{sum(s not in ('running', 'pending') for s in rs)}/{reps}",)
            t.add_row(f"{g.budget.value:.3g}", g.label, f"{done}/{g.n_samples(self.space)}",
                      str(st.count("running")), str(bad), "-" if best is None else f"{best:.4f}",
                      *extra)
        return t

    def _caption(self) -> str:
        steps = [f"{tid[:8]} {r['label']} step {r['step']}"
                 + (f"/{r['steps']}" if r["steps"] else "")
                 for tid, r in sorted(self.running.items())]
        return self.summary() + ("\n" + "; ".join(steps) if steps else "")
