"""What a sweep checks before its first trial, shared by the run and `--dry-run`
(docs/design.md §4), and what only the dry run adds.

Checks (each refusal is one line, exit 2): every candidate under every budget
(candidates.py), every data source loaded (missing files, unreadable text, a corpus not
fetched yet; tokenized and cached once, so trials never race to build it), and one trial's
resources against what will run it: the Ray cluster at `--address`, else this machine.

The dry run adds the size of the grid (trials), an estimate of the run time from training
steps timed on this machine, and warnings: a search with too few samples to search, and
data that repeats (more than one epoch over the training split).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from spiralsearch.search.candidates import Cost
from spiralsearch.search.cluster import check_resources, machine_resources, ray_nodes, totals
from spiralsearch.search.space import SearchSpace

MEASURE_S = 5.0  # seconds to spend timing one candidate's training steps, at most
STEP_FLOPS = 2e11  # a timed step at most this many FLOPs (a smaller batch if need be)


def check_data(space: SearchSpace) -> dict[tuple[str, str], object]:
    """Load (and on first use tokenize and cache) every data source of the space once:
    a missing file or an unfetched corpus stops the sweep before any trial. Returns the
    Dataset of each (source, tokenizer), at the space's first split settings."""
    from spiralsearch.config import DataConfig
    from spiralsearch.search.validate import values_of
    from spiralsearch.training.loop import load_split

    keys = ("source", "tokenizer", "val_fraction", "test_fraction", "split_seed")
    options = [values_of(space.data.get(k, getattr(DataConfig(), k))) for k in keys]
    out: dict[tuple[str, str], object] = {}
    for combo in itertools.product(*options):
        ds = load_split(DataConfig(**dict(zip(keys, combo, strict=True))))
        out.setdefault((combo[0], combo[1]), ds)
    return out


def check_machine(space: SearchSpace,
                  address: str | None = None) -> tuple[str, list[dict[str, float]]]:
    """Refuse (ClusterError) a trial that what runs the sweep can never hold, node by node
    (a data-parallel trial's workers over all of them): the cluster at `address` (joined,
    then left), else this machine as a local Ray would see it. Returns what it checked
    against, in words, and its nodes' resources."""
    from spiralsearch.search.parallel import check_workers

    if not address:
        nodes = [machine_resources()]
        check_resources(space, nodes, "this machine")
        check_workers(space.resources, totals(nodes), "this machine")
        return "this machine", nodes
    import ray

    from spiralsearch.search.cluster import start_ray

    owns = start_ray(address)
    try:
        nodes = ray_nodes()
        check_resources(space, nodes, f"the Ray cluster at {address}")
        check_workers(space.resources, totals(nodes), f"the Ray cluster at {address}")
    finally:
        if owns:
            ray.shutdown()
    return f"the Ray cluster at {address}", nodes


def cell_flops(costs: dict[int, list[Cost]]) -> dict[int, float]:
    """Group index -> mean training FLOPs of one of its trials."""
    return {g: sum(c.train_flops for c in cs) / len(cs) for g, cs in costs.items() if cs}


def trials_per_cell(space: SearchSpace) -> list[int]:
    """Trials each group (cell) runs: its samples (1 when nothing is searched), plus R - 1
    replicates of its selected point."""
    return [(g.n_samples(space) if g.optuna_space(space) else 1) + space.search.replicates - 1
            for g in space.groups()]


# --- the run-time estimate --------------------------------------------------------------

@dataclass
class Rate:
    """A measured training speed: the model, the batch it was timed at, tokens/s, FLOP/s."""

    what: str
    flops_per_token: float
    batch_size: int
    tokens_per_s: float

    @property
    def flops_per_s(self) -> float:
        return self.tokens_per_s * self.flops_per_token


@dataclass
class Estimate:
    """Run time of a sweep from measured speeds: `serial_s` with one trial at a time,
    `wall_s` with `slots` at once; `rates` as measured, `device` where; `workers` > 1 when
    one process's timed speed was multiplied by a data-parallel trial's workers (ideal
    scaling: the gradient all-reduce is not timed, so the estimate errs short)."""

    trials: int
    serial_s: float
    wall_s: float
    slots: int
    device: str
    rates: list[Rate] = field(default_factory=list)
    workers: int = 1


