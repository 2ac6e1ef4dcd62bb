"""Train one candidate to a matched budget (DESIGN.md §3).

    result = train(TrainConfig.from_dict({"model": {"spec": "1+2x{1/4,1}+1", "preset": "tiny"},
                                          "budget": {"kind": "flops", "value": 3e12}}))

AdamW (β 0.9/0.95), linear warmup then cosine decay to 10% of peak, gradient clipping, seeded
and deterministic; bf16 autocast on CUDA, fp32 on CPU. Metrics go to `callback(dict)` at each
evaluation (under Ray Tune the callback is `ray.tune.report`; this module knows nothing of
Ray). With an `out_dir`, checkpoints are written at every evaluation and at the end, and a
rerun resumes from the last one and continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spiralsearch.budget import Budget, Plan, plan
from spiralsearch.data import Dataset, load_dataset
from spiralsearch.flops import count_params
from spiralsearch.model import ModelConfig, build_model


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from (see spiralsearch.data) and the training context (tokens)."""

    source: str = "corpus:sotu"
    tokenizer: str = "bytes"
    seq_len: int = 256
    val_fraction: float = 0.1
    split_seed: int = 0  # picks the validation documents; apart from the training seed, so
    # trials with different seeds are scored on the same validation data


@dataclass(frozen=True)
class OptimConfig:
    """The `train:` section: optimiser, schedule, evaluation and run settings."""

    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_frac: float = 0.05  # share of steps in linear warmup
    min_lr_frac: float = 0.1  # cosine decays to this share of lr
    grad_clip: float = 1.0
    evals: int = 10  # evaluations (and checkpoints) over the run, the last at the end
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 leaves torch's default


@dataclass(frozen=True)
class TrainConfig:
    """A whole trial: `model` (spec, preset and model options), data, train and budget."""

    model: dict = field(default_factory=lambda: {"spec": "4", "preset": "tiny"})
    data: DataConfig = DataConfig()
    train: OptimConfig = OptimConfig()
    budget: Budget = Budget()

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From nested dicts (YAML / JSON); unknown keys raise ValueError naming them."""
        unknown = set(d) - {"model", "data", "train", "budget"}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        return cls(model=dict(d.get("model", {"spec": "4", "preset": "tiny"})),
                   data=_section(DataConfig, d.get("data", {}), "data"),
                   train=_section(OptimConfig, d.get("train", {}), "train"),
                   budget=_section(Budget, d.get("budget", {}), "budget"))

    def to_dict(self) -> dict:
        return dict(model=dict(self.model), data=dataclasses.asdict(self.data),
                    train=dataclasses.asdict(self.train), budget=dataclasses.asdict(self.budget))

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The ModelConfig; the data's vocabulary wins over the preset's."""
        opts = dict(self.model)
        spec, preset = opts.pop("spec", "4"), opts.pop("preset", None)
        opts.setdefault("max_seq_len", self.data.seq_len)
        if vocab_size is not None:
            opts["vocab_size"] = vocab_size
        return ModelConfig.from_spec(spec, preset, **opts)


