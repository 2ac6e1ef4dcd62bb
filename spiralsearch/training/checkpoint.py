"""A trial's checkpoint: model, optimiser, step, RNG and the metrics so far, in one file
written atomically, so a rerun resumes exactly where the last evaluation left off.

Loading maps every tensor to the CPU first and lets the model and optimiser move their own
state to the device: the RNG states must stay on the CPU (torch.set_rng_state takes only a
CPU ByteTensor), and AdamW's `step` counts stay where torch keeps them (on the CPU, unless a
fused or capturable AdamW wants them on the device), so no step reads one back per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from spiralsearch.atomic import atomic_save
from spiralsearch.training.device import restore_rng, rng_state

__all__ = ["Resumed", "checkpoint_path", "load_checkpoint", "save_checkpoint"]


def checkpoint_path(out_dir: Path | None) -> Path | None:
    """Where a trial's (last) checkpoint lives: OUT/checkpoints/last.pt."""
    return None if out_dir is None else out_dir / "checkpoints" / "last.pt"


@dataclass
class Resumed:
    """Where a resumed run stands: optimiser steps done (the data position: batches are a
    function of it), the metric rows so far and the training seconds before this run."""

    step: int = 0
    metrics: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    step: int, metrics: list[dict], wall_seconds: float) -> None:
    """Model, optimiser, step, RNG (CPU, and CUDA when available) and metrics; written to a
    temp file and renamed, so a crash never leaves half a file."""
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step,
                 metrics=metrics, wall_seconds=wall_seconds, rng=rng_state())
    atomic_save(state, path)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
                    ) -> Resumed:
    """Load `path` into model and optimiser (on whatever device they are) and restore the
    RNG; returns where the run stands."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])  # copies into the parameters, on their device
    opt.load_state_dict(state["optimizer"])  # moves moments to each parameter's device
    restore_rng(state["rng"])
    return Resumed(state["step"], state["metrics"], state["wall_seconds"])
