"""Stopping the service processes a test or a bench started, as a kubelet stops a pod's containers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterable
from typing import Any


async def stop_processes(procs: Iterable[asyncio.subprocess.Process], grace: float = 20.0) -> None:
    """SIGTERM to every process still running, then wait up to `grace` seconds for each; SIGKILL the
    ones still running after that. Every process has exited when this returns."""
    procs = list(procs)
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def stop_popen(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """`stop_processes` for one `subprocess.Popen`: SIGTERM if it still runs, wait up to `grace`
    seconds, then SIGKILL. It has exited when this returns."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
