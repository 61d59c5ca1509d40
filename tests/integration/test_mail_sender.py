"""MailSender against the SMTP sink: TLS modes, AUTH, encodings, failures and what they mean, the
connection pool. Assertions are on what the sink received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import pytest
from clarion.mail import MailOutcome, MailSender, MailSendError, OutgoingEmail
from clarion.models import EmailSettings
from clarion_dev.smtp_sink import SmtpSink
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

FROM = "Clarion <noreply@example.org>"
CREDENTIALS = {"clarion": "s3cret"}


def _settings(sink: SmtpSink, tls: str = "none", sender: str = FROM, auth: bool = False) -> EmailSettings:
    spec: dict[str, Any] = {"host": "127.0.0.1", "port": sink.port, "tls": tls, "from": sender,
                            "ratePerSecond": 1000}
    if auth:
        spec |= {"usernameSecretRef": {"name": "smtp", "key": "username"},
                 "passwordSecretRef": {"name": "smtp", "key": "password"}}
    return EmailSettings.model_validate(spec)


def _sender(sink: SmtpSink, channel: str, tls: str = "none", **kwargs: Any) -> MailSender:
    sender = kwargs.pop("sender", FROM)
    auth = "username" in kwargs
    ca_file = str(sink.cert_path) if sink.cert_path is not None else None
    kwargs.setdefault("ca_file", ca_file)
    return MailSender(_settings(sink, tls, sender, auth), channel=f"mail-tests.{channel}",
                      local_hostname="worker.clarion.test", timeout_seconds=10, **kwargs)


def _email(to: str = "reader@example.org", **kwargs: Any) -> OutgoingEmail:
    kwargs.setdefault("subject", "Weekly digest")
    kwargs.setdefault("text", "Hello from Clarion")
    return OutgoingEmail(to=to, **kwargs)


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content()).replace("\r\n", "\n")


def _sent(channel: str, result: str) -> float:
    value = REGISTRY.get_sample_value("clarion_email_sent_total",
                                      {"channel": f"mail-tests.{channel}", "result": result})
    return value or 0.0


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


async def _failure(send: Awaitable[object]) -> MailSendError:
    with pytest.raises(MailSendError) as caught:
        await send
    return caught.value


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users=CREDENTIALS)
async def test_starttls_with_auth_delivers_the_message_as_built(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "starttls", "starttls", username="clarion", password="s3cret") as sender:
        result = await sender.send(_email(
            html="<p>Hello from <b>Clarion</b></p>", reply_to="Support <support@example.org>",
            headers={"X-Clarion-Notification-Id": "n-42", "X-Clarion-Trace-Id": "trace-7"}))
    [captured] = smtp_sink.messages
    assert captured.tls is True and captured.authenticated_as == "clarion"
    assert captured.mail_from == "noreply@example.org"
    assert captured.rcpt_tos == ["reader@example.org"]
    message = captured.message
    assert message["Message-ID"] == result.message_id
    assert result.message_id.endswith("@example.org>")
    assert result.reply.startswith("250")
    assert message["From"] == FROM and message["To"] == "reader@example.org"
    assert message["Reply-To"] == "Support <support@example.org>"
    assert message["Subject"] == "Weekly digest"
    assert message["X-Clarion-Notification-Id"] == "n-42" and message["X-Clarion-Trace-Id"] == "trace-7"
    assert message["Date"].datetime is not None
    assert message.get_content_type() == "multipart/alternative"
    assert _text(message).strip() == "Hello from Clarion"
    html = message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    assert html.get_content().strip() == "<p>Hello from <b>Clarion</b></p>"


@pytest.mark.smtp_sink(implicit_tls=True)
async def test_implicit_tls_delivers(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "implicit", "tls") as sender:
        await sender.send(_email())
    [captured] = smtp_sink.messages
    assert captured.tls is True
    assert captured.message.get_content_type() == "text/plain"
    assert _text(captured.message).strip() == "Hello from Clarion"


async def test_plain_connection_delivers(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "plain") as sender:
        await sender.send(_email())
    [captured] = smtp_sink.messages
    assert captured.tls is False and captured.authenticated_as is None
    assert _sent("plain", "sent") == 1


async def test_cyrillic_subject_body_and_names_arrive_intact(smtp_sink: SmtpSink) -> None:
    subject = "Ваш заказ №42 отправлен — спасибо, что выбрали нас! Подробности внутри письма"
    text = "\n".join(["Здравствуйте, Иван!", "Ваш заказ отправлен.", "", "До встречи,", "Кларион"])
    async with _sender(smtp_sink, "cyrillic", sender="Кларион <noreply@example.org>") as sender:
        await sender.send(_email("Иван Петров <ivan@example.org>", subject=subject, text=text,
                                 html="<p>Здравствуйте, Иван!</p>"))
    [captured] = smtp_sink.messages
    assert captured.raw.isascii()  # every header and body encoded for a 7-bit path
    message = captured.message
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Кларион"
    assert message["To"].addresses[0].display_name == "Иван Петров"
    assert captured.rcpt_tos == ["ivan@example.org"]
    assert _text(message).rstrip("\n") == text
    html = message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    assert html.get_content().strip() == "<p>Здравствуйте, Иван!</p>"


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users=CREDENTIALS)
async def test_wrong_password_is_fatal_and_stops_the_sender(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "badpass", "starttls", username="clarion", password="wrong-pw") as sender:
        failure = await _failure(sender.send(_email()))
        assert failure.outcome is MailOutcome.FATAL
        assert "535" in failure.classified.error and "wrong-pw" not in failure.classified.error
        assert sender.fatal == failure.classified
        sessions = smtp_sink.sessions_opened
        again = await _failure(sender.send(_email()))
        assert again.outcome is MailOutcome.FATAL
        assert smtp_sink.sessions_opened == sessions  # stopped: no further connection
    assert smtp_sink.messages == []
    assert _sent("badpass", "fatal") == 2


@pytest.mark.smtp_sink(recipient_replies={"gone@example.org": "550 5.1.1 Mailbox unavailable"})
async def test_recipient_refused_with_550_is_permanent_and_the_connection_is_reused(
        smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "permanent") as sender:
        failure = await _failure(sender.send(_email("gone@example.org")))
        await sender.send(_email("reader@example.org"))
    assert failure.outcome is MailOutcome.PERMANENT
    assert failure.classified.error == "recipient refused: 550 5.1.1 Mailbox unavailable"
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["reader@example.org"]]
    assert smtp_sink.sessions_opened == 1
    assert _sent("permanent", "permanent") == 1 and _sent("permanent", "sent") == 1


@pytest.mark.smtp_sink(recipient_replies={"full@example.org": "452 4.2.2 Mailbox full"})
async def test_temporary_refusals_are_retry(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "retry") as sender:
        at_rcpt = await _failure(sender.send(_email("full@example.org")))
        smtp_sink.faults.set(temporary_rate=1.0)
        at_data = await _failure(sender.send(_email("reader@example.org")))
        smtp_sink.faults.set()
        await sender.send(_email("reader@example.org"))
    assert at_rcpt.outcome is MailOutcome.RETRY and "452" in at_rcpt.classified.error
    assert at_data.outcome is MailOutcome.RETRY and "451" in at_data.classified.error
    assert len(smtp_sink.messages) == 1


class _NoPacing:
    async def wait(self) -> None:
        return None


@pytest.mark.parametrize("noticed", [False, True], ids=["found-on-MAIL", "noticed-while-idle"])
async def test_connection_dropped_by_the_server_is_replaced_and_the_next_send_succeeds(
        smtp_sink: SmtpSink, noticed: bool) -> None:
    # Without pacing the next send starts before the client has read the close: MAIL finds it.
    async with _sender(smtp_sink, "dropped", pacer=_NoPacing()) as sender:
        await sender.send(_email(subject="first"))
        assert smtp_sink.drop_connections() == 1
        if noticed:
            await _eventually(lambda: not smtp_sink.open_sessions)
        await sender.send(_email(subject="second"))
    assert [m.message["Subject"] for m in smtp_sink.messages] == ["first", "second"]
    assert smtp_sink.sessions_opened == 2


async def test_connection_lost_during_data_is_retry_and_the_next_send_uses_a_new_connection(
        smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "lost") as sender:
        await sender.send(_email(subject="first"))
        smtp_sink.faults.set(disconnect_during_data_rate=1.0)
        failure = await _failure(sender.send(_email(subject="lost")))
        smtp_sink.faults.set()
        await sender.send(_email(subject="after"))
    assert failure.outcome is MailOutcome.RETRY
    assert [m.message["Subject"] for m in smtp_sink.messages] == ["first", "after"]
    assert smtp_sink.sessions_opened == 2


@pytest.mark.smtp_sink(starttls=True)
async def test_200_sends_over_a_pool_of_4_use_at_most_4_connections(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "pool", "starttls", pool_size=4) as sender:
        results = await asyncio.gather(*(sender.send(_email(f"reader{i}@example.org")) for i in range(200)))
        assert sender.open_connections <= 4
    assert len(smtp_sink.messages) == 200
    assert {r.message_id for r in results} == {m.message["Message-ID"] for m in smtp_sink.messages}
    assert 1 <= smtp_sink.sessions_opened <= 4


async def test_idle_connections_are_closed_after_the_idle_time(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "idle", idle_seconds=0.2) as sender:
        await sender.send(_email(subject="before"))
        await _eventually(lambda: not smtp_sink.open_sessions and sender.open_connections == 0)
        await sender.send(_email(subject="after"))
    assert [m.message["Subject"] for m in smtp_sink.messages] == ["before", "after"]
    assert smtp_sink.sessions_opened == 2


async def test_close_quits_every_connection_and_refuses_later_sends(smtp_sink: SmtpSink) -> None:
    sender = _sender(smtp_sink, "close", pool_size=3)
    await asyncio.gather(*(sender.send(_email(f"r{i}@example.org")) for i in range(30)))
    assert smtp_sink.open_sessions
    await sender.close()
    await _eventually(lambda: not smtp_sink.open_sessions)
    assert sender.open_connections == 0
    with pytest.raises(RuntimeError, match="closed"):
        await sender.send(_email())
    assert len(smtp_sink.messages) == 30


async def test_header_injection_is_refused_and_nothing_is_sent(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "injection") as sender:
        with pytest.raises(ValueError, match="subject contains a line break"):
            await sender.send(_email(subject="Hello\r\nBcc: victim@example.org"))
        with pytest.raises(ValueError, match="to contains a line break"):
            await sender.send(_email("reader@example.org\r\nBcc: victim@example.org"))
        with pytest.raises(ValueError, match="X-Clarion-Trace-Id contains a line break"):
            await sender.send(_email(headers={"X-Clarion-Trace-Id": "t\nBcc: victim@example.org"}))
    assert smtp_sink.messages == [] and smtp_sink.sessions_opened == 0


@pytest.mark.smtp_sink(starttls=True)
async def test_untrusted_server_certificate_is_fatal(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "untrusted", "starttls", ca_file=None) as sender:
        failure = await _failure(sender.send(_email()))
    assert failure.outcome is MailOutcome.FATAL
    assert "certificate" in failure.classified.error
    assert smtp_sink.messages == []


async def test_starttls_asked_of_a_server_without_it_is_fatal(smtp_sink: SmtpSink) -> None:
    async with _sender(smtp_sink, "nostarttls", "starttls") as sender:
        failure = await _failure(sender.send(_email()))
    assert failure.outcome is MailOutcome.FATAL
    assert "STARTTLS" in failure.classified.error
    assert smtp_sink.messages == []


async def test_a_plugged_in_pacer_is_awaited_once_per_send(smtp_sink: SmtpSink) -> None:
    class CountingPacer:
        def __init__(self) -> None:
            self.waits = 0

        async def wait(self) -> None:
            self.waits += 1

    pacer = CountingPacer()
    async with _sender(smtp_sink, "pacer", pacer=pacer) as sender:
        await asyncio.gather(*(sender.send(_email(f"r{i}@example.org")) for i in range(12)))
    assert pacer.waits == 12 and len(smtp_sink.messages) == 12
