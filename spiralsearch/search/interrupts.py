"""Ctrl-C (SIGINT) and SIGTERM during a sweep (docs/design.md §4).

The first signal asks the sweep to stop: inside a Ray Tune run a `Stopper` ends it at its
next step (running trials are stopped and recorded `interrupted` with their last metrics,
see recorder.py); anywhere else the signal raises `SweepInterrupted` at once. A second
signal raises at once wherever it lands. Either way the driver stamps the sweep
`interrupted`, shuts Ray down and the CLI exits 128 + the signal's number (130, 143).
Ray Tune's own SIGINT handler (which prints a `Tuner.restore` hint that does not apply:
our re-run resumes) is switched off.
"""

from __future__ import annotations

import os
import signal
import threading

from ray.tune import Stopper

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal; `signum` says which, `exit_code` is 128 + it."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Interrupts:
    """While entered (main thread only), SIGINT and SIGTERM set `signum` instead of killing
    the driver; `tuning` says whether a Tuner is running (then the Stopper ends it)."""

    def __init__(self):
        self.signum: int | None = None
        self.tuning = False
        self._saved: dict = {}

    def __getstate__(self) -> dict:  # Ray pickles the run config; handlers stay here
        return self.__dict__ | {"_saved": {}}

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        self._saved = {}

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if not first or not self.tuning:
            raise SweepInterrupted(self.signum)

    def check(self) -> None:
        """Raise SweepInterrupted if a signal came (between the sweep's phases)."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)


class OnSignal(Stopper):
    """A Ray Tune Stopper that ends the whole run once a signal came."""

    def __init__(self, interrupts: Interrupts):
        self.interrupts = interrupts

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.interrupts.signum is not None
