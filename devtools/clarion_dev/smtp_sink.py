"""SMTP sink on aiosmtpd: captures mail for assertions, speaks STARTTLS / implicit TLS and AUTH,
and injects faults (451 temporary, 550 permanent, disconnect during DATA, slow replies, chosen
replies to chosen recipients, every open connection dropped at once). It counts the connections
(sessions) clients opened.

    clarion dev smtp --port 2525 [--starttls] [--implicit-tls] [--auth user:pass]... [--cert C --key K]
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import random
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from clarion.logging import configure_logging, get_logger


@dataclass(frozen=True)
class CapturedMessage:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    at: float
    authenticated_as: str | None
    tls: bool
    #: The client's address: which host (or pod) sent it.
    peer: str = ""


@dataclass
class SmtpFaults:
    """Shares (0..1) of DATA commands answered with a fault, plus a delay before every reply to
    RCPT and DATA."""

    temporary_rate: float = 0.0
    permanent_rate: float = 0.0
    disconnect_during_data_rate: float = 0.0
    delay_s: float = 0.0
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def set(self, temporary_rate: float = 0.0, permanent_rate: float = 0.0,
            disconnect_during_data_rate: float = 0.0, delay_s: float = 0.0) -> None:
        rates = (temporary_rate, permanent_rate, disconnect_during_data_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError("fault rates must be within 0..1 and sum to at most 1")
        if not 0.0 <= delay_s <= 300.0:
            raise ValueError("delay_s must be within 0..300")
        self.temporary_rate, self.permanent_rate, self.disconnect_during_data_rate = rates
        self.delay_s = delay_s


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 made with the openssl CLI; returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return cert, key


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.sink.faults.delay_s:
            await asyncio.sleep(self.sink.faults.delay_s)
        reply = self.sink.recipient_replies.get(address.lower())
        if reply is not None:
            self.sink.rejected += 1
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.sink.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        roll = faults.rng.random()
        if roll < faults.temporary_rate:
            self.sink.rejected += 1
            return "451 4.3.0 Temporary failure, try again later (injected)"
        roll -= faults.temporary_rate
        if roll < faults.permanent_rate:
            self.sink.rejected += 1
            return "550 5.7.1 Message rejected (injected)"
        roll -= faults.permanent_rate
        if roll < faults.disconnect_during_data_rate:
            self.sink.rejected += 1
            if isinstance(server.transport, asyncio.WriteTransport):
                server.transport.abort()
            return "421 4.3.0 Connection dropped (injected)"
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        captured = CapturedMessage(envelope.mail_from or "", list(envelope.rcpt_tos), parsed, raw,
                                   time.monotonic(), login, tls, peer)
        self.sink.messages.append(captured)
        if self.sink.on_message is not None:
            self.sink.on_message(captured)
        return "250 Message accepted for delivery"


class _Session(SMTP):
    """aiosmtpd's protocol for one client connection, known to the sink while it is open."""

    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self not in self.sink.open_sessions:  # STARTTLS calls this again for the same connection
            self.sink.sessions_opened += 1
            self.sink.open_sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink.open_sessions.discard(self)
        super().connection_lost(error)


