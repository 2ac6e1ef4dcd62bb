"""`spiralsearch sweep SPACE.yaml`: run a YAML search space with Ray Tune + Optuna."""

from __future__ import annotations

import argparse

from spiralsearch.cli import RunFailed, add_db, add_format, command, emit, print_table, si


def add_parser(subparsers) -> None:
    p = command(subparsers, "sweep", run, "run a YAML search space with Ray Tune + Optuna",
                "Run every (budget, family) group of a search space; results land in DuckDB. "
                "Re-running the same YAML resumes: trials already complete are skipped, "
                "trials cut off mid-run continue from their checkpoints. Exit 1 when a trial "
                "failed or no trial is complete at the end.")
    p.add_argument("space", help="search space YAML, e.g. search_spaces/quickstart.yaml")
    add_db(p, default="results/NAME.duckdb")
    p.add_argument("--address", help="join a running Ray cluster (ray start --head ...)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: by resources)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the candidate table (params, FLOPs/token, tokens per budget) "
                   "and train nothing")
    p.add_argument("--no-progress", action="store_true",
                   help="no live table (json and csv never show it: stdout stays parseable)")
    add_format(p, "--dry-run: one row per candidate, budgets as JSON text")


def run(args: argparse.Namespace) -> int:
    """Check the space, then dry-run it or run it; the exit code says whether it worked."""
    from spiralsearch.search.space import load_space

    space = load_space(args.space)
    if args.dry_run:
        return _dry_run(args, space)
    from spiralsearch.search.driver import run_sweep

    report = run_sweep(space, results=args.db, address=args.address,
                       max_concurrent=args.max_concurrent,
                       progress=not args.no_progress and args.format == "table")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts.items()))
    summary = dict(name=report.name, results=str(report.results), counts=report.counts,
                   skipped=report.skipped, seconds=report.seconds)
    emit(args, summary, lambda: print(
        f"sweep {report.name}: {counts} ({report.skipped} complete before this run) in "
        f"{report.seconds:.0f} s; results in {report.results}"))
    failed, complete = report.counts.get("failed", 0), report.counts.get("complete", 0)
    if failed or not complete:
        why = f"{failed} trial(s) failed" if failed else "no trial is complete"
        raise RunFailed(f"{why}; see `spiralsearch trials --db {report.results}`")
    return 0


def _dry_run(args: argparse.Namespace, space) -> int:
    """The candidate table: what every candidate costs under every budget value."""
    from spiralsearch.search.candidates import check_candidates

    rows = check_candidates(space)
    emit(args, rows, lambda: _candidate_table(space, rows))
    return 0


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
