"""The `spiralsearch` command line. Each subcommand is a thin layer over a library call.

Bad input (a bad spec, an unknown preset, a bad YAML key, ...) prints one line naming the
problem and exits with code 2; set SPIRALSEARCH_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from spiralsearch.model import PRESETS, ModelConfig

EXIT_USAGE = 2
_MODEL_HELP = {
    "d_model": "model width", "n_heads": "attention heads", "mlp_ratio": "MLP width / d_model",
    "vocab_size": "vocabulary size", "rotary_pct": "fraction of head dims with rotary",
    "rotary_base": "rotary base", "parallel_residual": "GPT-NeoX parallel attention + MLP",
    "bias": "biases in linear layers and norms", "max_seq_len": "longest input (tokens)",
    "topology": "loop topology", "mesh_slots": "MeSH buffer slots (default T+3)",
    "downsample": "chunk pooling", "upsample": "chunk-to-token split",
    "coarse_positions": "rotary position of a chunk latent", "shift": "causal right-shift",
    "norm_eps": "LayerNorm epsilon", "init_std": "init standard deviation",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of a usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--preset and one --flag per ModelConfig field (defaults None: preset/config decide)."""
    from spiralsearch.model import CHOICES

    g = parser.add_argument_group("model options (override the preset)")
    g.add_argument("--preset", choices=list(PRESETS), help="width preset (default: tiny)")
    for f in dataclasses.fields(ModelConfig):
        if f.name == "spec":
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default
        kw: dict = dict(dest=f.name, default=None, help=_MODEL_HELP.get(f.name))
        if f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        elif isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, float):
            kw["type"] = float
        else:
            kw["type"] = int
        g.add_argument(flag, **kw)


