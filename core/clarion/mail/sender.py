"""`MailSender`: one per email channel per process; sends `OutgoingEmail`s through the channel's SMTP
server over a small pool of reused connections.

- Pool: up to `pool_size` (default 4) `aiosmtplib.SMTP` connections, opened when a send finds none
  idle, each used by one send at a time and reused by the next (no connect per message). The most
  recently used idle connection goes first, so that the pool shrinks back when traffic falls; a
  connection idle for `idle_seconds` gets QUIT and is closed.
- Connecting: implicit TLS (`tls: tls`), plain then STARTTLS (`starttls`), or plain (`none`); the
  server certificate is checked against the system CAs or `ca_file`; AUTH (PLAIN or LOGIN, whichever
  the server offers) when a username and password are given; `timeout_seconds` per SMTP command.
- A connection that failed (lost, reset, timed out, cancelled mid-transaction) is discarded; the next
  send opens a new one. A pooled connection found closed when a send starts (the server dropped it
  while it sat idle: MAIL gets no answer or 421) is replaced and the send goes on the new one at
  once: nothing of that message reached the server. After a refusal (4xx/5xx) the envelope is reset
  with RSET and the connection stays in the pool.
- Pacing: every send waits for its `Pacer` slot (default: a process-local `TokenBucket` at the
  channel's `ratePerSecond`) while holding its pool slot, so sends start no faster than the rate.
- Failures raise `MailSendError` with the outcome from `clarion.mail.errors.classify`. After a
  `FATAL` outcome the sender stops: idle connections are closed and every later send raises the same
  error without connecting, until the process builds a new sender with fixed settings.

Metrics (label `channel` is the channel key): `clarion_email_sent_total{channel,result}` with result
sent / retry / permanent / fatal, `clarion_email_send_seconds{channel}` (one SMTP transaction,
connecting included when it had to), `clarion_email_pacer_wait_seconds{channel}` and
`clarion_email_connections_opened_total{channel}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiosmtplib
import structlog

from clarion.mail.errors import Classified, MailOutcome, MailSendError, classify
from clarion.mail.message import OutgoingEmail, PreparedMessage, build_message, new_message_id, parse_mailbox
from clarion.mail.pacing import Pacer, TokenBucket
from clarion.metrics import counter, histogram
from clarion.models.channel import EmailSettings

log = structlog.get_logger("clarion.mail")

SENT = counter("clarion_email_sent_total", "Email send results (sent, retry, permanent, fatal).",
               ["channel", "result"])
SEND_SECONDS = histogram("clarion_email_send_seconds",
                         "One SMTP transaction (MAIL, RCPT, DATA), connecting included when it had to.",
                         ["channel"])
PACER_WAIT = histogram("clarion_email_pacer_wait_seconds", "Time a send waited for its pacer slot.",
                       ["channel"], buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
CONNECTIONS_OPENED = counter("clarion_email_connections_opened_total",
                             "SMTP connections opened (and authenticated) by mail senders.", ["channel"])


@dataclass(frozen=True)
class SendResult:
    """A message the server took: its Message-ID and the server's reply to DATA (often with the
    relay's own queue id)."""

    message_id: str
    reply: str


class _StaleConnection(Exception):
    """A pooled connection turned out closed before the message went out."""


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    idle_since: float = 0.0
    reused: bool = False


