"""`spiralsearch data info SOURCE` and `spiralsearch data fetch prose`."""

from __future__ import annotations

import argparse

from spiralsearch.cli import Parser, add_format, command, emit, print_table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect data sources, fetch corpus:prose",
                              description="Inspect data sources, fetch corpus:prose.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND",
                           parser_class=Parser)
    f = command(sub, "fetch", run_fetch, "download corpus:prose into the cache (network)")
    f.add_argument("name", choices=["prose"])
    i = command(sub, "info", run_info, "tokenize (cached) and describe a source",
                "Tokenize a source (cached under $SPIRALSEARCH_CACHE) and print its "
                "vocabulary, split sizes, bytes per token and unigram entropy.")
    i.add_argument("source", help="e.g. corpus:sotu, text:PATH, synthetic:...")
    i.add_argument("--tokenizer", default="bytes", help="bytes | bpe:N")
    add_format(i)


def run_fetch(args: argparse.Namespace) -> int:
    """Download corpus:prose (network) into the cache."""
    from spiralsearch.data.dataset import fetch_prose

    print(f"corpus:prose ready in {fetch_prose()}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Load (tokenize on first use) a source and describe it."""
    from spiralsearch.data.dataset import load_dataset

    ds = load_dataset(args.source, args.tokenizer)
    info = dict(source=ds.source, tokenizer=ds.tokenizer, vocab_size=ds.vocab_size,
                train_tokens=len(ds.train), val_tokens=len(ds.val),
                bytes_per_token=ds.bytes_per_token, unigram_entropy=ds.unigram_entropy,
                optimal_loss=ds.optimal_loss)
    emit(args, info, lambda: print_table(
        f"{ds.source} ({ds.tokenizer})", ["field", "value"],
        [[k, f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float)
          else str(v)] for k, v in info.items()]))
    return 0
