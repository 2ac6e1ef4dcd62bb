"""Does `train.compile` pay for itself here? For a CPU-sweep-sized model (d=64, seq 128,
batch 8, the quickstart's) and the bench_train size (d=256, seq 1024, batch 4): seconds to
compile (the first compiled step, less an eager one), steady-state step time eager vs
compiled, and the break-even step count (compile seconds / seconds saved per step).

    .venv/bin/python benchmarks/bench_compile.py [--steps 8] [--device cpu]
writes benchmarks/results/compile.json. `train.compile: auto` turns it on where the
break-even is well below a typical trial's steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spiralsearch.config import OptimConfig
from spiralsearch.model.config import ModelConfig
from spiralsearch.model.transformer import build_model
from spiralsearch.training.loop import _optimizer, compiled, resolve_device

SIZES = {"quickstart (d=64, 8x128)": dict(d_model=64, n_heads=4, batch=8, seq_len=128),
         "bench_train (d=256, 4x1024)": dict(d_model=256, n_heads=4, batch=4, seq_len=1024)}
SPEC = "1+2x{1/4,1/2,1}+1"
OUT = Path(__file__).parent / "results" / "compile.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(size: dict, mode: str, steps: int, device: torch.device
               ) -> tuple[list[float], list[float]]:
    """Wall seconds and loss of each optimiser step, the first (compilation) included."""
    cfg = ModelConfig.from_spec(SPEC, "tiny", d_model=size["d_model"], n_heads=size["n_heads"],
                                max_seq_len=size["seq_len"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    forward = compiled(model, mode, device)
    opt = _optimizer(model, OptimConfig())
    x = torch.randint(0, cfg.vocab_size, (size["batch"], size["seq_len"]), device=device)
    times, losses = [], []
    for _ in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(x).float().flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    return times, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = {}
    for name, size in SIZES.items():
        eager, eager_loss = step_times(size, "off", args.steps, device)
        comp, comp_loss = step_times(size, "on", args.steps, device)
        e, c = sorted(eager[1:])[args.steps // 2], sorted(comp[1:])[args.steps // 2]
        compile_s = comp[0] - e
        saved = e - c
        rows[name] = dict(spec=SPEC, **size, eager_step_s=e, compiled_step_s=c,
                          speedup=e / c, compile_seconds=compile_s,
                          break_even_steps=compile_s / saved if saved > 0 else None,
                          max_loss_difference=max(abs(a - b) for a, b in
                                                  zip(eager_loss, comp_loss, strict=True)))
        print(name, json.dumps(rows[name], indent=1))
    out = dict(machine=platform.platform(), device=str(device), torch=torch.__version__,
               threads=torch.get_num_threads(), sizes=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