class MailSender:
    """Sends a channel's email; see the module docstring. Close it with `close()` (or `async with`)."""

    def __init__(self, settings: EmailSettings, *, channel: str, username: str | None = None,
                 password: str | None = None, pool_size: int = 4, timeout_seconds: float = 30.0,
                 idle_seconds: float = 60.0, ca_file: str | None = None, pacer: Pacer | None = None,
                 local_hostname: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.channel = channel
        self.settings = settings
        self.sender = parse_mailbox("from", settings.from_)
        self.pool_size = pool_size
        self._username = username
        self._password = password
        self._timeout = timeout_seconds
        self._idle_seconds = idle_seconds
        self._local_hostname = local_hostname
        self._clock = clock
        self._tls_context = ssl.create_default_context(cafile=ca_file) if settings.tls != "none" else None
        self._pacer: Pacer = pacer if pacer is not None else TokenBucket(settings.rate_per_second)
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Connection] = []  # oldest first
        self._busy: set[_Connection] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._fatal: Classified | None = None
        self._results = {result: SENT.labels(channel, result)
                         for result in ["sent", *(outcome.value for outcome in MailOutcome)]}
        self._send_seconds = SEND_SECONDS.labels(channel)
        self._pacer_wait = PACER_WAIT.labels(channel)
        self._opened = CONNECTIONS_OPENED.labels(channel)

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    @property
    def fatal(self) -> Classified | None:
        """The failure that stopped this sender, if one did."""
        return self._fatal

    def new_message_id(self) -> str:
        """A Message-ID on the From domain, for a caller that wants retries to keep the same one."""
        return new_message_id(self.sender)

    async def send(self, outgoing: OutgoingEmail) -> SendResult:
        """Send one email; raises `MailSendError` (see `clarion.mail.errors`) when it did not go."""
        prepared = build_message(outgoing, self.sender)
        async with self._slots:
            self._check_usable()
            paced = time.perf_counter()
            await self._pacer.wait()
            started = time.perf_counter()
            self._pacer_wait.observe(started - paced)
            self._check_usable()
            try:
                reply = await self._deliver(prepared)
            except (aiosmtplib.SMTPException, OSError) as exc:
                classified = classify(exc)
                self._results[classified.outcome.value].inc()
                if classified.outcome is MailOutcome.FATAL:
                    await self._stop(classified)
                raise MailSendError(classified) from exc
            finally:
                self._send_seconds.observe(time.perf_counter() - started)
        self._results["sent"].inc()
        return SendResult(prepared.message_id, reply)

    async def close(self) -> None:
        """QUIT every idle connection; connections in use close when their send ends."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(conn) for conn in idle))

    async def __aenter__(self) -> MailSender:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._fatal is not None:
            self._results[MailOutcome.FATAL.value].inc()
            raise MailSendError(self._fatal)
        if self._closed:
            raise RuntimeError("this MailSender is closed")

    async def _deliver(self, prepared: PreparedMessage) -> str:
        conn = await self._take()
        try:
            try:
                reply = await self._transaction(conn, prepared)
            except _StaleConnection:
                self._discard(conn)
                conn = await self._open()
                reply = await self._transaction(conn, prepared)
        except aiosmtplib.SMTPResponseException:
            self._give_back(conn)  # the envelope was reset; kept if still connected
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._give_back(conn)
        return reply

    async def _transaction(self, conn: _Connection, prepared: PreparedMessage) -> str:
        client = conn.client
        options = [f"SIZE={len(prepared.data)}"] if client.supports_extension("size") else []
        try:
            try:
                await client.mail(prepared.envelope_from, options=options)
            except (ConnectionError, aiosmtplib.SMTPSenderRefused) as exc:
                if conn.reused and not client.is_connected:
                    raise _StaleConnection from exc
                raise
            await client.rcpt(prepared.envelope_to)
            response = await client.data(prepared.data)
        except aiosmtplib.SMTPResponseException:
            if client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.rset()
            raise
        return f"{response.code} {response.message}"

    async def _take(self) -> _Connection:
        now = self._clock()
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected and now - conn.idle_since < self._idle_seconds:
                self._busy.add(conn)
                return conn
            conn.client.close()
        return await self._open()

    async def _open(self) -> _Connection:
        tls = self.settings.tls
        client = aiosmtplib.SMTP(
            hostname=self.settings.host, port=self.settings.port, username=self._username,
            password=self._password, timeout=self._timeout, use_tls=tls == "tls",
            start_tls=tls == "starttls", tls_context=self._tls_context, local_hostname=self._local_hostname,
        )
        await client.connect()  # aiosmtplib closes the client when this fails
        self._opened.inc()
        conn = _Connection(client)
        self._busy.add(conn)
        log.debug("smtp connection opened", channel=self.channel, host=self.settings.host,
                  port=self.settings.port, tls=tls, open=self.open_connections)
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if self._closed or self._fatal is not None or not conn.client.is_connected:
            self._discard(conn)
            return
        self._busy.discard(conn)
        conn.reused = True
        conn.idle_since = self._clock()
        self._idle.append(conn)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._close_idle())

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.client.close()

    async def _close_idle(self) -> None:
        """Runs while connections sit idle; QUITs each one `idle_seconds` after its last send."""
        while self._idle:
            delay = self._idle[0].idle_since + self._idle_seconds - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._quit(self._idle.pop(0))

    async def _quit(self, conn: _Connection) -> None:
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await conn.client.quit()
        finally:
            conn.client.close()

    async def _stop(self, classified: Classified) -> None:
        if self._fatal is None:
            self._fatal = classified
            log.error("mail sender stopped", channel=self.channel, error=classified.error)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(conn) for conn in idle))
