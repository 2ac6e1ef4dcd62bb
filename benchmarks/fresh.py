"""One benchmark row per fresh Python process (bench_count, bench_bounds), so the row's peak
RSS is its own, torch and fvcore imports included; the process's one-time start-up is
measured apart from the row.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time


def in_fresh_process(target, *args) -> dict:
    """Run `target(*args, queue)` in a new spawned process; returns the row it put."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    row = queue.get()
    process.join()
    return row


def warm_describe():
    """`describe` with the process's one-time costs paid (imports, and the first meta-device
    op, which makes torch import torch._dynamo: ~1-2 s on torch 2.13); returns it and
    those seconds."""
    t0 = time.perf_counter()
    from spiralsearch.model.counting import describe

    describe("1", seq_len=8)
    return describe, time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
