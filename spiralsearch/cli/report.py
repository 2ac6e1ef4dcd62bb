"""`spiralsearch report`: the offline HTML report of a sweep."""

from __future__ import annotations

import argparse
import sys

from spiralsearch.cli import add_db, add_format, command, emit, resolve_db
from spiralsearch.cli.fit import add_study_args, study_kwargs


def add_parser(subparsers) -> None:
    p = command(subparsers, "report", run, "write the offline HTML report of a sweep",
                "One self-contained HTML page (plotly embedded), drawn from the same analysis "
                "as `spiralsearch fit`: the conclusion, what the intervals resample and the fit "
                "table at the top; the compute-optimal frontier per group (cell means with "
                "replicate spread, the fitted L*(C) and its band, a log-log toggle), IsoFLOP "
                "curves with their parabolas and optima, N*(C) and L*(C), the multiplier curve "
                "with its band; plots whose x never varies are left out, saying so; and the "
                "attention probes of each group's selected trial with a kept checkpoint. "
                "Prints the path written (json: {\"report\": PATH, \"static\": [...]}).")
    add_db(p)
    p.add_argument("--out", help="HTML path (default reports/NAME.html)")
    add_study_args(p)
    p.add_argument("--no-probes", action="store_true",
                   help="leave out the attention probes (they load and run each group's model)")
    p.add_argument("--static", choices=("png", "svg"),
                   help="also write each figure beside the page (needs kaleido and Chrome or "
                   "Chromium; says so when they are not there)")
    add_format(p)


def run(args: argparse.Namespace) -> int:
    """Write the report; print where (and the static files, or why there are none)."""
    from spiralsearch.analysis.report import make_report

    r = make_report(resolve_db(args), args.out, by=args.by, probes=not args.no_probes,
                    static=args.static, **study_kwargs(args))
    if r.static_note:
        print(f"spiralsearch report: {r.static_note}", file=sys.stderr)
    out = r.path.resolve()
    emit(args, dict(report=str(out), static=[str(p.resolve()) for p in r.static]),
         lambda: print(f"report: {out}" + "".join(f"\nfigure: {p}" for p in r.static)))
    return 0
