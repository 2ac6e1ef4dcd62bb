"""Greedy decoding speed: key/value caches at every resolution (spiralsearch.model.decode) against
the naive recompute (a full forward on the growing sequence per new token), for a plain, a
looped and a SpiralFormer layout (MeSH) at a small width, batch 1, a short prompt.

    .venv/bin/python benchmarks/bench_decode.py [--new-tokens 512] [--threads 1] [--device cpu]
writes benchmarks/results/decode.json: per layout the cached and recompute wall seconds,
their ratio (the speed-up) and whether both produced the same tokens. Target: speed-up > 1.
One CPU thread by default: a decode step's ops are single rows, where intra-op threads only
add a wake-up per op, and on a shared 2-core machine that wake-up can take milliseconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spiralsearch.model.config import ModelConfig
from spiralsearch.model.decode import generate
from spiralsearch.model.transformer import build_model
from spiralsearch.training.loop import resolve_device

LAYOUTS = {"plain": "4", "looped": "1+2x{1,1}+1", "spiral": "1+2x{1/4,1/2,1}+1"}
OUT = Path(__file__).parent / "results" / "decode.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def recompute(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy tokens (B, L + n) by a full forward on the whole sequence for each new token."""
    for _ in range(n):
        idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def timed(fn) -> tuple[float, torch.Tensor]:
    """(wall seconds, result) of fn()."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: keep)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    max_len = max(600, args.prompt + args.new_tokens)
    rows = {}
    for name, spec in LAYOUTS.items():
        cfg = ModelConfig.from_spec(spec, "tiny", d_model=args.d_model, topology="mesh",
                                    max_seq_len=max_len)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).eval()
        idx = torch.randint(0, cfg.vocab_size, (1, args.prompt), device=device)
        generate(model, idx, 8), recompute(model, idx, 8)  # warm-up
        _sync(device)
        cached_s, cached = timed(lambda: generate(model, idx, args.new_tokens))  # noqa: B023
        _sync(device)
        naive_s, naive = timed(lambda: recompute(model, idx, args.new_tokens))  # noqa: B023
        _sync(device)
        rows[name] = dict(spec=spec, cached_seconds=cached_s, recompute_seconds=naive_s,
                          speedup=naive_s / cached_s, same_tokens=torch.equal(cached, naive),
                          cached_tokens_per_s=args.new_tokens / cached_s)
        print(f"{name:7s} {spec:20s} cached {cached_s:6.2f} s  recompute {naive_s:6.2f} s  "
              f"speed-up {naive_s / cached_s:5.2f}x  same tokens: {rows[name]['same_tokens']}")
    result = dict(machine=platform.platform(), device=str(device),
                  threads=torch.get_num_threads(), d_model=args.d_model, batch=1,
                  prompt=args.prompt, new_tokens=args.new_tokens, max_seq_len=max_len,
                  layouts=rows, target_faster=all(r["speedup"] > 1 for r in rows.values()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
