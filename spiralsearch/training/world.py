"""The workers one trial trains on: one process, or K under DistributedDataParallel.

A K-worker run sees the data a one-worker run sees: every step's batch is the same
`batch_size` windows, worker r taking rows [r B/K, (r+1) B/K); DDP averages the gradients, so
each step is the one-worker step up to float rounding. Rank 0 evaluates, checkpoints and
reports; the others train and agree with it at each evaluation (a few collectives, one per
evaluation, never one per step). The process group is the caller's (Ray Train's
TorchTrainer, torchrun, or a test's gloo group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from spiralsearch.config import ConfigError

__all__ = ["World"]


@dataclass(frozen=True)
class World:
    """This process's rank among `size` workers (rank 0 of 1: no data parallelism)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The initialised default process group's rank and size (else one worker)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that evaluates, checkpoints and reports."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This worker's rows of every batch; the batch must split evenly."""
        if batch_size % self.size:
            raise ConfigError(f"train.batch_size: {batch_size} sequences do not split evenly "
                              f"over {self.size} data-parallel workers")
        n = batch_size // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train through: DistributedDataParallel over the group when there
        are several workers (every parameter is used each step, so no unused-parameter
        search), else the model itself."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of t over the workers (t itself for one)."""
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t, dist.ReduceOp.SUM)
            t /= self.size
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        """The smallest t over the workers (t itself for one)."""
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t, dist.ReduceOp.MIN)
        return t

    def from_main(self, value: float, device: torch.device) -> float:
        """Rank 0's `value`, on every worker (a host sync; at evaluations only)."""
        if self.size == 1:
            return value
        t = torch.tensor([value if self.is_main else math.nan], dtype=torch.float64,
                         device=device)
        dist.broadcast(t, src=0)
        return t.item()
