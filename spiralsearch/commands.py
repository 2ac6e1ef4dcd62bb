"""What each `spiralsearch` subcommand does; `cli.py` builds the parser and dispatches.

Each command is a thin layer over a library call and returns the exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from spiralsearch.model.config import ModelConfig


def _given(args: argparse.Namespace, cls) -> dict:
    """The fields of config dataclass `cls` given on the command line (unset ones omitted)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line (the spec comes separately)."""
    return {k: v for k, v in _given(args, ModelConfig).items() if k != "spec"}


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"),
                          (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A readable table on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # piped: don't wrap at 80


def cmd_describe(args: argparse.Namespace) -> int:
    from spiralsearch.model.counting import describe

    preset = args.preset or "tiny"
    results = [describe(s, preset, seq_len=args.seq_len, decode_context=args.decode_context,
                        **model_options(args)) for s in args.specs]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    base = results[0]["flops_forward"]
    rows = []
    for r in results:
        exact = "✓" if r["flops_forward"] == r["flops_forward_analytic"] else "✗"
        dec = r["decode"]
        rows.append([r["spec"], r["family"], _si(r["params_total"]),
                     _si(r["params_non_embedding"]), _si(r["params_unrolled"]),
                     str(r["unrolled_depth"]), f"{r['recurrence_ratio']:.2f}",
                     _si(r["flops_forward"]) + f" {exact}", _si(r["flops_forward_causal"]),
                     _si(r["flops_per_token_train"]), f"{r['flops_forward'] / base:.3f}",
                     _si(dec["flops_per_token"]), _si(dec["kv_cache"]["total"], "B")])
    ctx = results[0]["decode"]["context_len"]
    # units in the title and two-line headers, so 13 columns fit a 160-column pipe unwrapped
    print_table(f"{preset}: FLOPs of a {args.seq_len}-token prefill (✓ = fvcore equals the "
                f"analytic count); decode at {ctx} tokens of context, bf16 KV cache",
                ["spec", "family", "params", "non-emb", "unrolled", "depth", "rec.\nratio",
                 "prefill\nfull L×L", "prefill\ncausal", "train\nper token", "vs\nfirst",
                 "decode\nper token", "KV\ncache"], rows)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from spiralsearch.config import Budget, DataConfig, OptimConfig, TrialConfig
    from spiralsearch.training.loop import prepare, train

    kind, value = next((k, v) for k, v in (("flops", args.budget_flops),
                                           ("tokens", args.budget_tokens),
                                           ("params", args.budget_params)) if v is not None)
    # built here, not from a dict, so a bad flag is named as a flag ("tokens budget ...")
    budget = Budget(kind, value, args.tokens).to_dict()
    model = dict(spec=args.spec, preset=args.preset or "tiny") | model_options(args)
    data = dict(source=args.data) | _given(args, DataConfig)
    config = TrialConfig.from_dict(dict(model=model, data=data, train=_given(args, OptimConfig),
                                        budget=budget))
    _, p = prepare(config)  # refuse bad data or budgets before anything is written
    print(f"{p.model.spec} ({p.model.spec.family}): {p.steps:,} steps x {p.tokens_per_step:,} "
          f"tokens = {p.train_flops:.4g} training FLOPs ({p.kind} budget {p.target:.4g}, "
          f"achieved {p.achieved:.4g})", file=sys.stderr)
    out = Path(args.out)
    try:
        result = train(config, out_dir=out, progress=sys.stderr.isatty() or args.progress)
    except Exception as e:  # a crash mid-run is a failed trial, not a usage error
        from spiralsearch.schema import Status
        from spiralsearch.training.loop import write_summary

        write_summary(out, dict(status=Status.FAILED.value, error=f"{type(e).__name__}: {e}",
                                spec=str(p.model.spec), family=p.model.spec.family,
                                config=config.to_dict()))
        raise
    s = result.summary
    print(f"{s['status']}: val loss {s['final_val_loss']:.4f} nats/token, "
          f"{s['final_val_bpb']:.4f} bits/byte after {s['tokens']:,} tokens; "
          f"summary in {out / 'summary.json'}")
    return 0 if s["status"] == "complete" else 1


def cmd_data(args: argparse.Namespace) -> int:
    from spiralsearch.data.dataset import fetch_prose, load_dataset

    if args.data_command == "fetch":
        print(f"corpus:prose ready in {fetch_prose()}")
        return 0
    ds = load_dataset(args.source, args.tokenizer)
    info = dict(source=ds.source, tokenizer=ds.tokenizer, vocab_size=ds.vocab_size,
                train_tokens=len(ds.train), val_tokens=len(ds.val),
                bytes_per_token=ds.bytes_per_token, unigram_entropy=ds.unigram_entropy,
                optimal_loss=ds.optimal_loss)
    print(json.dumps(info, indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from spiralsearch.search.candidates import check_candidates
    from spiralsearch.search.space import load_space

    space = load_space(args.space)
    if args.dry_run:
        rows = check_candidates(space)
        budgets = space.budget_values
        unit = {"flops": "FLOPs", "tokens": "tokens", "params": "params"}[space.budget_kind]
        varying = sorted({k for r in rows for k, v in r["model"].items()
                          if k != "spec" and any(o["model"].get(k) != v for o in rows)})
        table = []
        for r in rows:
            per = [(_si(b["tokens"]) + " tok" if b.get("tokens") else "refused: "
                    + str(b.get("reason", ""))[:40]) for b in r["budgets"]]
            options = " ".join(f"{k}={r['model'].get(k)}" for k in varying)
            table.append([r["spec"], r["family"], options, _si(r["params_non_embedding"]),
                          _si(r["flops_per_token"], "FLOP"), *per])
        print_table(f"{space.name}: {len(rows)} candidates (dry run)",
                    ["spec", "family", "options", "params (non-emb)", "train FLOPs/token",
                     *[f"{_si(b)} {unit}" for b in budgets]], table)
        return 0
    from spiralsearch.search.driver import run_sweep

    report = run_sweep(space, results=args.results, address=args.address,
                       max_concurrent=args.max_concurrent, progress=not args.no_progress)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts.items()))
    print(f"sweep {report.name}: {counts} ({report.skipped} complete before this run) in "
          f"{report.seconds:.0f} s; results in {report.results}")
    return 0


def _print_frame(df, args: argparse.Namespace, title: str) -> None:
    if getattr(args, "csv", False):
        print(df.to_csv(index=False), end="")
    elif getattr(args, "json", False):
        print(df.to_json(orient="records", indent=2))
    else:
        rows = [[_cell(v) for v in r] for r in df.itertuples(index=False)]
        print_table(title, [str(c) for c in df.columns], rows)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _default_db(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    found = sorted(Path("results").glob("*.duckdb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError("no results/*.duckdb here; pass --db PATH")
    return found[-1]


def cmd_query(args: argparse.Namespace) -> int:
    from spiralsearch.store import query

    db = _default_db(args)
    _print_frame(query(db, args.sql), args, str(db))
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from spiralsearch.store import query

    db = _default_db(args)
    df = query(db, "SELECT trial_id, family, spec, status, budget_kind, budget_target, "
                   "params_non_embedding, flops_per_token, final_val_loss, best_val_loss, "
                   "final_val_bpb, wall_seconds, error FROM trials "
                   "ORDER BY budget_target, family, final_val_loss")
    _print_frame(df, args, f"trials in {db}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from spiralsearch.analysis.fits import fit_rows_text, fit_table, load_results

    db = _default_db(args)
    rows = fit_table(load_results(db)["trials"], by=args.by, bootstrap=args.bootstrap)
    if args.json:
        print(json.dumps(rows, indent=2, default=_json_default))
        return 0
    if not rows:
        print(f"no complete trials in {db} yet")
        return 0
    cols, cells = fit_rows_text(rows)
    print_table(f"L(C) = E + A·C^-alpha by {args.by} ({db})", cols, cells)
    for r in rows:
        if r.get("note"):
            print(f"{r['group']}: {r['note']}")
    return 0


def _json_default(v):
    return None if isinstance(v, float) else str(v)


def cmd_report(args: argparse.Namespace) -> int:
    from spiralsearch.analysis.report import build_report

    out = build_report(_default_db(args), args.out, bootstrap=args.bootstrap)
    print(f"report: {out.resolve()}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from spiralsearch.analysis.probes import attention_probes, dynamic_heads
    from spiralsearch.config import TrialConfig
    from spiralsearch.model.transformer import build_model
    from spiralsearch.training.loop import load_data

    run = Path(args.run)
    summary = run / "summary.json"
    ckpt = run / "checkpoints" / "last.pt"
    if not summary.exists() or not ckpt.exists():
        raise FileNotFoundError(f"{run}: not a training run (needs summary.json and "
                                f"checkpoints/last.pt from `spiralsearch train --out`)")
    config = TrialConfig.from_dict(json.loads(summary.read_text())["config"])
    model = build_model(config.model)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    if args.data:  # another source: its own split, the run's tokenizer settings
        config = config.replace(data=config.data.replace(source=args.data))
    ds = load_data(config)  # the run's own split and tokenizer
    seq_len = args.seq_len or config.data.seq_len
    x, _ = next(ds.val_batches(args.sequences, seq_len, 1))  # fixed held-out sequences
    df = attention_probes(model, x, window=args.window)
    dyn = {m: dynamic_heads(df, m, args.top) for m in ("entropy_norm", "lam")}
    if args.json:
        print(json.dumps(dict(probes=df.to_dict("records"),
                              dynamic_heads={m: d.to_dict("records") for m, d in dyn.items()}),
                         indent=2))
        return 0
    summary_df = df.groupby(["iteration", "chunk", "positions", "layer"], as_index=False)[
        ["entropy_norm", "lam"]].mean()
    _print_frame(summary_df, args, f"attention probes of {run} (mean over heads; "
                 f"{args.sequences} held-out sequences of {seq_len} tokens, LAM window "
                 f"{args.window})")
    for m, d in dyn.items():
        heads = ", ".join(f"L{r.layer}H{r.head} ({r.range:.3f})" for r in d.itertuples())
        print(f"dynamic heads by {m} (top {args.top:.0%} by range across iterations): {heads}")
    return 0