def measure(cost: Cost, threads: int, device: str, budget_s: float = MEASURE_S) -> Rate:
    """Time training steps (forward, backward, AdamW) of one candidate on random tokens for
    about a fifth of `budget_s` seconds; the first step warms up and is not counted unless
    it is all there is time for.
    A step past STEP_FLOPS is timed at a smaller batch (usually slower per token, so the
    estimate errs long)."""
    import torch

    from spiralsearch.model.transformer import build_model
    from spiralsearch.training.budget import train_flops_per_token

    fpt = train_flops_per_token(cost.model, cost.seq_len)
    batch = max(1, min(cost.batch_size, int(STEP_FLOPS // (fpt * cost.seq_len))))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        model = build_model(cost.model).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, cost.model.vocab_size, (batch, cost.seq_len + 1), device=device)

        def step() -> None:
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                     x[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        t = time.perf_counter()
        step()
        took, n = time.perf_counter() - t, 1
        if took < budget_s / 4:  # room for timed steps after the warm-up: ~1/5 of the budget
            t, n = time.perf_counter(), 0
            while n < 50 and (n < 2 or time.perf_counter() - t < budget_s / 5):
                step()
                n += 1
            took = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    return Rate(f"{cost.model.spec} d={cost.model.d_model}", fpt, batch,
                n * batch * cost.seq_len / max(took, 1e-9))


def _rate_at(rates: list[Rate], flops_per_token: float) -> float:
    """FLOP/s at a model size, log-linear in FLOPs/token between the measured ones."""
    rates = sorted(rates, key=lambda r: r.flops_per_token)
    lo, hi = rates[0], rates[-1]
    if hi.flops_per_token <= lo.flops_per_token:
        return lo.flops_per_s
    w = (math.log(flops_per_token) - math.log(lo.flops_per_token)) / (
        math.log(hi.flops_per_token) - math.log(lo.flops_per_token))
    w = min(1.0, max(0.0, w))
    return math.exp((1 - w) * math.log(lo.flops_per_s) + w * math.log(hi.flops_per_s))


def stored_rates(results: Path, sweep: str) -> list[Rate]:
    """The training speeds this sweep's trials measured in an earlier run (the median
    tokens/s of each stored trial's evaluations), of its smallest and its largest model by
    FLOPs per token; [] when there are none."""
    from spiralsearch.store import StoreError, query

    if not results.is_file():
        return []
    try:
        df = query(results, "SELECT t.spec, t.flops_per_token AS fpt, "
                   "median(m.tokens_per_s) AS tps FROM trials t JOIN metrics m USING "
                   "(trial_id) WHERE t.sweep = $$" + sweep.replace("$", "") + "$$ AND "
                   "m.tokens_per_s > 0 AND t.flops_per_token > 0 GROUP BY ALL ORDER BY fpt")
    except StoreError:
        return []
    if not len(df):
        return []
    ends = [df.iloc[0]] if len(df) == 1 else [df.iloc[0], df.iloc[-1]]
    return [Rate(f"{r['spec']} (stored)", float(r["fpt"]), 0, float(r["tps"])) for r in ends]


def estimate(space: SearchSpace, costs: dict[int, list[Cost]], slots: int,
             rates: list[Rate] | None = None) -> Estimate | None:
    """The run time of the whole sweep: each cell's trials times its candidates' mean
    training time, at speeds interpolated between `rates` (by default the smallest and the
    largest model the space trains, by FLOPs per token, timed on this machine in one
    process, and for resources.workers: K taken K times as fast; stored `rates` are whole
    trials' already). Training steps only: evaluations and start-up come on top, early
    stopping takes some off. None when no candidate can train."""
    import torch

    every = [c for cs in costs.values() for c in cs]
    if not every:
        return None
    device = "cuda" if space.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    workers = 1
    if not rates:
        workers = space.resources.workers
        threads = max(1, int(space.resources.cpu))
        by_fpt = sorted(every, key=lambda c: c.train_flops / max(c.tokens, 1))
        picks = [by_fpt[0]] if by_fpt[0] == by_fpt[-1] else [by_fpt[0], by_fpt[-1]]
        rates = [measure(c, threads, device) for c in picks]
    serial, n = 0.0, 0
    for (_, cs), k in zip(sorted(costs.items()), trials_per_cell(space), strict=True):
        if not cs:
            continue
        mean_s = sum(c.train_flops / _rate_at(rates, c.train_flops / max(c.tokens, 1))
                     for c in cs) / len(cs) / workers
        serial += k * mean_s
        n += k
    return Estimate(n, serial, serial / max(1, slots), slots, device, rates, workers)


# --- warnings ---------------------------------------------------------------------------

def warnings(space: SearchSpace, costs: dict[int, list[Cost]],
             datasets: dict[tuple[str, str], object]) -> list[str]:
    """Things that are allowed but likely not meant: a search whose samples are too few
    to search, and training data that repeats."""
    out = []
    s = space.search
    searching = [g for g in space.groups() if g.optuna_space(space)]
    if searching and s.sampler in ("tpe", "cmaes"):
        from spiralsearch.search.samplers import startup_trials

        n = s.samples_per_budget
        k = startup_trials(s) if s.sampler == "tpe" else 1  # CMA-ES: one random start
        if n - k < 2:
            guided = f"only {n - k} of {n} is" if n - k == 1 else f"none of the {n} are"
            out.append(f"search.samples_per_budget: {n} is too few to search with "
                       f"{s.sampler}: its first {k} trials in each cell are random start-up "
                       f"trials, so {guided} guided by what the earlier ones found; use at "
                       f"least {k + 4}, or sampler: random to say what it is")
    if searching and s.sampler == "grid":
        short = [g for g in searching if g.n_samples(space) < math.prod(
            len(d.choices) for d in g.optuna_space(space).values())]
        if short:
            g = short[0]
            full = math.prod(len(d.choices) for d in g.optuna_space(space).values())
            out.append(f"search.samples_per_budget: {s.samples_per_budget} covers "
                       f"{g.n_samples(space)} of the grid's {full} points per cell")
    worst = None
    for cs in costs.values():
        for c in cs:
            ds = datasets.get((c.source, c.tokenizer))
            if ds is None or not len(ds.train):
                continue
            epochs = c.tokens / len(ds.train)
            if worst is None or epochs > worst[0]:
                worst = (epochs, c, len(ds.train))
    if worst and worst[0] > 1:
        epochs, c, n = worst
        out.append(f"data repeats: a trial of {c.model.spec} sees {c.tokens:,} training tokens, "
                   f"{epochs:.3g} epochs of {c.source}'s {n:,}-token training split; a larger "
                   f"corpus (e.g. corpus:prose) or smaller budgets keep every token new")
    return out
