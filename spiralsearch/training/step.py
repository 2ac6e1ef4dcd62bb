"""What runs on the device each step and at each evaluation: the optimiser, one training
step (micro-batches, clip, AdamW) and the held-out loss. Nothing here waits for the device
except `evaluate`'s one read, and `LossSum.read`, once per evaluation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from spiralsearch.config import ConfigError, OptimConfig, TrialConfig
from spiralsearch.data.dataset import Dataset
from spiralsearch.training.device import autocast, fused_adamw
from spiralsearch.training.world import World

__all__ = ["LossSum", "compiled", "evaluate", "micro_batch", "optimizer", "train_step"]


def optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device | None = None
              ) -> torch.optim.AdamW:
    """AdamW over the model's parameters, with the fused kernel when `device` is CUDA
    (training/device.py; None: the parameters' own device)."""
    if device is None:
        device = next(model.parameters()).device
    # Weight decay on matrices only, not on biases and norm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=True if fused_adamw(device) else None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: Dataset, cfg: TrialConfig, device: torch.device,
             split: str = "val") -> float:
    """Mean loss (nats/token) over the fixed windows of a held-out split: val (what search
    and early stopping see) or test (what fits and reports use, scored once at the end).
    The batch losses are summed on the device and read once."""
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in ds.eval_batches(split, cfg.train.batch_size, cfg.data.seq_len,
                                cfg.train.eval_batches):
        with autocast(device):
            loss = model(x.to(device), y.to(device), cfg.train.loss_chunk)
        total += loss.double()
        n += 1
    model.train()
    return total.item() / n


def compiled(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the loop calls: `torch.compile(model)` when mode is "on", or "auto" on
    CUDA; else the model itself. The compiled wrapper shares the model's parameters, so the
    optimiser, checkpoints and counts keep using `model`."""
    if mode == "on" or (mode == "auto" and device.type == "cuda"):
        return torch.compile(model)
    return model


def train_step(forward: Callable, model: torch.nn.Module, opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, *, micro_batch: int, loss_chunk: int,
               grad_clip: float, no_sync: Callable = contextlib.nullcontext) -> torch.Tensor:
    """One optimiser step on inputs x and targets y (B, L), on the model's device: forward
    and backward over micro-batches of `micro_batch` sequences, each loss weighted by its
    share of the batch, so the gradients sum to the whole batch's; then clip and step.
    `no_sync` (DDP's) skips the gradient all-reduce of all but the last micro-batch.
    Returns the batch's mean loss (nats/token), a 0-dim fp64 tensor on the device: nothing
    here waits for the device."""
    opt.zero_grad(set_to_none=True)
    parts = list(zip(x.split(micro_batch), y.split(micro_batch), strict=True))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i, (xm, ym) in enumerate(parts):
        share = xm.shape[0] / x.shape[0]
        with no_sync() if i < len(parts) - 1 else contextlib.nullcontext():
            with autocast(x.device):
                loss = forward(xm, ym, loss_chunk)
            (loss if share == 1 else loss * share).backward()
        total += loss.detach() * share
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return total


class LossSum:
    """Training losses since the last evaluation, summed on the device (in fp64, as Python
    floats summed them), and the first step whose loss was not finite: read in one sync."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=self.device)
        self.n = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.double()
        self.sum += loss
        self.first_bad = torch.minimum(self.first_bad,
                                       torch.where(torch.isfinite(loss), math.inf, float(step)))
        self.n += 1

    def read(self, world: World) -> tuple[float, int | None]:
        """(mean loss over the workers, first non-finite step on any worker or None)."""
        mean, bad = torch.stack([world.mean(self.sum), world.min(self.first_bad)]).tolist()
        return (mean / self.n if self.n else math.nan), (None if math.isinf(bad) else int(bad))


def micro_batch(cfg: OptimConfig, world: World) -> int:
    """Sequences per forward pass on each worker: train.micro_batch, at most the worker's
    share of the batch, which it must divide."""
    rows = cfg.batch_size // world.size
    micro = min(cfg.micro_batch or rows, rows)
    if rows % micro:
        raise ConfigError(f"train.micro_batch: {micro} does not divide the {rows} sequences "
                          f"each of {world.size} data-parallel workers takes")
    return micro
