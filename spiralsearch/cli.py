"""The `spiralsearch` command line. Each subcommand is a thin layer over a library call.

Bad input (a bad spec, an unknown preset, a bad YAML key, ...) prints one line naming the
problem and exits with code 2; set SPIRALSEARCH_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

from spiralsearch import commands
from spiralsearch.model.config import PRESETS, ModelConfig

EXIT_USAGE = 2
_MODEL_HELP = {
    "d_model": "model width", "n_heads": "attention heads", "mlp_ratio": "MLP width / d_model",
    "vocab_size": "vocabulary size", "rotary_pct": "fraction of head dims with rotary",
    "rotary_base": "rotary base", "parallel_residual": "GPT-NeoX parallel attention + MLP",
    "bias": "biases in linear layers and norms", "max_seq_len": "longest input (tokens)",
    "topology": "loop topology", "mesh_slots": "MeSH buffer slots (default T+3)",
    "mesh_init": "MeSH slot 0: token embeddings or the loop's input",
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
    from spiralsearch.model.config import CHOICES

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
    d.add_argument("--decode-context", type=int, default=None,
                   help="context length (tokens) for decode FLOPs/token and KV-cache bytes "
                   "(default: --seq-len)")
    d.add_argument("--json", action="store_true", help="print the describe() dict as JSON")
    add_model_options(d)
    d.set_defaults(func=commands.cmd_describe)

    from spiralsearch.config import DataConfig, OptimConfig

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
    t.set_defaults(func=commands.cmd_train)

    da = sub.add_parser("data", help="inspect data sources, fetch corpus:prose")
    dsub = da.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    f = dsub.add_parser("fetch", help="download corpus:prose into the cache (network)")
    f.add_argument("name", choices=["prose"])
    i = dsub.add_parser("info", help="tokenize (cached) and describe a source")
    i.add_argument("source")
    i.add_argument("--tokenizer", default="bytes", help="bytes | bpe:N")
    da.set_defaults(func=commands.cmd_data)

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
    sw.set_defaults(func=commands.cmd_sweep)

    for name, func, helptext in (("query", commands.cmd_query, "run SQL on a results file"),
                                 ("trials", commands.cmd_trials, "the trials table at a glance")):
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
    fi.set_defaults(func=commands.cmd_fit)

    rp = sub.add_parser("report", help="write the offline HTML report of a sweep",
                        description="One self-contained HTML page (plotly embedded): loss vs "
                        "FLOPs with frontiers and fits, loss vs parameters, the multiplier "
                        "table, loss vs recurrence ratio, frontier training curves.")
    rp.add_argument("--db", help="results file (default: newest results/*.duckdb)")
    rp.add_argument("--out", help="HTML path (default reports/NAME.html)")
    rp.add_argument("--bootstrap", type=int, default=100, help="resamples for the fit bands")
    rp.set_defaults(func=commands.cmd_report)

    pr = sub.add_parser("probe", help="attention probes per loop iteration of a trained run",
                        description="Key-marginal entropy and local attention mass of every "
                        "loop iteration, core layer and head of a `spiralsearch train` run, "
                        "on fixed held-out sequences; and the dynamic heads.")
    pr.add_argument("run", help="a `spiralsearch train --out` folder")
    pr.add_argument("--data", help="data source (default: the run's)")
    pr.add_argument("--sequences", type=int, default=32, help="held-out sequences")
    pr.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's)")
    pr.add_argument("--window", type=int, default=4, help="LAM window, in positions")
    pr.add_argument("--top", type=float, default=0.4, help="share of heads called dynamic")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=commands.cmd_probe)
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
