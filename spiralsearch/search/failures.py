"""Why a trial failed, told truly (docs/design.md §4).

A trial can fail in its own process or lose the process:

- `raised`: training raised an exception; recorded by the worker itself, not retried (the
  same config would raise again; `sweep --retry-failed` runs it again on purpose).
- `oom`: out of memory. Inside the worker: a MemoryError or torch's allocator failing (the
  per-trial limit resources.memory_gb, or the machine); the worker re-raises it as
  `TrialOutOfMemory` so Ray retries it. Outside: Ray's memory monitor killed the worker
  (Ray says so in its error). Nothing else is called out of memory.
- `killed`: the worker process died without an error of its own (a signal such as SIGKILL,
  or a crash). The kernel's OOM killer also sends SIGKILL; from here that is not told apart
  from any other SIGKILL, so the reason says what is known and guesses nothing.
- `node_lost`: the Ray node running the trial died or became unreachable.
- `ray`: any other Ray error around the trial.

Ray retries the last four up to search.max_failures times; the trial resumes from its
last checkpoint (the trainer's own `checkpoints/last.pt`).
"""

from __future__ import annotations

import contextlib
import re
import resource
from collections.abc import Iterator

GIB = 2**30


class TrialOutOfMemory(RuntimeError):
    """Raised by a trial's worker when training ran out of memory, so Ray retries it."""


def is_oom(e: BaseException) -> bool:
    """Whether an exception raised in training is an out-of-memory error (MemoryError,
    torch.OutOfMemoryError, or torch's CPU allocator failing)."""
    if isinstance(e, MemoryError):
        return True
    try:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                            or "not enough memory" in text)


def data_bytes() -> int | None:
    """This process's data memory now (VmData: heap and private writable mappings, thread
    stacks included), bytes; None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def memory_limit(gib: float | None) -> Iterator[None]:
    """Let this process allocate at most `gib` GiB more data memory than it holds on entry
    (RLIMIT_DATA over its VmData: heap and private mappings, which is where CPU tensors
    live; a Ray worker holds ~1.5 GB of it before the trial, mostly reserved thread
    stacks). An allocation past it raises MemoryError (or torch's allocator error) instead
    of waking the kernel's OOM killer. None, or no /proc: no limit. The soft limit is
    restored on exit (a Ray worker runs many trials)."""
    now = data_bytes() if gib is not None else None
    if now is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    want = now + int(gib * GIB)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# Ray's own wording, as of Ray 2.5x-2.60: its memory monitor's kill, and a dead node
_RAY_OOM = re.compile(r"killed due to (the node running low on memory|memory pressure)|"
                      r"OutOfMemoryError", re.I)
_NODE = re.compile(r"NodeDiedError|node .{0,80}(died|dead|is not alive)|raylet .{0,40}died",
                   re.I)
_DEATH = re.compile(r"ActorDiedError|RayActorError|WorkerCrashedError|actor died|"
                    r"worker (process )?(has )?died|unexpectedly exit", re.I)
# Ray appends a list of guesses (OOM killer, ray stop, SIGSEGV) to a dead worker's error;
# they are guesses, so the stored reason stops before them
_GUESSES = re.compile(r"\s*(There are some potential root causes|Some common causes).*", re.I)


def classify(error: BaseException | None, text: str | None) -> tuple[str, str]:
    """(failure, reason) of a trial that Ray reports errored: from the exception Ray
    pickled for it (a RayTaskError around the worker's own, or a RayActorError) and/or
    Ray's error text."""
    cause = _cause(error)
    text = (text or "") + ("\n" + str(error) if error is not None else "")
    text = _GUESSES.sub("", text)  # Ray's guesses name the OOM killer: classify on facts
    if isinstance(cause, TrialOutOfMemory) or "TrialOutOfMemory" in text:
        return "oom", f"out of memory in training: {_line(cause or text, 'TrialOutOfMemory')}"
    if _RAY_OOM.search(text):
        return "oom", ("out of memory: Ray's memory monitor killed the trial's worker (the "
                       "node ran low on memory)")
    if _NODE.search(text):
        return "node_lost", f"the trial's Ray node died or became unreachable: {_line(text)}"
    if _DEATH.search(text):
        return "killed", ("the trial's worker process died without an error of its own "
                          "(killed by a signal such as SIGKILL, or crashed); Ray: "
                          f"{_detail(text)}")
    return "ray", f"Ray error: {_line(text)}" if text.strip() else "Ray error (no message)"


def _cause(error: BaseException | None) -> BaseException | None:
    """The worker's own exception inside a RayTaskError, else the error itself."""
    if error is None:
        return None
    try:
        return error.as_instanceof_cause()  # RayTaskError
    except AttributeError:
        return error


def _line(what, drop: str = "") -> str:
    """The last non-empty line of an error text, without a type prefix `drop`."""
    lines = [s.strip() for s in str(what).splitlines() if s.strip()]
    line = lines[-1] if lines else ""
    return line.split(f"{drop}: ", 1)[-1] if drop else line


def _detail(text: str) -> str:
    """Ray's exit detail of a dead worker, without its list of guesses."""
    m = re.search(r"Worker exit type: .*", text)
    return (m.group(0) if m else _line(text)).strip()
