"""`spiralsearch query SQL` and `spiralsearch trials`: read a results file (read-only, so
they work while a sweep is writing). The connection is sandboxed (store.READER_CONFIG): SQL
that would write the file, write or read any other file, attach a database, install or load
an extension, or change a setting is refused by DuckDB, as bad input (exit 2)."""

from __future__ import annotations

import argparse

from spiralsearch.cli import add_db, add_format, command, print_frame, resolve_db

TRIALS_SQL = ("SELECT trial_id, family, spec, status, budget_kind, budget_target, "
              "params_non_embedding, flops_per_token, final_val_loss, best_val_loss, "
              "final_val_bpb, wall_seconds, error FROM trials "
              "ORDER BY budget_target, family, final_val_loss")


def add_parser(subparsers) -> None:
    for name, func, help in (("query", run_query, "run SQL on a results file"),
                             ("trials", run_trials, "the trials table at a glance")):
        p = command(subparsers, name, func, help, help + " (read-only; works while a sweep "
                    "is writing). Tables: sweeps, trials, metrics, meta.")
        if name == "query":
            p.add_argument("sql", help="e.g. 'SELECT family, min(final_val_loss) FROM trials "
                           "GROUP BY family'")
        add_db(p, timeout=True)
        add_format(p)


def _query(args: argparse.Namespace, sql: str):
    """(db, DataFrame); SQL the database refuses is bad input (exit 2), not a crash."""
    import duckdb

    from spiralsearch.store import query

    db = resolve_db(args)
    try:
        return db, query(db, sql, timeout_s=args.timeout)
    except duckdb.Error as e:  # any SQL the database refuses, writes and file access too
        # duckdb appends the query text and a caret: the first line names the problem
        raise ValueError(f"{db}: {str(e).splitlines()[0]}") from e


def run_query(args: argparse.Namespace) -> int:
    """Run one read-only SQL statement and print its rows."""
    db, df = _query(args, args.sql)
    print_frame(args, df, str(db))
    return 0


def run_trials(args: argparse.Namespace) -> int:
    """Every trial: status, budget, size, losses, error."""
    db, df = _query(args, TRIALS_SQL)
    print_frame(args, df, f"trials in {db}")
    return 0
