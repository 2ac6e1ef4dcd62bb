"""`spiralsearch sweep SPACE.yaml`: run a YAML search space with Ray Tune + Optuna."""

from __future__ import annotations

import argparse
import sys

from spiralsearch.cli import (
    EXIT_USAGE,
    RunFailed,
    add_db,
    add_format,
    command,
    emit,
    print_table,
    si,
)


def add_parser(subparsers) -> None:
    p = command(subparsers, "sweep", run, "run a YAML search space with Ray Tune + Optuna",
                "Run every (budget, group) cell of a search space; results land in DuckDB. "
                "Re-running the same YAML resumes: trials already complete are skipped, "
                "trials cut off mid-run (driver killed, Ctrl-C) continue from their "
                "checkpoints. A YAML edited since its sweep ran into this results file is "
                "refused (exit 2) with the difference. Exit 1 when a trial failed or no trial "
                "is complete at the end; 130 on Ctrl-C, 143 on SIGTERM.")
    p.add_argument("space", help="search space YAML, e.g. search_spaces/quickstart.yaml")
    add_db(p, default="results/NAME.duckdb")
    p.add_argument("--address", help="join a running Ray cluster (ray start --head ...)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: by resources)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check the sweep runs before its first trial (candidates, "
                   "data, resources), print the candidate table, the grid size, a run-time "
                   "estimate and warnings, and train nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed trials again (interrupted ones always resume)")
    p.add_argument("--force-new", action="store_true",
                   help="start a new sweep name (NAME-2, ...) in the results file instead of "
                   "continuing the one this YAML's name ran")
    p.add_argument("--no-progress", action="store_true",
                   help="no live table, or without a terminal no progress lines (json and "
                   "csv never show them: stdout stays parseable)")
    add_format(p, "--dry-run: one row per candidate, budgets as JSON text")


def run(args: argparse.Namespace) -> int:
    """Check the space, then dry-run it or run it; the exit code says whether it worked."""
    from spiralsearch.search.space import load_space

    space = load_space(args.space)
    if args.dry_run:
        return _dry_run(args, space)
    from spiralsearch.search.driver import run_sweep
    from spiralsearch.search.history import SweepChanged
    from spiralsearch.search.interrupts import SweepInterrupted

    try:
        report = run_sweep(space, results=args.db, address=args.address,
                           max_concurrent=args.max_concurrent,
                           progress=not args.no_progress and args.format == "table",
                           retry_failed=args.retry_failed, force_new=args.force_new)
    except SweepChanged as e:  # the error line, then the short diff under it
        first, _, diff = str(e).partition("\n")
        print(f"{args.prog}: error: {first}", file=sys.stderr)
        print(diff, file=sys.stderr)
        return EXIT_USAGE
    except SweepInterrupted as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return e.exit_code
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts.items()))
    summary = dict(name=report.name, results=str(report.results), counts=report.counts,
                   skipped=report.skipped, seconds=report.seconds, note=report.note)
    emit(args, summary, lambda: print(
        (f"{report.note}\n" if report.note else "")
        + f"sweep {report.name}: {counts} ({report.skipped} complete before this run) in "
        f"{report.seconds:.0f} s; results in {report.results}"))
    failed, complete = report.counts.get("failed", 0), report.counts.get("complete", 0)
    if failed or not complete:
        why = f"{failed} trial(s) failed" if failed else "no trial is complete"
        raise RunFailed(f"{why}; see `spiralsearch trials --db {report.results}`")
    return 0


