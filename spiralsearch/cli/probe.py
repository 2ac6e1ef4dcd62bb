"""`spiralsearch probe RUN_DIR` (or `--trial TRIAL_ID`): attention probes per loop iteration
of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from spiralsearch.cli import add_db, add_format, command, emit, print_frame, resolve_db


def add_parser(subparsers) -> None:
    p = command(subparsers, "probe", run, "attention probes per loop iteration of a trained run",
                "Key-marginal entropy and local attention mass of every loop iteration, core "
                "layer and head of a `spiralsearch train` run or of a sweep's trial that "
                "kept its checkpoint (search.keep_checkpoints), on fixed held-out sequences; "
                "and the dynamic heads. json: {probes: [...], dynamic_heads: {metric: [...]}}.")
    p.add_argument("run", nargs="?", help="a `spiralsearch train --out` folder")
    p.add_argument("--trial", metavar="TRIAL_ID",
                   help="probe this sweep trial's kept checkpoint instead (with --db)")
    add_db(p)
    p.add_argument("--data", help="data source (default: the run's)")
    p.add_argument("--sequences", type=int, default=32, help="held-out sequences")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's)")
    p.add_argument("--window", type=int, default=4, help="LAM window, in positions")
    p.add_argument("--top", type=float, default=0.4, help="share of heads called dynamic")
    add_format(p, "the per-(iteration, layer, head) probe rows")


def _run_dir(args: argparse.Namespace) -> Path:
    """RUN_DIR, or the checkpoint folder that --trial kept in its results file's runs."""
    if (args.run is None) == (args.trial is None):
        raise ValueError("give a RUN_DIR or --trial TRIAL_ID, not both or neither")
    if args.run is not None:
        return Path(args.run)
    from spiralsearch.search.checkpoints import checkpoint_of, checkpoints_dir

    db = resolve_db(args)
    found = checkpoint_of(db, args.trial)
    if found is None:
        raise FileNotFoundError(f"trial {args.trial} has no checkpoint under "
                                f"{checkpoints_dir(db)} (pruned by search.keep_checkpoints, "
                                f"or never trained); `spiralsearch rerun {args.trial} --db "
                                f"{db}` re-trains it")
    return found


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags out of their domain before anything is loaded."""
    from spiralsearch.limits import at_most, too_large

    if args.sequences < 1 or not at_most("probe_sequences", args.sequences):
        raise ValueError(too_large("probe_sequences", args.sequences, "--sequences")
                         if args.sequences > 1 else f"--sequences {args.sequences}: must be "
                         f">= 1")
    if args.seq_len is not None and args.seq_len < 2:
        raise ValueError(f"--seq-len {args.seq_len}: must be >= 2 (tokens)")
    if args.window < 1:
        raise ValueError(f"--window {args.window}: must be >= 1 (positions)")
    if not 0 < args.top <= 1:
        raise ValueError(f"--top {args.top}: must be a share in (0, 1]")


def run(args: argparse.Namespace) -> int:
    """Probe the run's model on fixed held-out sequences of its own split and tokenizer."""
    from spiralsearch.analysis.probes import dynamic_heads, probe_run

    _check_flags(args)
    run_dir = _run_dir(args)
    df, seq_len = probe_run(run_dir, sequences=args.sequences, seq_len=args.seq_len,
                            window=args.window, data=args.data)
    dyn = {m: dynamic_heads(df, m, args.top) for m in ("entropy_norm", "lam")}
    # csv is one flat table: the probe rows; json adds the dynamic-head rankings
    value = df if args.format == "csv" else dict(
        probes=df.to_dict("records"),
        dynamic_heads={m: d.to_dict("records") for m, d in dyn.items()})
    emit(args, value, lambda: _table(args, run_dir, df, dyn, seq_len))
    return 0


def _table(args: argparse.Namespace, run_dir: Path, df, dyn: dict, seq_len: int) -> None:
    means = df.groupby(["iteration", "chunk", "positions", "layer"], as_index=False)[
        ["entropy_norm", "lam"]].mean()
    print_frame(args, means, f"attention probes of {run_dir} (mean over heads; "
                f"{args.sequences} held-out sequences of {seq_len} tokens, LAM window "
                f"{args.window})")
    for m, d in dyn.items():
        heads = ", ".join(f"L{r.layer}H{r.head} ({r.range:.3f})" for r in d.itertuples())
        print(f"dynamic heads by {m} (top {args.top:.0%} by range across iterations): {heads}")
