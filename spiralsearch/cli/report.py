"""`spiralsearch report`: the offline HTML report of a sweep."""

from __future__ import annotations

import argparse

from spiralsearch.cli import add_db, add_format, check_bootstrap, command, emit, resolve_db


def add_parser(subparsers) -> None:
    p = command(subparsers, "report", run, "write the offline HTML report of a sweep",
                "One self-contained HTML page (plotly embedded): loss vs FLOPs with frontiers "
                "and fits, loss vs parameters, the multiplier table, loss vs recurrence ratio, "
                "frontier training curves. Prints the path written (json: {\"report\": PATH}).")
    add_db(p)
    p.add_argument("--out", help="HTML path (default reports/NAME.html)")
    p.add_argument("--bootstrap", type=int, default=100, help="resamples for the fit bands")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    """Write the report; print where."""
    from spiralsearch.analysis.report import build_report

    check_bootstrap(args.bootstrap)
    out = build_report(resolve_db(args), args.out, bootstrap=args.bootstrap).resolve()
    emit(args, dict(report=str(out)), lambda: print(f"report: {out}"))
    return 0
