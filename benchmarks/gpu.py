"""Training throughput and MFU through the real training loop (`spiralsearch.train`): the
plain Pythia-160M model (`12`) and SpiralFormer `1+4x{1/8,1/4,1/2,1}+1`, both at d=768 with
the 50,304-token vocabulary, 32 sequences x 2048 tokens per step, bf16 autocast, compiled.

    python benchmarks/gpu.py                 # on a CUDA machine: the paper-size run
    python benchmarks/gpu.py --toy           # any machine (automatic without CUDA)
    PYTHONPATH=. python3 benchmarks/gpu.py --no-sweep   # a GPU box with torch only

writes benchmarks/results/gpu.json. Each model trains a fixed number of steps on random
tokens (throughput does not depend on the data) through `train`, with everything a trial
does: prefetched batches, the loss kept on the device, fused AdamW, chunked loss, periodic
evaluations. tokens/s is the loop's own figure (training only, evaluations excluded), from
the intervals after the first (which holds compilation and warm-up); MFU is tokens/s x the
exact training FLOPs per token over the device's bf16 dense peak (training/device.py), and is
not computed where no peak is known (the CPU) unless $SPIRALSEARCH_PEAK_FLOPS gives one.
Then four trials of the plain model packed on the GPU at `resources.gpu: 0.25` run through a
real sweep (Ray Tune, the store): their tokens/s and MFU each and summed, and the wall time.
Goal (issue 15): MFU >= 45% for the plain model on one H200.

The models need only torch, numpy and pyyaml; the packed sweep needs Ray, DuckDB and Optuna,
and is skipped, said so in the file, where they are not installed (or with --no-sweep). The
file is written once the models are measured, and again after the sweep.

At toy size (d=64, 4 x 128 tokens, vocab 1024) the figures only show the harness runs; they
say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from spiralsearch.atomic import atomic_write_json
from spiralsearch.config import TrialConfig
from spiralsearch.training.device import PEAK_FLOPS_ENV, peak_flops, resolve_device
from spiralsearch.training.loop import plan_trial, train

MODELS = {"plain-160m": "12", "spiral": "1+4x{1/8,1/4,1/2,1}+1"}
PAPER = dict(preset="pythia-160m", batch=32, seq_len=2048, vocab=50304, steps=40, evals=4)
TOY = dict(preset="tiny", batch=4, seq_len=128, vocab=1024, steps=9, evals=3)
OUT = Path(__file__).parent / "results" / "gpu.json"
MFU_GOAL = 0.45  # plain model, one H200, bf16


def token_file(folder: Path, vocab: int, n: int, seed: int = 0) -> str:
    """A `tokens:` source of n uniformly random ids below vocab (a uint16 .bin)."""
    path = folder / f"random-{vocab}.bin"
    np.random.default_rng(seed).integers(0, vocab, n, dtype=np.uint16).tofile(path)
    return f"tokens:{path}:vocab={vocab}"


def trial(spec: str, size: dict, source: str, args: argparse.Namespace) -> TrialConfig:
    """The benchmark trial: `size`'s widths, batch and length, a fixed step count."""
    return TrialConfig.from_dict(dict(
        model=dict(spec=spec, preset=size["preset"]),
        data=dict(source=source, seq_len=size["seq_len"]),
        train=dict(batch_size=size["batch"], evals=size["evals"], eval_batches=1,
                   device=args.device, compile=args.compile, micro_batch=args.micro_batch,
                   warmup_frac=0.0),
        budget=dict(kind="tokens", value=size["steps"] * size["batch"] * size["seq_len"])))


def measure(config: TrialConfig) -> dict:
    """Train `config` and summarise its throughput: steady tokens/s and MFU (the intervals
    after the first), and each interval's."""
    p = plan_trial(config)
    result = train(config)
    rows = result.metrics
    steady = rows[1:] or rows
    tps = statistics.fmean(r["tokens_per_s"] for r in steady)
    mfus = [r["mfu"] for r in steady if r["mfu"] == r["mfu"]]
    return dict(spec=str(p.model.spec), d_model=p.model.d_model, n_heads=p.model.n_heads,
                vocab_size=p.model.vocab_size, status=result.status, steps=p.steps,
                params_non_embedding=p.params_non_embedding,
                params_total=result.summary["params_total"],
                train_flops_per_token=p.flops_per_token, tokens_per_s=tps,
                mfu=statistics.fmean(mfus) if mfus else None,
                intervals=[dict(step=r["step"], tokens_per_s=r["tokens_per_s"],
                                mfu=r["mfu"] if r["mfu"] == r["mfu"] else None) for r in rows])


