"""Training batches on their way to the device: built ahead, pinned, copied without waiting.

    with Batches(ds, batch_size=32, seq_len=2048, seed=0, device=cuda, first=step) as batches:
        x, y = batches.get(step)       # int64 on the device

Each batch is the compact token windows of `Dataset.get_windows` (uint16 for vocabularies
up to 65,536). On CUDA the next step's batch is built on a background thread while the
device works on this one, in pinned host memory, so the copy is asynchronous
(`non_blocking`) and overlaps compute; the device widens it to int64. Batches are a pure
function of the step, so building ahead changes nothing about which data a step sees.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from spiralsearch.data.dataset import Dataset, as_batch

__all__ = ["Batches"]


class Batches:
    """The training batches of steps first, first + 1, ... (ask in that order).

    `rows` takes each worker's share of every batch (data parallelism). `pin` (default: on
    CUDA) pins the windows; `background` (default: with `pin`) builds the next step's batch
    on a thread while the caller trains on this one."""

    def __init__(self, ds: Dataset, *, batch_size: int, seq_len: int, seed: int,
                 device: torch.device, first: int = 0, rows: slice = slice(None),
                 pin: bool | None = None, background: bool | None = None):
        self.ds, self.batch_size, self.seq_len, self.seed = ds, batch_size, seq_len, seed
        self.device, self.rows = device, rows
        self.pin = device.type == "cuda" if pin is None else pin
        self.background = self.pin if background is None else background
        self._pool = ThreadPoolExecutor(1, "batches") if self.background else None
        self._next: tuple[int, Future] | None = None
        self._ahead(first)

    def _build(self, step: int) -> torch.Tensor:
        w = self.ds.get_windows("train", self.batch_size, self.seq_len, step, self.seed,
                                self.rows)
        return w.pin_memory() if self.pin else w

    def _ahead(self, step: int) -> None:
        if self._pool is not None:
            self._next = (step, self._pool.submit(self._build, step))

    def windows(self, step: int) -> torch.Tensor:
        """The host-side windows (B, seq_len + 1) of `step`, compact and (maybe) pinned; the
        build of step + 1 starts before this returns."""
        if self._next is not None and self._next[0] == step:
            w = self._next[1].result()
        else:  # first call, out of order, or no thread: build it here
            w = self._build(step)
        self._ahead(step + 1)
        return w

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (int64, (B, seq_len)) of `step` on the device."""
        return as_batch(self.windows(step).to(self.device, non_blocking=self.pin))

    def close(self) -> None:
        """Stop the background thread (waits for a batch being built)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._next = None, None

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
