"""`spiralsearch describe SPEC...`: parameters and FLOPs of one or more specs."""

from __future__ import annotations

import argparse

from spiralsearch.cli import (
    add_format,
    add_model_options,
    command,
    emit,
    model_options,
    print_table,
    si,
)


def add_parser(subparsers) -> None:
    p = command(subparsers, "describe", run, "parameters and FLOPs of one or more specs",
                "Parameters (total, non-embedding, unrolled) and forward FLOPs of one prefill "
                "(fvcore on the meta device, checked against the analytic count; past 64 "
                "unrolled layers the analytic count alone), and decode "
                "cost. Several specs print side by side; json gives describe()'s dict (a list "
                "for several specs).")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="e.g. '2+4x{1/8,1/4,1/2,1}+2'")
    p.add_argument("--seq-len", type=int, default=4096, help="prefill length (tokens)")
    p.add_argument("--decode-context", type=int, default=None,
                   help="context length (tokens) for decode FLOPs/token and KV-cache bytes "
                   "(default: --seq-len)")
    add_format(p, "one row per spec")
    add_model_options(p)


def run(args: argparse.Namespace) -> int:
    """Describe every spec; print them as a table, JSON or CSV."""
    from spiralsearch.model.config import ModelConfig

    preset = args.preset or "tiny"
    for s in args.specs:  # refuse a bad or oversized spec in milliseconds, before torch loads
        ModelConfig.from_spec(s, preset, **model_options(args))
    from spiralsearch.model.counting import describe

    results = [describe(s, preset, seq_len=args.seq_len, decode_context=args.decode_context,
                        **model_options(args)) for s in args.specs]
    emit(args, results[0] if len(results) == 1 and args.format == "json" else results,
         lambda: _table(results, preset, args.seq_len))
    return 0


def _table(results: list[dict], preset: str, seq_len: int) -> None:
    from spiralsearch.model.counting import FVCORE_MAX_DEPTH

    base = results[0]["flops_forward"]
    rows = []
    for r in results:
        exact = ("✓" if r["flops_forward"] == r["flops_forward_analytic"] else "✗") \
            if r["flops_traced"] else "(analytic)"
        dec = r["decode"]
        rows.append([r["spec"], r["family"], si(r["params_total"]),
                     si(r["params_non_embedding"]), si(r["params_unrolled"]),
                     str(r["unrolled_depth"]), f"{r['recurrence_ratio']:.2f}",
                     si(r["flops_forward"]) + f" {exact}", si(r["flops_forward_causal"]),
                     si(r["flops_per_token_train"]), f"{r['flops_forward'] / base:.3f}",
                     si(dec["flops_per_token"]), si(dec["kv_cache"]["total"], "B")])
    ctx = results[0]["decode"]["context_len"]
    # units in the title and two-line headers, so 13 columns fit a 160-column pipe unwrapped
    print_table(f"{preset}: FLOPs of a {seq_len}-token prefill (✓ = fvcore equals the "
                f"analytic count; past {FVCORE_MAX_DEPTH} unrolled layers analytic only); "
                f"decode at {ctx} tokens of context, bf16 KV cache",
                ["spec", "family", "params", "non-emb", "unrolled", "depth", "rec.\nratio",
                 "prefill\nfull L×L", "prefill\ncausal", "train\nper token", "vs\nfirst",
                 "decode\nper token", "KV\ncache"], rows)