def _dry_run(args: argparse.Namespace, space) -> int:
    """Every check the run makes before its first trial (exit 2 where it would refuse),
    then the candidate table, the grid size, a run-time estimate and warnings."""
    from spiralsearch.search.candidates import cell_costs, check_candidates
    from spiralsearch.search.checkpoints import check_storage
    from spiralsearch.search.cluster import slots
    from spiralsearch.search.preflight import check_data, check_machine, warnings
    from spiralsearch.store import store_path

    rows = check_candidates(space)
    datasets = check_data(space)
    where, nodes = check_machine(space, args.address)
    runs = check_storage(args.db or store_path(space.name), space.storage)  # creates nothing
    costs = cell_costs(space)
    notes = warnings(space, costs, datasets)
    emit(args, rows, lambda: (_candidate_table(space, rows),
                              _plan(args, space, costs, where,
                                    slots(space, nodes, args.max_concurrent), runs)))
    for n in notes:
        print(f"{args.prog}: warning: {n}", file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace, space, costs, where: str, n_slots: int, runs) -> None:
    """The grid size, where its files go (`runs`: checkpoints and Ray's, a folder or a
    URI) and the run-time estimate, from the speeds an earlier run of the sweep stored,
    else from training steps timed here."""
    from pathlib import Path

    from spiralsearch.search.preflight import estimate, stored_rates, trials_per_cell
    from spiralsearch.search.progress import duration
    from spiralsearch.store import store_path

    per = trials_per_cell(space)
    cells = len(per)
    reps = space.search.replicates - 1
    print(f"grid: {sum(per)} trials in {cells} cells ((budget, group"
          f"{', size' if space.sizes else ''}) cells x samples"
          f"{f' + {reps} replicates each' if reps else ''}); one trial fits {where}")
    db = Path(args.db) if args.db else store_path(space.name)
    print(f"files: results in {db}; checkpoints and Ray's files in {runs}")
    stored = stored_rates(db, space.name)
    est = estimate(space, costs, n_slots, stored)
    if est is None:
        return
    speeds = ", ".join(f"{r.what}: {si(r.tokens_per_s)} tokens/s ({si(r.flops_per_s)}FLOP/s"
                       f"{f', batch {r.batch_size}' if r.batch_size else ''})"
                       for r in est.rates)
    source = (f"the speeds its trials measured in {db}" if stored else
              f"training steps timed on this machine's {est.device}")
    if est.workers > 1:
        source += (f" in one process, taken {est.workers}x for {est.workers} data-parallel "
                   f"workers (ideal: the all-reduce is not timed)")
    print(f"estimate: ~{duration(est.wall_s)} with {est.slots} trial(s) at once "
          f"(~{duration(est.serial_s)} of training in all), from {source} ({speeds}); an "
          f"estimate only: evaluations and start-up add to it, early stopping takes from it")


def _candidate_table(space, rows: list[dict]) -> None:
    """One row per candidate (its cost under each budget); with a size axis the candidates'
    shapes, then the size grid."""
    unit = {"flops": "FLOPs", "tokens": "tokens", "params": "params"}[space.budget_kind]
    varying = sorted({k for r in rows for k, v in r["model"].items()
                      if k != "spec" and any(o["model"].get(k) != v for o in rows)})
    table = []
    for r in rows:
        per = [] if space.sizes else [
            (si(b["tokens"]) + " tok" if b.get("tokens") else "refused: "
             + str(b.get("reason", ""))[:40]) for b in r["budgets"]]
        options = " ".join(f"{k}={r['model'].get(k)}" for k in varying)
        table.append([r["spec"], r["family"], options, si(r["params_non_embedding"]),
                      si(r["flops_per_token"], "FLOP"), *per])
    per_budget = [] if space.sizes else [f"{si(b.value)} {unit}" for b in space.budgets]
    print_table(f"{space.name}: {len(rows)} candidates (dry run)",
                ["spec", "family", "options",
                 "params (preset width)" if space.sizes else "params (non-emb)",
                 "train FLOPs/token", *per_budget], table)
    if space.sizes:
        _size_grid(space, rows)


def _size_grid(space, rows: list[dict]) -> None:
    """The IsoFLOP grid: every candidate at every (budget, size), its solved width and what
    the budget gives it (tokens, tokens per parameter, steps)."""
    measure = space.sizes.params.replace("_", "-")
    table = [[si(e["budget"]), r["spec"], f"{e['size'] + 1}/{space.sizes.count}",
              si(e["size_target"]), si(e["params_sized"]), str(e["d_model"]), str(e["d_mlp"]),
              *((si(e["tokens"]), f"{e['tokens'] / e['params_sized']:.3g}", str(e["steps"]))
                if e["status"] == "ok" else ("refused", "-", str(e["reason"])[:40]))]
             for b in space.budgets for r in rows for e in r["budgets"]
             if e["budget"] == b.value]
    print_table(f"size grid: {space.sizes.count} sizes x {len(space.budgets)} budgets "
                f"({measure} params)",
                ["budget", "spec", "size", "target", "params", "d_model", "d_mlp", "tokens",
                 "tokens/param", "steps"], table)
