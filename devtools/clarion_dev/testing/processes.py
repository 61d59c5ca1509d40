"""Stopping the service processes a test or a bench started, as a kubelet stops a pod's containers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable


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
