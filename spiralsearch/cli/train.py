"""`spiralsearch train`: train one candidate to a matched budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spiralsearch.cli import (
    RunFailed,
    add_config_options,
    add_format,
    add_model_options,
    command,
    emit,
    given,
    model_options,
)


def add_parser(subparsers) -> None:
    from spiralsearch.config import DataConfig, OptimConfig

    p = command(subparsers, "train", run, "train one candidate to a matched budget",
                "Train one model to a FLOP, token or parameter budget. Checkpoints go to "
                "OUT/checkpoints/ (a rerun resumes), the final summary to OUT/summary.json; "
                "json prints that summary. Exit 1 when the run does not end complete.")
    p.add_argument("--spec", required=True, help="e.g. '1+2x{1/4,1/2,1}+1'")
    p.add_argument("--data", default="corpus:sotu", help="data source (default corpus:sotu)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget-flops", type=float, help="training FLOPs")
    b.add_argument("--budget-tokens", type=float, help="training tokens")
    b.add_argument("--budget-params", type=float,
                   help="non-embedding params (solves the width; needs --tokens)")
    p.add_argument("--tokens", type=float, help="training tokens for --budget-params")
    p.add_argument("--snap", action="store_true",
                   help="move the budget to the nearest whole number of steps (and say so) "
                   "instead of refusing a budget that whole steps miss by more than 1%%")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--progress", action="store_true", help="progress bar even without a tty")
    add_format(p, "one row, the config as config.* columns")
    add_model_options(p)
    add_config_options(p, DataConfig, "data options", skip=("source",))
    add_config_options(p, OptimConfig, "training options")


def run(args: argparse.Namespace) -> int:
    """Build the trial from the flags, refuse bad input before writing, train, summarise."""
    from spiralsearch.config import Budget, DataConfig, OptimConfig, TrialConfig
    from spiralsearch.data.dataset import entropy_warning
    from spiralsearch.training.loop import prepare, train

    kind, value = next((k, v) for k, v in (("flops", args.budget_flops),
                                           ("tokens", args.budget_tokens),
                                           ("params", args.budget_params)) if v is not None)
    # built here, not from a dict, so a bad flag is named as a flag ("tokens budget ...")
    budget = Budget(kind, value, args.tokens, args.snap).to_dict()
    model = dict(spec=args.spec, preset=args.preset or "tiny") | model_options(args)
    data = dict(source=args.data) | given(args, DataConfig)
    config = TrialConfig.from_dict(dict(model=model, data=data, train=given(args, OptimConfig),
                                        budget=budget))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder")
    ds, p = prepare(config)  # refuse bad data or budgets before anything is written
    print(f"{p.model.spec} ({p.model.spec.family}): {p.steps:,} steps x {p.tokens_per_step:,} "
          f"tokens = {p.train_flops:.4g} training FLOPs ({p.kind} budget {p.target:.4g}, "
          f"achieved {p.achieved:.4g})", file=sys.stderr)
    if p.note:
        print(f"note: {p.note}", file=sys.stderr)
    try:
        result = train(config, out_dir=out, progress=sys.stderr.isatty() or args.progress)
    except Exception as e:  # a crash mid-run is a failed run (exit 1), not a usage error
        from spiralsearch.schema import Status
        from spiralsearch.training.loop import write_summary

        error = f"{type(e).__name__}: {e}"
        write_summary(out, dict(status=Status.FAILED.value, error=error,
                                spec=str(p.model.spec), family=p.model.spec.family,
                                config=config.to_dict()))
        raise RunFailed(f"failed: {error}; summary in {out / 'summary.json'}") from e
    s = result.summary
    warning = entropy_warning(s["final_val_loss"], ds.unigram_entropy)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    emit(args, s, lambda: print(
        f"{s['status']}: val loss {s['final_val_loss']:.4f} nats/token, "
        f"{s['final_val_bpb']:.4f} bits/byte after {s['tokens']:,} tokens; "
        f"summary in {out / 'summary.json'}"))
    return 0 if s["status"] == "complete" else 1
