"""Train one candidate to a matched budget (docs/design.md §3).

    result = train(TrialConfig.from_dict({"model": {"spec": "1+2x{1/4,1}+1", "preset": "tiny"},
                                          "budget": {"kind": "flops", "value": 3e12}}))

AdamW (β 0.9/0.95), linear warmup then cosine decay to 10% of peak, gradient clipping, seeded
and deterministic; bf16 autocast on CUDA, fp32 on CPU. Metrics go to `callback(dict)` at each
evaluation (under Ray Tune the callback is `ray.tune.report`; this module knows nothing of
Ray). With an `out_dir`, checkpoints are written at every evaluation and at the end, and a
rerun resumes from the last one and continues exactly.

The step never waits for the device: the loss stays there, summed until the next evaluation,
which reads it (and whether any step's loss was not finite) in one host sync. On CUDA, AdamW
is fused, batches are pinned uint16 built a step ahead (data/batches.py), the loss never
holds a whole batch's logits (model/loss.py), and `train.micro_batch` accumulates gradients.
`train_data_parallel` runs the same loop on K workers under DDP (training/world.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spiralsearch.atomic import atomic_write_json
from spiralsearch.config import DataConfig, OptimConfig, TrialConfig
from spiralsearch.data.batches import Batches
from spiralsearch.data.dataset import DataError, Dataset, load_dataset
from spiralsearch.model.counting import count_params
from spiralsearch.model.transformer import build_model
from spiralsearch.schema import MetricRow, Status, TrialSummary
from spiralsearch.training.budget import Plan, plan
from spiralsearch.training.checkpoint import (
    Resumed,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from spiralsearch.training.device import (
    fence_memory,
    mfu,
    peak_flops,
    release_memory,
    resolve_device,
)
from spiralsearch.training.step import (
    LossSum,
    compiled,
    evaluate,
    micro_batch,
    optimizer,
    train_step,
)
from spiralsearch.training.world import World

__all__ = ["TrainResult", "compiled", "evaluate", "load_data", "load_split", "lr_at",
           "optimizer", "plan_trial", "prepare", "resolve_device", "train",
           "train_data_parallel", "train_step", "write_summary"]

_optimizer = optimizer  # the benchmarks' old name


@dataclass
class TrainResult:
    """`summary` (what lands in summary.json) and the per-evaluation `metrics`."""

    summary: dict[str, Any]
    metrics: list[dict[str, float]]

    @property
    def status(self) -> str:
        return self.summary["status"]


def lr_at(step: int, steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimiser step `step` (0-based) of `steps`: linear warmup, then
    cosine decay from lr to min_lr_frac * lr at the last step."""
    warmup = max(1, round(cfg.warmup_frac * steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    floor = cfg.min_lr_frac * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def load_split(data: DataConfig) -> Dataset:
    """The dataset a data section names, split into train, val and test by document (the
    one call of load_dataset: trials, the sweep driver's preparation and probes share it)."""
    return load_dataset(data.source, data.tokenizer, val_fraction=data.val_fraction,
                        test_fraction=data.test_fraction, seed=data.split_seed)


def load_data(config: TrialConfig) -> Dataset:
    """The trial's dataset: its source, tokenizer and split, exactly as training saw them
    (probes and reruns ask here, so they score the run's own held-out documents)."""
    d = config.data
    ds = load_split(d)
    if ds.vocab_size > config.model.vocab_size:
        raise DataError(f"{d.source}: {ds.vocab_size} token ids but the model's vocabulary "
                        f"is {config.model.vocab_size}; set model.vocab_size")
    return ds


def plan_trial(config: TrialConfig) -> Plan:
    """The trial's budget plan (steps, tokens, FLOPs); BudgetError if it cannot be met."""
    return plan(config.model, config.budget, batch_size=config.train.batch_size,
                seq_len=config.data.seq_len)


def prepare(config: TrialConfig) -> tuple[Dataset, Plan]:
    """Load the data and plan the budget: everything that can refuse a trial before it
    trains (bad source, budget below one step or more than 1% off)."""
    return load_data(config), plan_trial(config)


def train(config: TrialConfig | dict, *, out_dir: str | Path | None = None,
          callback: Callable[[dict], None] | None = None, progress: bool = False,
          gpu_share: float | None = None) -> TrainResult:
    """Train one candidate until its budget is spent; returns summary and metrics.

    Metrics reported at every evaluation: step, tokens, train_flops, train_loss (mean since
    the last report), val_loss (nats/token), val_bpb (bits per byte), lr, tokens_per_s,
    mfu (training FLOP/s over the device's peak: NaN where no peak is known, see
    training/device.py), wall_seconds. A NaN/inf loss stops the run at the next evaluation
    with status 'diverged', naming the first step it happened at. With out_dir, resumes
    from out_dir/checkpoints/last.pt when present and writes out_dir/summary.json.
    `gpu_share` (the trial's fraction of its GPU) caps this process's GPU memory at it.
    """
    if isinstance(config, dict):
        config = TrialConfig.from_dict(config)
    device = resolve_device(config.train.device)
    try:
        return _run(config, out_dir, callback, progress, gpu_share, device, World())
    finally:  # the locals are gone: a worker that trains another trial starts empty
        release_memory(device)


def train_data_parallel(config: TrialConfig | dict, *, out_dir: str | Path | None = None,
                        callback: Callable[[dict], None] | None = None,
                        gpu_share: float | None = None, device: torch.device | None = None
                        ) -> TrainResult | None:
    """`train` on every worker of the caller's initialised torch.distributed group (Ray
    Train's TorchTrainer, torchrun), under DDP: each step's batch is split over the workers,
    so the run sees the data, and takes the steps, of a one-worker run. Rank 0 evaluates,
    checkpoints (out_dir must be the same folder for every rank: it resumes from there) and
    calls `callback`, and returns the result; other ranks return None. `device` is this
    worker's (default: train.device; for CUDA, the current CUDA device, which the caller
    sets per worker)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("train_data_parallel needs an initialised torch.distributed "
                           "process group (init_process_group, torchrun or Ray Train)")
    if isinstance(config, dict):
        config = TrialConfig.from_dict(config)
    if device is None:
        device = resolve_device(config.train.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    world = World.current()
    try:
        result = _run(config, out_dir, callback, False, gpu_share, device, world)
    finally:
        release_memory(device)
    return result if world.is_main else None


def _run(config: TrialConfig, out_dir, callback, progress: bool, gpu_share: float | None,
         device: torch.device, world: World) -> TrainResult:
    """The training loop of `train`, on one worker of `world`."""
    out = Path(out_dir) if out_dir is not None else None
    ds, p = prepare(config)
    oc = config.train
    rows, micro = world.rows(oc.batch_size), micro_batch(oc, world)
    if oc.threads > 0:
        torch.set_num_threads(oc.threads)
    fence_memory(device, gpu_share)
    torch.manual_seed(oc.seed)
    model = build_model(p.model).to(device)
    opt = optimizer(model, oc, device)
    ckpt = checkpoint_path(out)
    run = load_checkpoint(ckpt, model, opt) if ckpt is not None and ckpt.exists() else Resumed()
    step, metrics = run.step, run.metrics
    wrapped = world.wrap(model, device)  # DDP over several workers; shares the parameters
    forward = compiled(wrapped, oc.compile, device)
    # rank 0 evaluates alone, so never through DDP (whose forward may talk to the others)
    evaluator = forward if wrapped is model else compiled(model, oc.compile, device)
    no_sync = getattr(wrapped, "no_sync", contextlib.nullcontext)
    evals = sorted({max(1, round(p.steps * (i + 1) / oc.evals)) for i in range(oc.evals)})
    peak = peak_flops(device)
    bar = _ProgressBar(p) if progress and world.is_main else None
    status, error, losses = Status.COMPLETE, None, LossSum(device)
    t_start = t_last = time.perf_counter()
    tokens_last = step * p.tokens_per_step
    model.train()
    with Batches(ds, batch_size=oc.batch_size, seq_len=config.data.seq_len, seed=oc.seed,
                 device=device, first=step, rows=rows) as batches:
        while step < p.steps:
            lr = lr_at(step, p.steps, oc)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches.get(step)
            losses.add(train_step(forward, model, opt, x, y, micro_batch=micro,
                                  loss_chunk=oc.loss_chunk, grad_clip=oc.grad_clip,
                                  no_sync=no_sync), step)
            step += 1
            if bar is not None:
                bar.update(step)
            if step not in evals:
                continue
            train_loss, bad = losses.read(world)  # the interval's one wait for the device
            now = time.perf_counter()
            if bad is not None:
                status, error = Status.DIVERGED, f"non-finite training loss at step {bad}"
                val = math.nan
            else:
                val = world.from_main(evaluate(evaluator, ds, config, device)
                                      if world.is_main else math.nan, device)
                if not math.isfinite(val):
                    status = Status.DIVERGED
                    error = f"non-finite validation loss at step {step}"
            tokens_per_s = (step * p.tokens_per_step - tokens_last) / (now - t_last)
            row = dataclasses.asdict(MetricRow(
                step=step, tokens=step * p.tokens_per_step,
                train_flops=step * p.tokens_per_step * p.flops_per_token,
                train_loss=train_loss, val_loss=val, val_bpb=ds.bits_per_byte(val), lr=lr,
                tokens_per_s=tokens_per_s, wall_seconds=run.wall_seconds + now - t_start,
                mfu=mfu(tokens_per_s, p.flops_per_token, peak, world.size)))
            if world.is_main:
                metrics.append(row)
                if ckpt is not None and status == Status.COMPLETE:
                    save_checkpoint(ckpt, model, opt, step, metrics, row["wall_seconds"])
                if callback is not None:
                    callback(dict(row))
                if bar is not None:
                    bar.update(step, train_loss)
            # tokens/s counts training only: the next interval starts after this evaluation
            t_last, tokens_last = time.perf_counter(), step * p.tokens_per_step
            losses.reset()
            if status == Status.DIVERGED:
                break
    if bar is not None:
        bar.close()
    # the test split is scored once, on the final model, and never reported to the search
    test = (evaluate(evaluator, ds, config, device, "test") if status == Status.COMPLETE
            and world.is_main and ds.has_split("test", config.data.seq_len) else math.nan)
    result = TrainResult(_summary(config, p, ds, model, status, error, step, metrics, test),
                         metrics)
    if out is not None and world.is_main:
        write_summary(out, result.summary)
    return result


def _summary(config: TrialConfig, p: Plan, ds: Dataset, model, status: str, error, step: int,
             metrics: list[dict], test_loss: float) -> dict[str, Any]:
    """The TrialSummary of a run (plus its `config`), as summary.json holds it."""
    params = count_params(model)
    vals = [m["val_loss"] for m in metrics if math.isfinite(m["val_loss"])]
    last = metrics[-1] if metrics else {}
    tokens = step * p.tokens_per_step
    summary = TrialSummary(
        status=str(status), error=error, spec=str(p.model.spec), family=p.model.spec.family,
        budget_kind=p.kind, budget_target=p.target, budget_achieved=p.achieved_at(step),
        steps=step, tokens=tokens, train_flops=tokens * p.flops_per_token,
        flops_per_token=p.flops_per_token, final_val_loss=last.get("val_loss", math.nan),
        final_val_bpb=last.get("val_bpb", math.nan), final_test_loss=test_loss,
        final_test_bpb=ds.bits_per_byte(test_loss, "test"),
        best_val_loss=min(vals) if vals else math.nan, params_total=params["total"],
        params_non_embedding=params["non_embedding"], params_unrolled=params["unrolled"],
        wall_seconds=last.get("wall_seconds", 0.0), unigram_entropy=ds.unigram_entropy,
        optimal_loss=ds.optimal_loss)
    return dataclasses.asdict(summary) | dict(config=_trained(config, p).to_dict())


def _trained(config: TrialConfig, p: Plan) -> TrialConfig:
    """The config of the model that trained: a params budget solves its width."""
    return config.replace(model=p.model)


def write_summary(out_dir: Path, summary: dict) -> Path:
    """Write summary.json (NaN as null, so any JSON reader takes it)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in summary.items()}
    return atomic_write_json(out_dir / "summary.json", clean)


class _ProgressBar:
    """A rich progress bar over tokens with the running loss and an ETA."""

    def __init__(self, p: Plan):
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = p
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[tokens]} tokens"),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn())
        self.task = self.bar.add_task(str(p.model.spec), total=p.steps, tokens="0", loss="-")
        self.bar.start()

    def update(self, step: int, loss: float | None = None) -> None:
        """Steps done; `loss`, the training loss at an evaluation (the bar never waits for
        the device to show one)."""
        extra = {} if loss is None else dict(loss=f"{loss:.3f}")
        self.bar.update(self.task, completed=step, tokens=f"{step * self.p.tokens_per_step:,}",
                        **extra)

    def close(self) -> None:
        self.bar.stop()
