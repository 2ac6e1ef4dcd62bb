"""`spiralsearch fit`: the study's scaling laws per comparison group, and its conclusion."""

from __future__ import annotations

import argparse
import math

from spiralsearch.analysis import BOOTSTRAP
from spiralsearch.cli import (
    add_db,
    add_format,
    check_bootstrap,
    command,
    emit,
    print_table,
    resolve_db,
    si,
)


def add_parser(subparsers) -> None:
    p = command(subparsers, "fit", run, "fit compute-loss scaling laws per group",
                "Per comparison group, on the test loss (validation for results from before "
                "the test split): the compute-optimal frontier L*(C) = E + A*C^-alpha (best "
                "size per budget, replicate means), IsoFLOP parabolas per budget with N*(C), "
                "and L(N, D); compute multipliers against a baseline group; a backtest on the "
                "largest budget; and one sentence per comparison. Intervals redraw replicates "
                "(search.replicates >= 2; none without). Fits with too few points are refused "
                "with the reason.")
    add_db(p)
    add_study_args(p)
    add_format(p, "csv: one row per group; json: everything (frontier, isoflop, nd, "
               "multipliers, conclusion)")


def add_study_args(p: argparse.ArgumentParser) -> None:
    """The options of the study analysis, shared by `fit` and `report` (one analysis)."""
    p.add_argument("--by", help="trials column to group by (default: the sweep's comparison "
                   "groups, group_name; family for older results)")
    p.add_argument("--baseline", help="the group the others are compared with (default: "
                   "the first group)")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP,
                   help=f"bootstrap draws (default {BOOTSTRAP})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e = p.add_mutually_exclusive_group()
    e.add_argument("--E", type=float, dest="fix_E", metavar="NATS",
                   help="fix every frontier's loss floor E at this value (nats/token)")
    e.add_argument("--shared-E", action="store_true",
                   help="fit one loss floor E for all groups (same data, same irreducible loss)")


def study_kwargs(args: argparse.Namespace) -> dict:
    """fits.study's keyword arguments from add_study_args' options."""
    check_bootstrap(args.bootstrap)
    if args.fix_E is not None and not (math.isfinite(args.fix_E) and args.fix_E >= 0):
        raise ValueError(f"--E {args.fix_E}: the loss floor must be a finite number >= 0 "
                         f"(nats/token)")
    return dict(baseline=args.baseline, bootstrap=args.bootstrap, seed=args.seed,
                E=args.fix_E, shared_E=args.shared_E)


def run(args: argparse.Namespace) -> int:
    """Analyse every group of the results file, print the tables and the conclusion."""
    from spiralsearch.analysis.fits import load_results, rows_of, study

    db = resolve_db(args)
    kw = study_kwargs(args)
    st = study(load_results(db)["trials"], args.by, **kw)
    if args.format == "json":
        emit(args, st.to_dict(), lambda: None)
    else:
        emit(args, rows_of(st), lambda: _tables(st, db))
    return 0


def _tables(st, db) -> None:
    from spiralsearch.analysis.fits import fit_rows_text, rows_of

    if not st.groups:
        print(f"no complete trials in {db} yet")
        return
    cols, cells = fit_rows_text(rows_of(st))
    boot = st.bootstrap
    why = f"{boot['n']} draws redrawing replicates" if boot.get("n") else boot.get(
        "refused", "no bootstrap")
    print_table(f"frontier L*(C) = E + A·C^-alpha by {st.by}, on {st.loss} loss ({db}); "
                f"intervals: {why}", cols, cells)
    for name, g in st.groups.items():
        for view in ("frontier", "optimal_size", "nd", "backtest"):
            if getattr(g, view).get("refused"):
                print(f"{name} {view}: refused: {getattr(g, view)['refused']}")
    iso = [[str(n), si(e["budget"]), str(e["n_sizes"]), *_optimum(e)]
           for n, g in st.groups.items() for e in g.isoflop if "refused" not in e]
    if iso:
        from spiralsearch.analysis.study import ISOFLOP_BIAS

        print_table("IsoFLOP optima (parabola in log N per budget)",
                    ["group", "budget", "sizes", "N* (non-emb)", "L*", "optimum"], iso)
        print(f"note: {ISOFLOP_BIAS}")
        for n, g in st.groups.items():
            for e in g.isoflop:
                if e.get("advice"):
                    print(f"{n} at {si(e['budget'])} FLOPs: {e['advice']}")
    for name, g in st.groups.items():
        o = g.optimal_size
        if "a" in o:
            ci = o["ci"].get("a")
            print(f"{name}: N*(C) = {o['k']:.3g}·C^{o['a']:.3f}"
                  + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        nd = g.nd
        if "E" in nd:
            print(f"{name}: L(N, D) = {nd['E']:.3f} + {nd['A']:.3g}/N^{nd['alpha']:.3f} + "
                  f"{nd['B']:.3g}/D^{nd['beta']:.3f}"
                  + (f" (at bound: {', '.join(nd['at_bound'])})" if nd["at_bound"] else ""))
    print()
    for sentence in st.conclusion:
        print(sentence)


def _optimum(e: dict) -> list[str]:
    ci = e.get("ci", {})

    def with_ci(k: str, fmt) -> str:
        v, c = e[k], ci.get(k)
        if v is None or not math.isfinite(v):
            return "n/a"
        return fmt(v) + (f" [{fmt(c[0])}, {fmt(c[1])}]" if c else "")

    where = "no minimum" if not math.isfinite(e["params_opt"]) else (
        "at the grid's edge: extrapolated" if e["edge"] else "inside the grid")
    return [with_ci("params_opt", si), with_ci("loss_opt", lambda v: f"{v:.4f}"), where]