def packed_sweep(size: dict, source: str, device: torch.device, folder: Path) -> dict:
    """Four trials of the plain model packed on one GPU (`resources.gpu: 0.25`) through a
    real sweep: each trial's steady tokens/s and MFU, their sum, and the sweep's wall time.
    Without CUDA, Ray is given one logical GPU and the trials train on the CPU (at toy size:
    it shows the packing runs, nothing about a GPU)."""
    import ray

    from spiralsearch.search.driver import run_sweep
    from spiralsearch.search.space import parse_space
    from spiralsearch.store import load

    cuda = device.type == "cuda"
    cpus = os.cpu_count() or 1
    tokens = size["steps"] * size["batch"] * size["seq_len"]
    space = parse_space(f"""name: gpu-packed
data: {{source: "{source}", seq_len: {size['seq_len']}}}
model: {{spec: "{MODELS['plain-160m']}", preset: {size['preset']}}}
train: {{batch_size: {size['batch']}, evals: {size['evals']}, eval_batches: 1, warmup_frac: 0.0,
        seed: {{choice: [0, 1, 2, 3]}}, device: {'auto' if cuda else 'cpu'}}}
budget: {{kind: tokens, values: [{tokens}]}}
search: {{sampler: grid, scheduler: none, samples_per_budget: 4, seed: 0}}
resources: {{cpu: {max(0.5, cpus // 4)}, gpu: 0.25}}
""")
    ray.init(address="local", num_cpus=max(cpus, 2), include_dashboard=False,
             num_gpus=torch.cuda.device_count() if cuda else 1, log_to_driver=False)
    try:
        report = run_sweep(space, results=folder / "packed.duckdb", progress=False)
    finally:
        ray.shutdown()
    trials = load(folder / "packed.duckdb")
    metrics = load(folder / "packed.duckdb", "metrics")
    per_trial = []
    for tid in trials["trial_id"]:
        m = metrics[metrics["trial_id"] == tid].sort_values("step")
        steady = m.iloc[1:] if len(m) > 1 else m
        mfu = steady["mfu"].dropna()
        per_trial.append(dict(trial_id=tid, tokens_per_s=float(steady["tokens_per_s"].mean()),
                              mfu=float(mfu.mean()) if len(mfu) else None))
    mfus = [t["mfu"] for t in per_trial if t["mfu"] is not None]
    return dict(trials=len(trials), counts=report.counts, wall_seconds=report.seconds,
                resources=dict(cpu=space.resources.cpu, gpu=space.resources.gpu),
                tokens_per_trial=tokens, per_trial=per_trial,
                tokens_per_s_sum=sum(t["tokens_per_s"] for t in per_trial),
                mfu_sum=sum(mfus) if len(mfus) == len(per_trial) else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="toy size (automatic without CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--steps", type=int, help="training steps per model")
    ap.add_argument("--models", default=",".join(MODELS), help="of " + ", ".join(MODELS))
    ap.add_argument("--no-sweep", action="store_true", help="skip the packed 4-trial sweep")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    device = resolve_device(args.device)
    toy = args.toy or device.type != "cuda"
    size = dict(TOY if toy else PAPER) | ({"steps": args.steps} if args.steps else {})
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = token_file(Path(tmp), size["vocab"], 64 * size["batch"] * size["seq_len"])
        for key in args.models.split(","):
            rows[key] = measure(trial(MODELS[key], size, source, args))
            r = rows[key]
            mfu = "n/a (no peak known)" if r["mfu"] is None else f"{r['mfu']:.1%}"
            print(f"{key:11s} {r['spec']:24s} {r['tokens_per_s']:12,.0f} tok/s  MFU {mfu}")
        plain = rows.get("plain-160m", {}).get("mfu")
        result = dict(
            label=("CPU toy run: shows the harness works, says nothing about GPUs" if toy and
                   device.type != "cuda" else "toy size" if toy else "paper size"),
            toy=toy, machine=platform.platform(), device=str(device), device_name=name,
            torch=torch.__version__, threads=torch.get_num_threads(),
            autocast="bf16" if device.type == "cuda" else "none (fp32)",
            compile=args.compile, micro_batch=args.micro_batch,
            peak_flops=peak, peak_source=(None if peak is None else f"${PEAK_FLOPS_ENV}"
                                          if os.environ.get(PEAK_FLOPS_ENV) else
                                          "bf16 dense datasheet peak (training/device.py)"),
            size=size, models=rows,
            mfu_goal=dict(model="plain-160m", device="one H200", mfu=MFU_GOAL,
                          met=(plain >= MFU_GOAL if not toy and plain is not None
                               and "H200" in name else None)),
            packed_sweep=dict(skipped="not run yet"))
        atomic_write_json(args.out, result)  # the models' figures survive a failed sweep
        missing = sweep_missing()
        if args.no_sweep or missing:
            reason = "--no-sweep" if args.no_sweep else f"{missing} not installed here"
            result["packed_sweep"] = dict(skipped=reason)
            print(f"packed sweep skipped: {reason}")
        else:
            packed = result["packed_sweep"] = packed_sweep(size, source, device, Path(tmp))
            print(f"packed sweep (4 trials at gpu 0.25): {packed['tokens_per_s_sum']:,.0f} "
                  f"tok/s together, {packed['wall_seconds']:.0f} s, {packed['counts']}")
    print(f"wrote {atomic_write_json(args.out, result)}")


def sweep_missing() -> str | None:
    """The first package the packed sweep needs that is not installed (None: all are)."""
    import importlib.util

    for name in ("ray", "duckdb", "optuna"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


if __name__ == "__main__":
    main()
