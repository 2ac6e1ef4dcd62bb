"""`spiralsearch keys [PREFIX]`: the search-space YAML reference on the command line."""

from __future__ import annotations

import argparse

from spiralsearch.cli import add_format, command, emit, print_table


def add_parser(subparsers) -> None:
    p = command(subparsers, "keys", run, "every key a search-space YAML accepts",
                "Every key of a search space with its type, default, allowed values, the "
                "distributions it can be searched with and its meaning, from the config "
                "classes that validate it (the same table as docs/yaml.md). PREFIX keeps the "
                "keys that start with it: `spiralsearch keys model.`, `keys budget.snap`.")
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                   help="e.g. model. or train.lr (default: every key)")
    p.add_argument("--markdown", action="store_true",
                   help="print the whole reference as docs/yaml.md holds it")
    add_format(p, "one row per key")


def run(args: argparse.Namespace) -> int:
    """Print the keys that start with PREFIX; no such key is bad input (exit 2)."""
    from spiralsearch.yamlref import as_dicts, keys, markdown

    if args.markdown:
        if args.prefix:
            raise ValueError("--markdown prints the whole reference; leave PREFIX out")
        print(markdown(), end="")
        return 0
    rows = keys(args.prefix)
    if not rows:
        sections = sorted({k.key.split(".")[0] for k in keys()})
        raise ValueError(f"no key starts with {args.prefix!r}; the sections are "
                         f"{', '.join(sections)} (try `spiralsearch keys model.`)")
    emit(args, as_dicts(rows), lambda: print_table(
        f"search-space keys{f' starting with {args.prefix!r}' if args.prefix else ''} "
        "(docs/yaml.md)", ["key", "type", "default", "allowed", "distributions", "meaning"],
        [[k.key, k.type, k.default, k.allowed, k.search or "-", k.meaning] for k in rows]))
    return 0
