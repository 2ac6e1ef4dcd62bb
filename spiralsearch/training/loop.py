"""Train one candidate to a matched budget (docs/design.md §3).

    result = train(TrialConfig.from_dict({"model": {"spec": "1+2x{1/4,1}+1", "preset": "tiny"},
                                          "budget": {"kind": "flops", "value": 3e12}}))

AdamW (β 0.9/0.95), linear warmup then cosine decay to 10% of peak, gradient clipping, seeded
and deterministic; bf16 autocast on CUDA, fp32 on CPU. Metrics go to `callback(dict)` at each
evaluation (under Ray Tune the callback is `ray.tune.report`; this module knows nothing of
Ray). With an `out_dir`, checkpoints are written at every evaluation and at the end, and a
rerun resumes from the last one and continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spiralsearch.atomic import atomic_save, atomic_write_json
from spiralsearch.config import DataConfig, OptimConfig, TrialConfig
from spiralsearch.data.dataset import DataError, Dataset, load_dataset
from spiralsearch.model.counting import count_params
from spiralsearch.model.transformer import build_model
from spiralsearch.schema import MetricRow, Status, TrialSummary
from spiralsearch.training.budget import Plan, plan


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


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # Weight decay on matrices only, not on biases and norm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: Dataset, cfg: TrialConfig, device: torch.device,
             split: str = "val") -> float:
    """Mean loss (nats/token) over the fixed windows of a held-out split: val (what search
    and early stopping see) or test (what fits and reports use, scored once at the end)."""
    model.eval()
    losses = []
    for x, y in ds.eval_batches(split, cfg.train.batch_size, cfg.data.seq_len,
                                cfg.train.eval_batches):
        with _autocast(device):
            logits = model(x.to(device))
        losses.append(torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def compiled(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the loop calls: `torch.compile(model)` when mode is "on", or "auto" on
    CUDA; else the model itself. The compiled wrapper shares the model's parameters, so the
    optimiser, checkpoints and counts keep using `model`."""
    if mode == "on" or (mode == "auto" and device.type == "cuda"):
        return torch.compile(model)
    return model


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _checkpoint_path(out_dir: Path | None) -> Path | None:
    return None if out_dir is None else out_dir / "checkpoints" / "last.pt"


def _save_checkpoint(path: Path, model, opt, step: int, metrics: list, wall: float) -> None:
    """Model, optimiser, step (the data position: batches are a function of it), RNG and the
    metrics so far; written to a temp file and renamed, so a crash never leaves half a file."""
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step,
                 metrics=metrics, wall_seconds=wall, rng=torch.get_rng_state())
    atomic_save(state, path)


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
          callback: Callable[[dict], None] | None = None, progress: bool = False
          ) -> TrainResult:
    """Train one candidate until its budget is spent; returns summary and metrics.

    Metrics reported at every evaluation: step, tokens, train_flops, train_loss (mean since
    the last report), val_loss (nats/token), val_bpb (bits per byte), lr, tokens_per_s,
    wall_seconds. A NaN/inf loss stops the run with status 'diverged'. With out_dir, resumes
    from out_dir/checkpoints/last.pt when present and writes out_dir/summary.json.
    """
    if isinstance(config, dict):
        config = TrialConfig.from_dict(config)
    out = Path(out_dir) if out_dir is not None else None
    ds, p = prepare(config)
    oc = config.train
    if oc.threads > 0:
        torch.set_num_threads(oc.threads)
    device = resolve_device(oc.device)
    torch.manual_seed(oc.seed)
    model = build_model(p.model).to(device)
    opt = _optimizer(model, oc)
    forward = compiled(model, oc.compile, device)  # shares model's parameters
    evals = sorted({max(1, round(p.steps * (i + 1) / oc.evals)) for i in range(oc.evals)})
    step, metrics, wall_before = 0, [], 0.0
    ckpt = _checkpoint_path(out)
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, metrics, wall_before = state["step"], state["metrics"], state["wall_seconds"]
    bar = _ProgressBar(p) if progress else None
    status, error = Status.COMPLETE, None
    t_start, t_last, loss_sum, loss_n = time.perf_counter(), time.perf_counter(), 0.0, 0
    tokens_last = step * p.tokens_per_step
    model.train()
    while step < p.steps:
        lr = lr_at(step, p.steps, oc)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = ds.get_batch("train", oc.batch_size, config.data.seq_len, step, oc.seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss_value = loss.item()  # the step's one host sync, also the divergence check
        if not math.isfinite(loss_value):
            status, error = Status.DIVERGED, f"non-finite training loss at step {step}"
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
            opt.step()
            step += 1
            loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
        if status == Status.DIVERGED or step in evals:
            now = time.perf_counter()
            val = (evaluate(forward, ds, config, device) if status == Status.COMPLETE
                   else math.nan)
            row = dataclasses.asdict(MetricRow(
                step=step, tokens=step * p.tokens_per_step,
                train_flops=step * p.tokens_per_step * p.flops_per_token,
                train_loss=loss_sum / loss_n if loss_n else math.nan,
                val_loss=val, val_bpb=ds.bits_per_byte(val), lr=lr,
                tokens_per_s=(step * p.tokens_per_step - tokens_last) / (now - t_last),
                wall_seconds=wall_before + now - t_start))
            metrics.append(row)
            if ckpt is not None and status == Status.COMPLETE:
                _save_checkpoint(ckpt, model, opt, step, metrics, row["wall_seconds"])
            if callback is not None:
                callback(dict(row))
            # tokens/s counts training only: the next interval starts after this evaluation
            t_last, tokens_last, loss_sum, loss_n = (time.perf_counter(),
                                                     step * p.tokens_per_step, 0.0, 0)
            if status == Status.DIVERGED or not math.isfinite(val):
                status = Status.DIVERGED
                error = error or f"non-finite validation loss at step {step}"
                break
        if bar is not None:
            bar.update(step, loss_value)
    if bar is not None:
        bar.close()
    # the test split is scored once, on the final model, and never reported to the search
    test = (evaluate(forward, ds, config, device, "test") if status == Status.COMPLETE
            and ds.has_split("test", config.data.seq_len) else math.nan)
    result = TrainResult(_summary(config, p, ds, model, status, error, step, metrics, test),
                         metrics)
    if out is not None:
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

    def update(self, step: int, loss: float) -> None:
        self.bar.update(self.task, completed=step, loss=f"{loss:.3f}",
                        tokens=f"{step * self.p.tokens_per_step:,}")

    def close(self) -> None:
        self.bar.stop()