class SmtpSink:
    """An SMTP server for tests and local runs. `port=0` picks a free port (see `.port`).

    starttls=True offers STARTTLS; implicit_tls=True wraps the whole connection in TLS. Without
    `tls_cert` (cert, key paths) a self-signed certificate for localhost is generated.
    require_auth=True refuses mail without AUTH PLAIN/LOGIN from `users` (535 on bad credentials).
    `recipient_replies` maps a lower-case address to the reply its RCPT gets instead of 250
    (`"550 5.1.1 Mailbox unavailable"`, `"452 4.2.2 Mailbox full"`); each such refusal counts in
    `.rejected`. `.sessions_opened` counts the connections clients made, `.open_sessions` holds the
    open ones, and `drop_connections()` aborts them all.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls_cert: tuple[Path, Path] | None = None,
                 require_auth: bool = False, users: dict[str, str] | None = None, *, starttls: bool = False,
                 implicit_tls: bool = False, seed: int | None = None,
                 recipient_replies: dict[str, str] | None = None) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        self.host = host
        self.port = port
        self.tls_cert = tls_cert
        self.starttls = starttls or (tls_cert is not None and not implicit_tls)
        self.implicit_tls = implicit_tls
        self.require_auth = require_auth
        self.users = dict(users) if users is not None else {"user": "pass"}
        self.messages: list[CapturedMessage] = []
        self.rejected = 0
        self.on_message: Callable[[CapturedMessage], None] | None = None
        self.faults = SmtpFaults(seed=seed)
        replies = recipient_replies or {}
        self.recipient_replies = {address.lower(): reply for address, reply in replies.items()}
        self.sessions_opened = 0
        self.open_sessions: set[SMTP] = set()
        self._server: asyncio.Server | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def cert_path(self) -> Path | None:
        """The certificate clients should trust (None without TLS)."""
        return self.tls_cert[0] if self.tls_cert else None

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self.users.get(auth_data.login.decode())
        if expected is None or expected != auth_data.password.decode():
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)

    def _tls_context(self) -> ssl.SSLContext | None:
        if not (self.starttls or self.implicit_tls):
            return None
        if self.tls_cert is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clarion-smtp-")
            self.tls_cert = self_signed_cert(Path(self._tmp.name))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls_cert[0]), str(self.tls_cert[1]))
        return context

    async def start(self) -> None:
        context = self._tls_context()
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> SMTP:
            return _Session(self, handler, hostname="localhost", loop=loop,
                            tls_context=context if self.starttls else None,
                            require_starttls=self.starttls and self.require_auth,
                            auth_required=self.require_auth,
                            auth_require_tls=self.starttls,
                            authenticator=self._authenticate)

        self._server = await loop.create_server(factory, self.host, self.port,
                                                ssl=context if self.implicit_tls else None)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop_connections(self) -> int:
        """Abort every open connection (as a server that restarts or drops idle clients does); returns
        how many. The sessions leave `.open_sessions` once the loop has processed the close."""
        dropped = 0
        for session in list(self.open_sessions):
            if isinstance(session.transport, asyncio.WriteTransport):
                session.transport.abort()
                dropped += 1
        return dropped

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.tls_cert = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion dev smtp", description="SMTP sink (docs/emulator.md)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true")
    tls.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="accept these credentials and require AUTH (repeatable)")
    parser.add_argument("--cert", type=Path, help="TLS certificate (PEM) to serve instead of a generated one")
    parser.add_argument("--key", type=Path, help="the certificate's private key (PEM), with --cert")
    parser.add_argument("--log-level", default="INFO")
    return parser


async def _run(args: argparse.Namespace, users: dict[str, str]) -> None:
    log = get_logger("clarion_dev.smtp")
    tls_cert = (args.cert, args.key) if args.cert is not None else None
    sink = SmtpSink(args.host, args.port, tls_cert=tls_cert, require_auth=bool(users), users=users,
                    starttls=args.starttls, implicit_tls=args.implicit_tls)
    sink.on_message = lambda captured: log.info(
        "mail captured", mail_from=captured.mail_from, rcpt=len(captured.rcpt_tos),
        subject=str(captured.message.get("Subject", ""))[:80], bytes=len(captured.raw))
    await sink.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("smtp sink listening", host=args.host, port=sink.port, starttls=args.starttls,
             implicit_tls=args.implicit_tls, auth=bool(users))
    try:
        await stop.wait()
    finally:
        await sink.stop()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if (args.cert is None) != (args.key is None):
        get_logger("clarion_dev.smtp").error("--cert and --key go together")
        return 2
    users: dict[str, str] = {}
    for pair in args.auth:
        user, sep, password = pair.partition(":")
        if not sep or not user:
            get_logger("clarion_dev.smtp").error("bad --auth, expected USER:PASS", value=user)
            return 2
        users[user] = password
    asyncio.run(_run(args, users))
    return 0
