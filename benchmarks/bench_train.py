"""Training throughput on this machine: plain, looped and SpiralFormer-B layouts of equal
stored parameters (8 stored layers, d=256, seq 1024), with achieved training FLOP/s as a
share of the machine's measured fp32 matmul FLOP/s, and the step-time ratio spiral/looped
next to their FLOP ratio (resampling must not eat the FLOP saving).

    .venv/bin/python benchmarks/bench_train.py [--steps 6] [--batch 4] [--device cpu]
writes benchmarks/results/train.json. Targets: |time ratio / FLOP ratio - 1| <= 10%, and
the plain layout at >= 30% of the matmul FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spiralsearch.model.config import ModelConfig
from spiralsearch.model.transformer import build_model
from spiralsearch.training.budget import train_flops_per_token
from spiralsearch.training.loop import OptimConfig, _optimizer, resolve_device

LAYOUTS = {"plain": "8", "looped": "2+4x{1,1}+2", "spiral-B": "2+4x{1/8,1/4,1/2,1}+2"}
OUT = Path(__file__).parent / "results" / "train.json"


def matmul_flops_per_s(device: torch.device, n: int = 1024, reps: int = 20) -> float:
    """fp32 FLOP/s of an n x n x n matmul, the machine's practical peak for this shape."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_seconds(spec: str, batch: int, seq_len: int, steps: int, device: torch.device) -> float:
    """Median wall seconds of one optimiser step (forward, backward, AdamW)."""
    cfg = ModelConfig.from_spec(spec, "tiny", d_model=256, n_heads=4, max_seq_len=seq_len)
    model = build_model(cfg).to(device)
    opt = _optimizer(model, OptimConfig())
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        _sync(device)
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    device = resolve_device(args.device)
    peak = matmul_flops_per_s(device)
    rows = {}
    for name, spec in LAYOUTS.items():
        cfg = ModelConfig.from_spec(spec, "tiny", d_model=256, n_heads=4, max_seq_len=args.seq_len)
        fpt = train_flops_per_token(cfg, args.seq_len)
        secs = step_seconds(spec, args.batch, args.seq_len, args.steps, device)
        tps = args.batch * args.seq_len / secs
        rows[name] = dict(spec=spec, step_seconds=secs, tokens_per_s=tps,
                          train_flops_per_token=fpt, train_flops_per_s=tps * fpt,
                          share_of_matmul_peak=tps * fpt / peak)
        print(f"{name:9s} {spec:24s} {secs:7.3f} s/step {tps:9.0f} tok/s "
              f"{tps * fpt / 1e9:7.2f} GFLOP/s = {tps * fpt / peak:5.1%} of matmul peak")
    s, lo = rows["spiral-B"], rows["looped"]
    time_ratio = s["step_seconds"] / lo["step_seconds"]
    flop_ratio = s["train_flops_per_token"] / lo["train_flops_per_token"]
    result = dict(
        machine=platform.platform(), device=str(device), threads=torch.get_num_threads(),
        batch=args.batch, seq_len=args.seq_len, matmul_flops_per_s=peak, layouts=rows,
        spiral_over_looped_time=time_ratio, spiral_over_looped_flops=flop_ratio,
        time_vs_flop_ratio=time_ratio / flop_ratio,
        target_ratio_within_10pct=abs(time_ratio / flop_ratio - 1) <= 0.10,
        target_plain_30pct_of_peak=rows["plain"]["share_of_matmul_peak"] >= 0.30)
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; spiral/looped: time {time_ratio:.3f}, "
          f"FLOPs {flop_ratio:.3f} (ratio of ratios {time_ratio / flop_ratio:.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
