"""`spiralsearch rerun TRIAL_ID`: re-train one stored trial and check it reproduces exactly."""

from __future__ import annotations

import argparse

from spiralsearch.cli import RunFailed, add_db, add_format, command, emit, print_table, resolve_db


def add_parser(subparsers) -> None:
    p = command(subparsers, "rerun", run, "re-train one stored trial and check it reproduces",
                "Re-train a trial of a results file from scratch, from its stored config, "
                "with the threads and device its sweep's worker used (the sweep's "
                "resources), and compare its final val and test losses with the stored "
                "ones, exactly. Exit 0 when both are equal, 1 when one differs or the run "
                "does not end complete, 2 for an unknown trial or results file.")
    p.add_argument("trial", metavar="TRIAL_ID", help="the trial's id (trials.trial_id)")
    add_db(p, timeout=True)
    p.add_argument("--out", metavar="DIR", help="folder for the re-run's checkpoint and "
                   "summary.json (default: a new one under RESULTS.runs/rerun/TRIAL_ID/)")
    add_format(p, "one row: stored_* and rerun_* losses, equal")


def run(args: argparse.Namespace) -> int:
    """Re-train, print stored vs re-run losses; exit 1 unless they are equal."""
    from spiralsearch.search.rerun import LOSSES, RerunError, rerun

    db = resolve_db(args)
    try:
        r = rerun(args.trial, db, args.out, timeout_s=args.timeout)
    except RerunError as e:  # training crashed: a failed run, not bad input
        raise RunFailed(str(e)) from e
    emit(args, r.to_dict(), lambda: print_table(
        f"rerun of {r.trial_id} ({r.sweep}; {r.threads} thread(s), {r.device}) in {r.out}",
        ["loss (nats/token)", "stored", "rerun", "equal"],
        [[k, repr(r.stored[k]), repr(r.rerun[k]), str(r.matches(k))] for k in LOSSES]))
    if not r.equal:
        differ = ", ".join(f"{k} {r.stored[k]!r} stored vs {r.rerun[k]!r}" for k in LOSSES
                           if not r.matches(k))
        raise RunFailed(f"rerun of {r.trial_id} does not reproduce the store: "
                        + (differ if r.status == "complete" else f"it ended {r.status}"))
    return 0