def _section(cls, values: dict, name: str):
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown {name} option(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return cls(**values)


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
def evaluate(model: torch.nn.Module, ds: Dataset, cfg: TrainConfig, device: torch.device
             ) -> float:
    """Mean validation loss (nats/token) over the fixed validation slice."""
    model.eval()
    losses = []
    for x, y in ds.val_batches(cfg.train.batch_size, cfg.data.seq_len, cfg.train.eval_batches):
        with _autocast(device):
            logits = model(x.to(device))
        losses.append(torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _checkpoint_path(out_dir: Path | None) -> Path | None:
    return None if out_dir is None else out_dir / "checkpoints" / "last.pt"


def _save_checkpoint(path: Path, model, opt, step: int, metrics: list, wall: float) -> None:
    """Model, optimiser, step (the data position: batches are a function of it), RNG and the
    metrics so far; written to a temp file and renamed, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step,
                 metrics=metrics, wall_seconds=wall, rng=torch.get_rng_state())
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def prepare(config: TrainConfig) -> tuple[Dataset, Plan]:
    """Load the data and plan the budget: everything that can refuse a trial before it
    trains (bad source, budget below one step or more than 1% off)."""
    ds = load_dataset(config.data.source, config.data.tokenizer,
                      val_fraction=config.data.val_fraction, seed=config.data.split_seed)
    cfg = config.model_config(ds.vocab_size)
    return ds, plan(cfg, config.budget, batch_size=config.train.batch_size,
                    seq_len=config.data.seq_len)


def train(config: TrainConfig | dict, *, out_dir: str | Path | None = None,
          callback: Callable[[dict], None] | None = None, progress: bool = False
          ) -> TrainResult:
    """Train one candidate until its budget is spent; returns summary and metrics.

    Metrics reported at every evaluation: step, tokens, train_flops, train_loss (mean since
    the last report), val_loss (nats/token), val_bpb (bits per byte), lr, tokens_per_s,
    wall_seconds. A NaN/inf loss stops the run with status 'diverged'. With out_dir, resumes
    from out_dir/checkpoints/last.pt when present and writes out_dir/summary.json.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    out = Path(out_dir) if out_dir is not None else None
    ds, p = prepare(config)
    oc = config.train
    if oc.threads > 0:
        torch.set_num_threads(oc.threads)
    device = resolve_device(oc.device)
    torch.manual_seed(oc.seed)
    model = build_model(p.model).to(device)
    opt = _optimizer(model, oc)
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
    status, error = "complete", None
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
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss_value = loss.item()  # the step's one host sync, also the divergence check
        if not math.isfinite(loss_value):
            status, error = "diverged", f"non-finite training loss at step {step}"
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
            opt.step()
            step += 1
            loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
        if status == "diverged" or step in evals:
            now = time.perf_counter()
            val = evaluate(model, ds, config, device) if status == "complete" else math.nan
            row = dict(step=step, tokens=step * p.tokens_per_step,
                       train_flops=step * p.tokens_per_step * p.flops_per_token,
                       train_loss=loss_sum / loss_n if loss_n else math.nan,
                       val_loss=val, val_bpb=ds.bits_per_byte(val), lr=lr,
                       tokens_per_s=(step * p.tokens_per_step - tokens_last) / (now - t_last),
                       wall_seconds=wall_before + now - t_start)
            metrics.append(row)
            if ckpt is not None and status == "complete":
                _save_checkpoint(ckpt, model, opt, step, metrics, row["wall_seconds"])
            if callback is not None:
                callback(dict(row))
            # tokens/s counts training only: the next interval starts after this evaluation
            t_last, tokens_last, loss_sum, loss_n = (time.perf_counter(),
                                                     step * p.tokens_per_step, 0.0, 0)
            if status == "diverged" or not math.isfinite(val):
                status = "diverged"
                error = error or f"non-finite validation loss at step {step}"
                break
        if bar is not None:
            bar.update(step, loss_value)
    if bar is not None:
        bar.close()
    result = TrainResult(_summary(config, p, ds, model, status, error, step, metrics), metrics)
    if out is not None:
        write_summary(out, result.summary)
    return result


def _summary(config: TrainConfig, p: Plan, ds: Dataset, model, status: str, error, step: int,
             metrics: list[dict]) -> dict[str, Any]:
    params = count_params(model)
    vals = [m["val_loss"] for m in metrics if math.isfinite(m["val_loss"])]
    last = metrics[-1] if metrics else {}
    tokens = step * p.tokens_per_step
    achieved = {"flops": tokens * p.flops_per_token, "tokens": tokens,
                "params": params["non_embedding"]}[p.kind]
    return dict(
        status=status, error=error, spec=str(p.model.spec), family=p.model.spec.family,
        budget_kind=p.kind, budget_target=p.target, budget_achieved=float(achieved),
        steps=step, tokens=tokens, train_flops=tokens * p.flops_per_token,
        flops_per_token=p.flops_per_token, final_val_loss=last.get("val_loss", math.nan),
        final_val_bpb=last.get("val_bpb", math.nan),
        best_val_loss=min(vals) if vals else math.nan, params_total=params["total"],
        params_non_embedding=params["non_embedding"], params_unrolled=params["unrolled"],
        wall_seconds=last.get("wall_seconds", 0.0), unigram_entropy=ds.unigram_entropy,
        optimal_loss=ds.optimal_loss, config=config.to_dict() | {"model": p.model.to_dict()})


def write_summary(out_dir: Path, summary: dict) -> Path:
    """Write summary.json (NaN as null, so any JSON reader takes it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in summary.items()}
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


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
