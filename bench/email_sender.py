"""Email sending capacity of one process: a `MailSender` with pools of 4 and 8 connections, beside a
bare aiosmtplib loop over one STARTTLS connection, both to the SMTP sink on loopback.

The sink runs as its own process (`clarion dev smtp --starttls --cert … --key …`, a certificate made
for the run, logging off) and accepts everything. Each run sends N messages to distinct recipients:

- bare loop: one `aiosmtplib.SMTP` connection (STARTTLS), `send_message` of a stdlib `EmailMessage`
  (From, To, Subject, a short text body), one message after the other;
- MailSender: `OutgoingEmail`s with the same text and an `X-Clarion-Notification-Id` header, sent by
  `--window` tasks through one sender (STARTTLS, its connections opened lazily, the default pacer at
  the channel's ratePerSecond, 1000 here: the model's maximum, so that pacing is in the path
  without being the limit below 1000/s).

Rates are N over the run's wall time in this process, connecting included; "per CPU-s" divides N by
this process's CPU time for the run (what one free core could send); "sink CPU" is the sink
process's CPU per message. The bare loop and the pools run in turn in the same round, so that each
row sees the same machine. Goal (docs/email.md): >= 300 emails/s per process.

    .venv/bin/python bench/email_sender.py [--messages 3000] [--window 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
from clarion.logging import configure_logging
from clarion.mail import MailSender, OutgoingEmail
from clarion.models import EmailSettings
from clarion_dev.net import free_port
from clarion_dev.smtp_sink import self_signed_cert

from bench.sender_common import table

FROM = "Clarion <noreply@example.org>"
TEXT = "Your order #42 has shipped. Track it at https://example.org/orders/42.\n"
HOSTNAME = "bench.clarion.test"  # EHLO name; skips a getfqdn() per connection


@asynccontextmanager
async def sink_process(cert: Path, key: Path) -> AsyncIterator[tuple[int, int]]:
    """`clarion dev smtp` with STARTTLS on a free port; yields (port, pid)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clarion_dev.cli import main; sys.exit(main(sys.argv[1:]))",
        "dev", "smtp", "--port", str(port), "--starttls", "--cert", str(cert), "--key", str(key),
        "--log-level", "WARNING", stdin=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.returncode is not None:
                    raise RuntimeError("the SMTP sink did not start") from None
                await asyncio.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare_loop(port: int, cert: Path, messages: int) -> None:
    """aiosmtplib alone: one STARTTLS connection, one message after the other."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, cert_bundle=str(cert),
                             local_hostname=HOSTNAME)
    await client.connect()
    for i in range(messages):
        message = EmailMessage()
        message["From"] = FROM
        message["To"] = f"reader{i}@example.org"
        message["Subject"] = "Your order has shipped"
        message.set_content(TEXT)
        await client.send_message(message)
    await client.quit()


async def through_sender(port: int, cert: Path, messages: int, pool_size: int, window: int) -> None:
    """One MailSender, `window` tasks sending through it."""
    settings = EmailSettings.model_validate({"host": "127.0.0.1", "port": port, "tls": "starttls",
                                             "from": FROM, "ratePerSecond": 1000})
    recipients = iter(range(messages))
    async with MailSender(settings, channel="bench.email", pool_size=pool_size, ca_file=str(cert),
                          local_hostname=HOSTNAME) as sender:

        async def worker() -> None:
            for i in recipients:
                await sender.send(OutgoingEmail(to=f"reader{i}@example.org", subject="Your order has shipped",
                                                text=TEXT, headers={"X-Clarion-Notification-Id": f"n-{i}"}))

        await asyncio.gather(*(worker() for _ in range(window)))


async def measure(run: Callable[[], Awaitable[None]], sink_pid: int,
                  messages: int) -> tuple[float, float, float]:
    """(emails/s, emails per CPU-second of this process, sink CPU microseconds per email)."""
    sink_cpu, cpu, started = cpu_seconds(sink_pid), time.process_time(), time.monotonic()
    await run()
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    sink_cpu = cpu_seconds(sink_pid) - sink_cpu
    return messages / wall, messages / cpu, sink_cpu / messages * 1e6


async def main(messages: int, window: int, rounds: int) -> None:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-smtp-") as tmp:
        cert, key = self_signed_cert(Path(tmp))
        async with sink_process(cert, key) as (port, sink_pid):
            for round_ in range(rounds):
                runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                    ("bare aiosmtplib, 1 connection", lambda: bare_loop(port, cert, messages)),
                    ("MailSender, pool 4", lambda: through_sender(port, cert, messages, 4, window)),
                    ("MailSender, pool 8", lambda: through_sender(port, cert, messages, 8, window)),
                ]
                for name, run in runs:
                    rate, per_cpu, sink_us = await measure(run, sink_pid, messages)
                    rows.append([f"{name} #{round_ + 1}", messages, round(rate), round(per_cpu),
                                 round(sink_us)])
    print(table(f"Email sending, STARTTLS to the SMTP sink on loopback, window {window} "
                f"({os.cpu_count()} CPUs; the sink is its own process)",
                ["run", "emails", "emails/s", "emails/CPU-s", "sink CPU us/email"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    configure_logging("WARNING")
    asyncio.run(main(args.messages, args.window, args.rounds))
