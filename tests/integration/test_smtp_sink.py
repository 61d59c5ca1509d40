"""The SMTP sink captures mail sent with aiosmtplib, over STARTTLS with AUTH, and injects faults."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from clarion_dev.smtp_sink import SmtpSink, self_signed_cert

pytestmark = pytest.mark.integration


def _mail(subject: str = "Weekly digest", to: str = "reader@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "clarion@example.org"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Hello from Clarion")
    return message


async def test_plain_delivery_is_captured(smtp_sink: SmtpSink) -> None:
    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False)
    [captured] = smtp_sink.messages
    assert captured.mail_from == "clarion@example.org"
    assert captured.rcpt_tos == ["reader@example.org"]
    assert captured.message["Subject"] == "Weekly digest"
    assert captured.message.get_content().strip() == "Hello from Clarion"
    assert b"Hello from Clarion" in captured.raw
    assert captured.authenticated_as is None and captured.tls is False


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"clarion": "s3cret"})
async def test_starttls_and_auth_delivery_is_captured(smtp_sink: SmtpSink) -> None:
    assert smtp_sink.cert_path is not None
    await aiosmtplib.send(_mail(), hostname="localhost", port=smtp_sink.port, start_tls=True,
                          cert_bundle=str(smtp_sink.cert_path), username="clarion", password="s3cret")
    [captured] = smtp_sink.messages
    assert captured.authenticated_as == "clarion" and captured.tls is True


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"clarion": "s3cret"})
async def test_bad_password_is_refused_with_535(smtp_sink: SmtpSink) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await aiosmtplib.send(_mail(), hostname="localhost", port=smtp_sink.port, start_tls=True,
                              cert_bundle=str(smtp_sink.cert_path), username="clarion", password="wrong")
    assert caught.value.code == 535
    assert smtp_sink.messages == []


@pytest.mark.smtp_sink(starttls=True, require_auth=True)
async def test_mail_without_auth_is_refused_when_auth_is_required(smtp_sink: SmtpSink) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException):
        await aiosmtplib.send(_mail(), hostname="localhost", port=smtp_sink.port, start_tls=True,
                              cert_bundle=str(smtp_sink.cert_path))
    assert smtp_sink.messages == []


async def test_implicit_tls_delivery_is_captured() -> None:
    sink = SmtpSink(implicit_tls=True)
    await sink.start()
    try:
        await aiosmtplib.send(_mail(), hostname="localhost", port=sink.port, use_tls=True,
                              cert_bundle=str(sink.cert_path))
        assert [m.tls for m in sink.messages] == [True]
    finally:
        await sink.stop()


async def test_injected_temporary_and_permanent_failures_reach_the_client(smtp_sink: SmtpSink) -> None:
    smtp_sink.faults.set(temporary_rate=1.0)
    with pytest.raises(aiosmtplib.SMTPDataError) as temporary:
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False)
    assert temporary.value.code == 451
    smtp_sink.faults.set(permanent_rate=1.0)
    with pytest.raises(aiosmtplib.SMTPDataError) as permanent:
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False)
    assert permanent.value.code == 550
    assert smtp_sink.messages == [] and smtp_sink.rejected == 2
    smtp_sink.faults.set()
    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False)
    assert len(smtp_sink.messages) == 1


async def test_disconnect_during_data_is_a_connection_error(smtp_sink: SmtpSink) -> None:
    smtp_sink.faults.set(disconnect_during_data_rate=1.0)
    with pytest.raises((aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPResponseException)):
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False,
                              timeout=5)
    assert smtp_sink.messages == []


async def test_slow_replies_trip_client_timeouts(smtp_sink: SmtpSink) -> None:
    smtp_sink.faults.set(delay_s=5.0)
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False,
                              timeout=0.5)
    assert smtp_sink.messages == []


async def test_fault_settings_are_validated(smtp_sink: SmtpSink) -> None:
    with pytest.raises(ValueError, match="fault rates"):
        smtp_sink.faults.set(temporary_rate=0.7, permanent_rate=0.7)
    with pytest.raises(ValueError, match="delay_s"):
        smtp_sink.faults.set(delay_s=-1)
    assert smtp_sink.faults.temporary_rate == 0.0


async def test_clarion_dev_smtp_runs_until_sigterm(unused_tcp_port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clarion_dev.cli import main; sys.exit(main(sys.argv[1:]))",
        "dev", "smtp", "--port", str(unused_tcp_port), stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"smtp sink listening" in line
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=unused_tcp_port, start_tls=False)
        captured = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"mail captured" in captured, captured
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.smtp_sink(recipient_replies={"Gone@Example.org": "550 5.1.1 Mailbox unavailable",
                                          "full@example.org": "452 4.2.2 Mailbox full"})
async def test_chosen_recipients_get_the_chosen_reply(smtp_sink: SmtpSink) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as gone:
        await aiosmtplib.send(_mail(to="gone@example.org"), hostname="127.0.0.1", port=smtp_sink.port,
                              start_tls=False)
    assert [(r.code, r.message) for r in gone.value.recipients] == [(550, "5.1.1 Mailbox unavailable")]
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as full:
        await aiosmtplib.send(_mail(to="full@example.org"), hostname="127.0.0.1", port=smtp_sink.port,
                              start_tls=False)
    assert [r.code for r in full.value.recipients] == [452]
    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=smtp_sink.port, start_tls=False)
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["reader@example.org"]]
    assert smtp_sink.rejected == 2


@pytest.mark.smtp_sink(starttls=True)
async def test_sessions_are_counted_once_each_and_can_all_be_dropped(smtp_sink: SmtpSink) -> None:
    clients = [aiosmtplib.SMTP(hostname="localhost", port=smtp_sink.port, start_tls=True,
                               cert_bundle=str(smtp_sink.cert_path), timeout=5) for _ in range(2)]
    for client in clients:
        await client.connect()
    assert smtp_sink.sessions_opened == 2 and len(smtp_sink.open_sessions) == 2  # STARTTLS counts once
    await clients[0].quit()
    deadline = asyncio.get_running_loop().time() + 10
    while len(smtp_sink.open_sessions) != 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert smtp_sink.drop_connections() == 1
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await clients[1].noop()
    while smtp_sink.open_sessions:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert smtp_sink.sessions_opened == 2


async def test_clarion_dev_smtp_serves_a_given_certificate(unused_tcp_port: int, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clarion_dev.cli import main; sys.exit(main(sys.argv[1:]))",
        "dev", "smtp", "--port", str(unused_tcp_port), "--starttls", "--cert", str(cert), "--key", str(key),
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"smtp sink listening" in line
        await aiosmtplib.send(_mail(), hostname="localhost", port=unused_tcp_port, start_tls=True,
                              cert_bundle=str(cert))
        captured = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"mail captured" in captured, captured
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