def model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line (those left unset are omitted)."""
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "spec"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
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
    Console(width=max(120, os.get_terminal_size(0).columns if sys.stdin.isatty() else 160)
            ).print(table)


def cmd_describe(args: argparse.Namespace) -> int:
    from spiralsearch.flops import describe

    options = model_options(args)
    preset = args.preset or ("tiny" if "d_model" not in options else None)
    results = [describe(s, preset, seq_len=args.seq_len, **options) for s in args.specs]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    base = results[0]["flops_forward"]
    rows = []
    for r in results:
        exact = "✓" if r["flops_forward"] == r["flops_forward_analytic"] else "✗"
        rows.append([r["spec"], r["family"], _si(r["params_total"]),
                     _si(r["params_non_embedding"]), _si(r["params_unrolled"]),
                     str(r["unrolled_depth"]), f"{r['recurrence_ratio']:.2f}",
                     _si(r["flops_forward"], "FLOP") + f" {exact}",
                     _si(r["flops_per_token_train"], "FLOP"),
                     f"{r['flops_forward'] / base:.3f}"])
    print_table(f"{preset or 'custom'} @ {args.seq_len} tokens",
                ["spec", "family", "params", "non-emb", "unrolled", "depth", "rec. ratio",
                 "fwd FLOPs (fvcore=analytic)", "train FLOPs/token", "FLOPs vs first"], rows)
    return 0


def _add_dataclass_options(parser, cls, title: str, skip=()) -> None:
    """One --flag per field of a config dataclass (default None: the dataclass decides)."""
    g = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kw: dict = dict(dest=f.name, default=None, help=f"default {f.default}")
        kw["type"] = {bool: None, float: float, int: int}.get(type(f.default), str)
        if isinstance(f.default, bool):
            kw.pop("type")
            kw["action"] = argparse.BooleanOptionalAction
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def _given(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from spiralsearch.train import DataConfig, OptimConfig, TrainConfig, prepare, train

    kind, value = next((k, v) for k, v in (("flops", args.budget_flops),
                                           ("tokens", args.budget_tokens),
                                           ("params", args.budget_params)) if v is not None)
    budget = dict(kind=kind, value=value) | ({"tokens": args.tokens} if args.tokens else {})
    model = dict(spec=args.spec, preset=args.preset or "tiny") | model_options(args)
    data = dict(source=args.data) | _given(args, DataConfig)
    config = TrainConfig.from_dict(dict(model=model, data=data, train=_given(args, OptimConfig),
                                        budget=budget))
    _, p = prepare(config)  # refuse bad data or budgets before anything is written
    print(f"{p.model.spec} ({p.model.spec.family}): {p.steps:,} steps x {p.tokens_per_step:,} "
          f"tokens = {p.train_flops:.4g} training FLOPs ({p.kind} budget {p.target:.4g}, "
          f"achieved {p.achieved:.4g})", file=sys.stderr)
    out = Path(args.out)
    try:
        result = train(config, out_dir=out, progress=sys.stderr.isatty() or args.progress)
    except Exception as e:  # a crash mid-run is a failed trial, not a usage error
        from spiralsearch.train import write_summary

        write_summary(out, dict(status="failed", error=f"{type(e).__name__}: {e}",
                                spec=str(p.model.spec), family=p.model.spec.family,
                                config=config.to_dict()))
        raise
    s = result.summary
    print(f"{s['status']}: val loss {s['final_val_loss']:.4f} nats/token, "
          f"{s['final_val_bpb']:.4f} bits/byte after {s['tokens']:,} tokens; "
          f"summary in {out / 'summary.json'}")
    return 0 if s["status"] == "complete" else 1


def cmd_data(args: argparse.Namespace) -> int:
    from spiralsearch.data import fetch_prose, load_dataset

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
    from spiralsearch.space import check_candidates, load_space

    space = load_space(args.space)
    if args.dry_run:
        rows = check_candidates(space)
        budgets = space.budget_values
        unit = {"flops": "FLOPs", "tokens": "tokens", "params": "params"}[space.budget_kind]
        table = []
        for r in rows:
            per = [(_si(b["tokens"]) + " tok" if b.get("tokens") else "refused: "
                    + str(b.get("reason", ""))[:40]) for b in r["budgets"]]
            table.append([r["spec"], r["family"], _options_text(r), _si(r["params_non_embedding"]),
                          _si(r["flops_per_token"], "FLOP"), *per])
        print_table(f"{space.name}: {len(rows)} candidates (dry run)",
                    ["spec", "family", "options", "params (non-emb)", "train FLOPs/token",
                     *[f"{_si(b)} {unit}" for b in budgets]], table)
        return 0
    from spiralsearch.sweep import run_sweep

    report = run_sweep(space, results=args.results, address=args.address,
                       max_concurrent=args.max_concurrent, progress=not args.no_progress)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts.items()))
    print(f"sweep {report.name}: {counts} ({report.skipped} complete before this run) in "
          f"{report.seconds:.0f} s; results in {report.results}")
    return 0


def _options_text(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(row.get("options", {}).items()))


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
    from spiralsearch.report import fit_rows_text, fit_table, load_results

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
    from spiralsearch.report import build_report

    out = build_report(_default_db(args), args.out, bootstrap=args.bootstrap)
    print(f"report: {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    p = Parser(prog="spiralsearch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)

    d = sub.add_parser("describe", help="parameters and FLOPs of one or more specs",
                       description="Parameters (total, non-embedding, unrolled) and forward "
                       "FLOPs of one prefill (fvcore on the meta device, checked against the "
                       "analytic count). Several specs print side by side.")
    d.add_argument("specs", nargs="+", metavar="SPEC", help="e.g. '2+4x{1/8,1/4,1/2,1}+2'")
    d.add_argument("--seq-len", type=int, default=4096, help="prefill length (tokens)")
    d.add_argument("--json", action="store_true", help="print the describe() dict as JSON")
    add_model_options(d)
    d.set_defaults(func=cmd_describe)

    from spiralsearch.train import DataConfig, OptimConfig

    t = sub.add_parser("train", help="train one candidate to a matched budget",
                       description="Train one model to a FLOP, token or parameter budget. "
                       "Checkpoints go to OUT/checkpoints/ (a rerun resumes), the final "
                       "summary to OUT/summary.json.")
    t.add_argument("--spec", required=True, help="e.g. '1+2x{1/4,1/2,1}+1'")
    t.add_argument("--data", default="corpus:sotu", help="data source (default corpus:sotu)")
    b = t.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget-flops", type=float, help="training FLOPs")
    b.add_argument("--budget-tokens", type=float, help="training tokens")
    b.add_argument("--budget-params", type=float,
                   help="non-embedding params (solves the width; needs --tokens)")
    t.add_argument("--tokens", type=float, help="training tokens for --budget-params")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--progress", action="store_true", help="progress bar even without a tty")
    add_model_options(t)
    _add_dataclass_options(t, DataConfig, "data options", skip=("source",))
    _add_dataclass_options(t, OptimConfig, "training options")
    t.set_defaults(func=cmd_train)

    da = sub.add_parser("data", help="inspect data sources, fetch corpus:prose")
    dsub = da.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    f = dsub.add_parser("fetch", help="download corpus:prose into the cache (network)")
    f.add_argument("name", choices=["prose"])
    i = dsub.add_parser("info", help="tokenize (cached) and describe a source")
    i.add_argument("source")
    i.add_argument("--tokenizer", default="bytes", help="bytes | bpe:N")
    da.set_defaults(func=cmd_data)

    sw = sub.add_parser("sweep", help="run a YAML search space with Ray Tune + Optuna",
                        description="Run every (budget, family) group of a search space. "
                        "Results land in DuckDB (default results/NAME.duckdb); re-running the "
                        "same YAML skips trials already complete.")
    sw.add_argument("space", help="search space YAML, e.g. search_spaces/quickstart.yaml")
    sw.add_argument("--address", help="join a running Ray cluster (ray start --head ...)")
    sw.add_argument("--results", help="DuckDB file (default results/NAME.duckdb)")
    sw.add_argument("--resume", action="store_true",
                    help="continue an interrupted sweep (a plain re-run does the same)")
    sw.add_argument("--max-concurrent", type=int, help="trials at once (default: by resources)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the candidate table (params, FLOPs/token, tokens per budget)")
    sw.add_argument("--no-progress", action="store_true", help="no live table")
    sw.set_defaults(func=cmd_sweep)

    for name, func, helptext in (("query", cmd_query, "run SQL on a results file"),
                                 ("trials", cmd_trials, "the trials table at a glance")):
        q = sub.add_parser(name, help=helptext, description=helptext + " (read-only; works "
                           "while a sweep is writing)")
        if name == "query":
            q.add_argument("sql", help="e.g. 'SELECT family, min(final_val_loss) FROM trials "
                           "GROUP BY family'")
        q.add_argument("--db", help="results file (default: newest results/*.duckdb)")
        fmt = q.add_mutually_exclusive_group()
        fmt.add_argument("--csv", action="store_true")
        fmt.add_argument("--json", action="store_true")
        q.set_defaults(func=func)

    fi = sub.add_parser("fit", help="fit compute-loss scaling laws per family",
                        description="Fit L(C) = E + A*C^-alpha per family (best trial per "
                        "budget), with bootstrap intervals, the compute multiplier against "
                        "the plain family and a backtest on the largest budget.")
    fi.add_argument("--db", help="results file (default: newest results/*.duckdb)")
    fi.add_argument("--by", default="family", help="trials column to group by")
    fi.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    fi.add_argument("--json", action="store_true")
    fi.set_defaults(func=cmd_fit)

    rp = sub.add_parser("report", help="write the offline HTML report of a sweep",
                        description="One self-contained HTML page (plotly embedded): loss vs "
                        "FLOPs with frontiers and fits, loss vs parameters, the multiplier "
                        "table, loss vs recurrence ratio, frontier training curves.")
    rp.add_argument("--db", help="results file (default: newest results/*.duckdb)")
    rp.add_argument("--out", help="HTML path (default reports/NAME.html)")
    rp.add_argument("--bootstrap", type=int, default=100, help="resamples for the fit bands")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spiralsearch` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `spiralsearch ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from spiralsearch.store import StoreError  # lazy: duckdb/pandas only when needed

        if not isinstance(e, ValueError | FileNotFoundError | StoreError) or os.environ.get(
                "SPIRALSEARCH_DEBUG"):
            raise
        print(f"spiralsearch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
