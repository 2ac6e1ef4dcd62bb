"""What training does differently by device: picking it, autocast, the optimiser's kernel,
fencing a packed trial's memory, RNG state, and the peak FLOP/s that MFU is measured against.

Every switch is a function of the device, so a CPU test can check each one (with
torch.cuda mocked where the call itself is CUDA's).
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["PEAK_FLOPS", "PEAK_FLOPS_ENV", "autocast", "fence_memory", "fused_adamw", "mfu",
           "peak_flops", "release_memory", "resolve_device", "restore_rng", "rng_state"]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; on any other device a no-op (CPU trains in fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def fused_adamw(device: torch.device) -> bool:
    """Whether AdamW takes its fused kernel: on CUDA (one launch for every parameter). Kept
    off elsewhere, so CPU runs keep their step-by-step numerics."""
    return device.type == "cuda"


def fence_memory(device: torch.device, gpu_share: float | None) -> None:
    """Cap this process's share of its GPU's memory at `gpu_share` (the trial's fraction of
    the GPU, e.g. 0.25 for four packed trials), so one trial's allocator cannot starve the
    others; memory cached by an earlier trial in the same worker is released first. No-op
    off CUDA or for a whole GPU (share None or >= 1)."""
    if device.type != "cuda" or gpu_share is None:
        return
    torch.cuda.empty_cache()
    if 0 < gpu_share < 1:
        torch.cuda.set_per_process_memory_fraction(gpu_share, device)


def release_memory(device: torch.device) -> None:
    """Give the memory a finished trial's caching allocator still holds back to the GPU, so
    the next trial a reused worker runs starts from nothing."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rng_state() -> dict[str, object]:
    """The RNG state a checkpoint keeps: the CPU generator, and every CUDA generator's when
    CUDA is available (all ByteTensors on the CPU, as torch gives them)."""
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state) -> None:
    """Set the generators from `rng_state()` (or from a bare CPU state, as checkpoints before
    CUDA RNG was saved hold). The states are moved to the CPU first, where torch wants them,
    whatever device a checkpoint was mapped to."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# bf16 dense tensor-core peak FLOP/s per GPU, from the vendors' datasheets (their headline
# figures count 2:4 sparsity: these are half of those). First match in the device name wins.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # GH200 too
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("B200", 2250e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
PEAK_FLOPS_ENV = "SPIRALSEARCH_PEAK_FLOPS"  # FLOP/s per device; overrides the table


def peak_flops(device: torch.device) -> float | None:
    """The peak FLOP/s MFU is measured against, per device: $SPIRALSEARCH_PEAK_FLOPS when
    set, else the bf16 dense peak of a known CUDA GPU (PEAK_FLOPS); None otherwise (the CPU,
    an unknown GPU): MFU is then not computed rather than guessed."""
    env = os.environ.get(PEAK_FLOPS_ENV)
    if env:
        value = float(env)
        if not value > 0:
            raise ValueError(f"${PEAK_FLOPS_ENV}={env!r}: expected FLOP/s > 0")
        return value
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None, devices: int = 1
        ) -> float:
    """Model FLOPs utilisation: training FLOP/s achieved (tokens/s x the exact training
    FLOPs per token, 3 x forward) over the peak of the `devices` it ran on; NaN without a
    peak."""
    if peak is None or not math.isfinite(tokens_per_s):
        return math.nan
    return tokens_per_s * flops_per_token / (peak * devices)
