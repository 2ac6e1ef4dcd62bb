"""`spiralsearch fit`: compute-loss scaling laws per family."""

from __future__ import annotations

import argparse

from spiralsearch.cli import add_db, add_format, command, emit, print_table, resolve_db


def add_parser(subparsers) -> None:
    p = command(subparsers, "fit", run, "fit compute-loss scaling laws per group",
                "Fit L(C) = E + A*C^-alpha per comparison group (best trial per budget, on the "
                "test loss; the validation loss for results from before the test split), "
                "with bootstrap intervals, the compute multiplier against the plain group and "
                "a backtest on the largest budget.")
    add_db(p)
    p.add_argument("--by", help="trials column to group by (default: the sweep's comparison "
                   "groups, group_name; family for older results)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    add_format(p, "one row per group, intervals as JSON [lo, hi]")


def run(args: argparse.Namespace) -> int:
    """Fit every group of the results file and print the table."""
    from spiralsearch.analysis.fits import fit_rows_text, fit_table, group_column, load_results

    db = resolve_db(args)
    trials = load_results(db)["trials"]
    by = args.by or group_column(trials)
    if by not in trials:
        raise ValueError(f"--by {by!r}: no such trials column")
    rows = fit_table(trials, by=by, bootstrap=args.bootstrap)

    def table() -> None:
        if not rows:
            print(f"no complete trials in {db} yet")
            return
        cols, cells = fit_rows_text(rows)
        split = rows[0].get("loss", "val")
        print_table(f"L(C) = E + A·C^-alpha by {by}, on {split} loss ({db})", cols, cells)
        for r in rows:
            if r.get("note"):
                print(f"{r['group']}: {r['note']}")

    emit(args, rows, table)
    return 0
