"""The `spiralsearch` command line: one grammar for every command.

Each command lives in its own module (describe, train, data, sweep, keys, rerun, results,
imports (the `import` command), fit, report, probe) with its `add_parser(subparsers)` and
its handler side by side; each handler is a thin layer over a library call and returns the
exit code. This module holds what they share: the argparse `Parser` with one-line errors,
the common options (`--format`, `--db`, the model and config flags), the output formatter,
and the one error path of `main`.

Building the parser imports no torch, ray, optuna, duckdb, pandas, plotly or fvcore (the
flags come from torch-free config dataclasses), so `--help` is fast; handlers import what
they need.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EPILOG = """\
exit codes:
  0    success
  1    a run failed: train ended not complete; a sweep with a failed trial, or with no
       complete trial at the end; a rerun that does not reproduce the store
  2    bad input: a bad spec, preset, flag, YAML key, budget, data source, path or SQL
  3    busy: the results file stayed locked (another process writing)
  130  interrupted (Ctrl-C)
  143  a sweep stopped by SIGTERM

Errors print one line to stderr; SPIRALSEARCH_DEBUG=1 shows the traceback instead."""

# one module per command group, each with add_parser(subparsers); order = --help order
COMMANDS = ("describe", "train", "data", "sweep", "keys", "rerun", "results", "imports",
            "fit", "report", "probe")
FORMATS = ("table", "json", "csv")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of a usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class RunFailed(Exception):
    """A run that started and did not end complete (exit 1); the message says why."""


# --- shared options --------------------------------------------------------------------------

def command(subparsers, name: str, func: Callable[[argparse.Namespace], int], help: str,
            description: str | None = None) -> argparse.ArgumentParser:
    """A (sub)command parser whose handler is `func`; errors are reported under its prog."""
    p = subparsers.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=func, prog=p.prog)
    return p


def add_format(parser: argparse.ArgumentParser, csv_help: str = "") -> None:
    """--format {table,json,csv}."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output: table (default), json, or csv; in csv nested fields "
                        "flatten to dotted columns (decode.kv_cache.total) and lists to JSON "
                        "text" + (f"; {csv_help}" if csv_help else ""))


def add_db(parser: argparse.ArgumentParser, default: str = "the newest results/*.duckdb",
           timeout: bool = False) -> None:
    """--db PATH (the results file) and, for readers that take one, --timeout SECONDS."""
    parser.add_argument("--db", metavar="PATH", help=f"results file (default: {default})")
    if timeout:
        parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                            help="how long to wait while a writer holds the file (default 30)")


