"""`make bench` (`python -m bench`): every benchmark in bench/, one after another, with its defaults.

Each runs as its own process (they start servers and use scratch databases), its table printed as it
finishes. `python -m bench notifications email_sender` runs only those. Exit status: the number of
benchmarks that failed (0 when all ran). Figures are read against the goals in each module's docstring
and in docs/; nothing here judges them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: In the order they are cheapest to read: single components first, whole paths last.
BENCHMARKS = ("templates", "sender_limiter", "emulator_capacity", "email_sender", "webhook_ingest",
              "snapshot", "sender_rate", "sender_capacity", "instant_priority", "sender_kill",
              "notifications", "events", "support_reply", "join_requests", "group_activity", "operator_scale",
              "autoscale")


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in argv or BENCHMARKS:
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=False)
        took = time.monotonic() - started
        print(f"=== {name}: exit {result.returncode} after {took:.0f} s ===", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
