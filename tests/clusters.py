"""A real Ray cluster for tests: `ray start --head` on 127.0.0.1 and, for more nodes,
`ray start --address` again on this machine (each a raylet of its own: Ray schedules them as
separate nodes). Stopped by killing its processes only: `ray stop` would stop every Ray on
the machine, the test session's own included."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = os.environ | {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(*nodes: tuple[int, int]) -> Iterator[str]:
    """Start one Ray node per (CPUs, GPUs), the first the head; yields its address."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are capped
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        for i, (cpus, gpus) in enumerate(nodes):
            where = (["--head", f"--port={port}", "--include-dashboard=false",
                      f"--temp-dir={temp}"] if i == 0 else [f"--address={address}"])
            subprocess.run([str(BIN / "ray"), "start", *where, *common, f"--num-cpus={cpus}",
                            f"--num-gpus={gpus}"], check=True, env=ENV, capture_output=True,
                           timeout=120)
        yield address
    finally:  # every node of it names the head's temp dir
        kill_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def kill_cluster(temp: str) -> None:
    """Kill a `ray start` cluster: the processes that name its temp dir, and their
    children (agents that rename themselves `ray::...`), gathered before any dies."""
    import ray  # noqa: F401, I001 — first: it puts the psutil it vendors on the path
    import psutil

    doomed = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp in part for part in (p.info["cmdline"] or [])):
                doomed += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for p in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