def resolve_db(args: argparse.Namespace) -> Path:
    """--db, else the newest results/*.duckdb."""
    if args.db:
        return Path(args.db)
    found = sorted(Path("results").glob("*.duckdb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError("no results/*.duckdb here; pass --db PATH")
    return found[-1]




def check_bootstrap(draws: int) -> None:
    """--bootstrap N of fit and report: 0 (no intervals) up to the bound on draws."""
    from spiralsearch.limits import at_most, too_large

    if draws < 0:
        raise ValueError(f"--bootstrap {draws}: must be >= 0")
    if not at_most("bootstrap", draws):
        raise ValueError(too_large("bootstrap", draws, "--bootstrap"))


def _field_flag(group, name: str, spec, help: str) -> None:
    """One --flag for a config field (default None: the preset or the dataclass decides)."""
    kw: dict[str, Any] = dict(dest=name, default=None, help=help)
    if spec.type is bool:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw["type"] = spec.type if spec.type in (int, float) else str
        if spec.choices:
            kw["choices"] = list(spec.choices)
    group.add_argument("--" + name.replace("_", "-"), **kw)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--preset and one --flag per ModelConfig field."""
    from spiralsearch.fields import field_specs
    from spiralsearch.model.config import CHOICES, PRESETS, ModelConfig

    g = parser.add_argument_group("model options (override the preset)")
    g.add_argument("--preset", choices=list(PRESETS), help="width preset (default: tiny)")
    for name, spec in field_specs(ModelConfig).items():
        if name == "spec":
            continue
        if name in CHOICES:
            spec = dataclasses.replace(spec, choices=CHOICES[name])
        _field_flag(g, name, spec, spec.help)


def add_config_options(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    """One --flag per field of a config section (DataConfig, OptimConfig), with its help."""
    from spiralsearch.fields import field_specs

    g = parser.add_argument_group(title)
    for name, spec in field_specs(cls).items():
        if name not in skip:
            _field_flag(g, name, spec, f"{spec.help} (default {spec.default})")


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of config dataclass `cls` given on the command line (unset ones omitted)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line (the spec comes separately)."""
    from spiralsearch.model.config import ModelConfig

    return {k: v for k, v in given(args, ModelConfig).items() if k != "spec"}


# --- output ----------------------------------------------------------------------------------

def si(x: float, unit: str = "") -> str:
    """3 significant digits with an SI prefix: 1.23M."""
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


def cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits, None blank."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return str(v)  # paths, timestamps


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"decode": {"kv_cache": {"total": 8}}} -> {"decode.kv_cache.total": 8}; lists
    become JSON text, so every CSV cell is one value."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, name + ".")
        elif isinstance(v, list | tuple):
            out[name] = json.dumps(v, default=_json_default)
        else:
            out[name] = v
    return out


def _write_csv(records: list[Mapping[str, Any]]) -> None:
    rows = [flatten(r) for r in records]
    columns = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order
    w = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


def emit(args: argparse.Namespace, value: Any, table: Callable[[], None]) -> None:
    """Print a command's result as --format asks: `value` (a dict, a list of dicts or a
    DataFrame) as JSON or CSV (one row per record), or call `table` to draw the table."""
    fmt = getattr(args, "format", "table")
    if fmt == "table":
        table()
    elif hasattr(value, "to_csv"):  # a DataFrame: pandas knows its dtypes and timestamps
        print(value.to_json(orient="records", indent=2) if fmt == "json"
              else value.to_csv(index=False).rstrip("\n"))
    elif fmt == "json":
        print(json.dumps(value, indent=2, default=_json_default))
    else:
        _write_csv([value] if isinstance(value, Mapping) else list(value))


def print_frame(args: argparse.Namespace, df, title: str) -> None:
    """A DataFrame as --format asks (table: one row per row, floats to 4 digits)."""
    emit(args, df, lambda: print_table(
        title, [str(c) for c in df.columns],
        [[cell(v) for v in r] for r in df.itertuples(index=False)]))


# --- the parser and the one error path --------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand (imports no heavy library)."""
    p = Parser(prog="spiralsearch", description="Architecture search and scaling-law studies "
               "of looped, multi-resolution (SpiralFormer) Transformers.", epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"spiralsearch.cli.{name}").add_parser(sub)
    return p


def _one_line(e: BaseException) -> str:
    return "; ".join(s.strip() for s in str(e).splitlines() if s.strip()) or type(e).__name__


def _exit_code(e: BaseException) -> int | None:
    """The exit code of an exception that is the user's to fix (or a failed run); None for a
    bug, which keeps its traceback."""
    from spiralsearch.store import StoreBusy, StoreError  # lazy: imports duckdb

    if isinstance(e, StoreBusy):  # before StoreError, its base
        return EXIT_BUSY
    if isinstance(e, RunFailed):
        return EXIT_FAILED
    if isinstance(e, (ValueError, StoreError, *PATH_ERRORS)):
        return EXIT_USAGE
    return None


# a path the user gave that is missing, of the wrong kind, or not theirs to read or write
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spiralsearch` console script; returns the exit code."""
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # argparse would name the top-level parser; name the command instead
            Parser(prog=args.prog).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) or a bad flag (2, already printed)
        return e.code if isinstance(e.code, int) else EXIT_OK
    debug = bool(os.environ.get("SPIRALSEARCH_DEBUG"))
    try:
        return args.func(args)
    except BrokenPipeError:  # `spiralsearch ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = _exit_code(e)
        if code is None or debug:
            raise
        print(f"{args.prog}: error: {_one_line(e)}", file=sys.stderr)
        return code
