"""`spiralsearch import FILE.csv --group NAME`: published or other-codebase training runs (one
CSV row per run) into a results file, as imported trials that `fit` and `report` treat like
a sweep's. (The module is `imports` because `import` is a keyword.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from spiralsearch.cli import add_db, add_format, command, emit, print_table

DESCRIPTION = """\
Import external training runs, one CSV row per run, into a results file, marked imported
(trials.imported), so that `spiralsearch fit` and `report` fit and plot them alongside
sweeps. A row needs parameters (taken as non-embedding), a loss in nats/token (taken as a
held-out loss: final_test_loss) and training tokens or training FLOPs; the missing one is
derived as published fits do: tokens = flops / (6 params), flops = 6 params tokens. Each
run is its own budget cell unless --budget names a column that groups them (e.g. an IsoFLOP
dataset's nominal budget, in FLOPs). Trial ids hash each row's values, so importing the
same file again writes no duplicates."""


def add_parser(subparsers) -> None:
    p = command(subparsers, "import", run_import,
                "import external runs (a CSV) into a results file", DESCRIPTION)
    p.add_argument("file", metavar="FILE.csv", help="one training run per row, with a header")
    p.add_argument("--group", required=True, metavar="NAME",
                   help="the comparison group the runs form (group_name)")
    for flag, default, what in (
            ("params", "params", "parameters (non-embedding)"),
            ("tokens", "tokens", "training tokens; if absent, flops / (6 params)"),
            ("flops", "flops", "training FLOPs; if absent, 6 params tokens"),
            ("loss", "loss", "loss in nats/token, taken as a held-out (test) loss")):
        p.add_argument(f"--{flag}", default=default, metavar="COL",
                       help=f"column of {what} (default {default!r})")
    p.add_argument("--budget", metavar="COL", help="column of nominal budgets in FLOPs that "
                   "groups runs into budget cells (default: each run its own)")
    p.add_argument("--sweep", metavar="NAME",
                   help="the sweep the import is recorded as (default import-GROUP)")
    add_db(p, default="results/SWEEP.duckdb")
    add_format(p)


def run_import(args: argparse.Namespace) -> int:
    """Read and check the CSV, then write its rows (one transaction) and the sweep row."""
    from spiralsearch.imports import default_sweep, read_runs, write_runs
    from spiralsearch.store import store_path

    runs = read_runs(args.file, params=args.params, tokens=args.tokens, flops=args.flops,
                     loss=args.loss, budget=args.budget)
    sweep = args.sweep or default_sweep(args.group)
    db = Path(args.db) if args.db else store_path(sweep)
    n = write_runs(runs, db, args.group, sweep=sweep)
    info = dict(file=str(runs.path), db=str(db), group=args.group, sweep=sweep, rows=n,
                columns=runs.columns)
    emit(args, info, lambda: print_table(
        f"imported {n} runs from {runs.path.name}", ["field", "value"],
        [[k, str(v)] for k, v in info.items() if k != "columns"]
        + [[f"{k} from", v] for k, v in runs.columns.items()]))
    return 0
