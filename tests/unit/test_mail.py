"""The email pieces that need no server: what SMTP failures mean, how messages are built and
refused, and the pacer's waits on an injected clock."""

from __future__ import annotations

import email
import email.policy
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import pytest
from clarion.mail import MailOutcome, OutgoingEmail, TokenBucket, build_message, classify
from clarion.mail.errors import MAX_ERROR_LENGTH
from clarion.mail.message import parse_mailbox

pytestmark = pytest.mark.unit

SENDER = parse_mailbox("from", "Clarion <noreply@notify.example.org>")


def _refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, f"reply {code}", f"r{code}@example.org") for code in codes])


def _certificate_error() -> aiosmtplib.SMTPConnectError:
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
        except ssl.SSLError as exc:
            raise aiosmtplib.SMTPConnectError(f"Error connecting: {exc}") from exc
    except aiosmtplib.SMTPConnectError as wrapped:
        return wrapped


@pytest.mark.parametrize(("exc", "outcome", "text"), [
    (_refused(550), MailOutcome.PERMANENT, "recipient refused: 550 reply 550"),
    (_refused(553), MailOutcome.PERMANENT, "recipient refused: 553"),
    (_refused(452), MailOutcome.RETRY, "recipient refused: 452"),
    (_refused(450), MailOutcome.RETRY, "450"),
    (_refused(550, 451), MailOutcome.RETRY, "550 reply 550; 451 reply 451"),
    (_refused(530), MailOutcome.FATAL, "530"),
    (aiosmtplib.SMTPRecipientRefused(550, "5.1.1 Mailbox unavailable", "x@example.org"),
     MailOutcome.PERMANENT, "recipient refused: 550 5.1.1 Mailbox unavailable"),
    (aiosmtplib.SMTPResponseException(421, "4.4.2 Service closing"), MailOutcome.RETRY,
     "server replied: 421 4.4.2 Service closing"),
    (aiosmtplib.SMTPDataError(451, "4.3.0 Try later"), MailOutcome.RETRY,
     "message refused: 451 4.3.0 Try later"),
    (aiosmtplib.SMTPDataError(452, "4.3.1 Insufficient storage"), MailOutcome.RETRY, "452"),
    (aiosmtplib.SMTPDataError(554, "5.7.1 Rejected as spam"), MailOutcome.PERMANENT, "message refused: 554"),
    (aiosmtplib.SMTPDataError(552, "5.3.4 Message too big"), MailOutcome.PERMANENT, "552"),
    (aiosmtplib.SMTPSenderRefused(553, "5.1.8 Bad sender", "a@example.org"), MailOutcome.PERMANENT,
     "sender refused: 553"),
    (aiosmtplib.SMTPSenderRefused(530, "5.7.0 Authentication required", "a@example.org"), MailOutcome.FATAL,
     "530"),
    (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"), MailOutcome.FATAL,
     "authentication refused: 535 5.7.8 Authentication credentials invalid"),
    (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"), MailOutcome.RETRY,
     "454"),
    (aiosmtplib.SMTPConnectResponseError(554, "5.7.1 No service for you"), MailOutcome.FATAL,
     "greeting refused: 554"),
    (aiosmtplib.SMTPConnectResponseError(421, "4.3.2 Too busy"), MailOutcome.RETRY, "421"),
    (aiosmtplib.SMTPServerDisconnected("Connection lost"), MailOutcome.RETRY, "Connection lost"),
    (aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"), MailOutcome.RETRY,
     "Timed out"),
    (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"), MailOutcome.RETRY, "Timed out"),
    (aiosmtplib.SMTPConnectError("Error connecting: connection refused"), MailOutcome.RETRY, "refused"),
    (TimeoutError(), MailOutcome.RETRY, "timeout"),
    (ConnectionResetError(104, "Connection reset by peer"), MailOutcome.RETRY, "reset"),
    (aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."), MailOutcome.FATAL,
     "STARTTLS"),
    (aiosmtplib.SMTPException("The SMTP AUTH extension is not supported by this server."), MailOutcome.FATAL,
     "AUTH"),
    (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), MailOutcome.PERMANENT,
     "SMTPUTF8"),
    (_certificate_error(), MailOutcome.FATAL, "certificate not trusted"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), MailOutcome.FATAL, "certificate"),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None)
def test_smtp_failures_map_to_the_policy_table(exc: BaseException, outcome: MailOutcome, text: str) -> None:
    classified = classify(exc)
    assert classified.outcome is outcome
    assert text in classified.error


def test_error_text_is_one_short_line() -> None:
    classified = classify(aiosmtplib.SMTPDataError(554, "x" * 2000 + "\r\nsecond line"))
    assert len(classified.error) == MAX_ERROR_LENGTH and "\n" not in classified.error


def _parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_text_only_email_is_a_single_text_part_with_the_headers_set() -> None:
    prepared = build_message(
        OutgoingEmail(to="Reader <reader@example.org>", subject="Digest", text="Hello",
                      reply_to="support@example.org", headers={"X-Clarion-Notification-Id": "n-1"}),
        SENDER, now=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    message = _parsed(prepared.data)
    assert message.get_content_type() == "text/plain"
    assert message["From"] == "Clarion <noreply@notify.example.org>"
    assert message["To"] == "Reader <reader@example.org>"
    assert message["Reply-To"] == "support@example.org"
    assert message["Date"] == "Sun, 01 Mar 2026 12:00:00 +0000"
    assert message["X-Clarion-Notification-Id"] == "n-1"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content().strip() == "Hello"
    assert prepared.envelope_from == "noreply@notify.example.org"
    assert prepared.envelope_to == "reader@example.org"
    assert b"\r\n" in prepared.data and b"\n" not in prepared.data.replace(b"\r\n", b"")


def test_html_makes_a_multipart_alternative_with_text_first() -> None:
    outgoing = OutgoingEmail(to="reader@example.org", subject="s", text="plain", html="<b>rich</b>")
    prepared = build_message(outgoing, SENDER)
    message = _parsed(prepared.data)
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert all("MIME-Version" not in part for part in message.iter_parts())


def test_message_id_is_made_on_the_from_domain_unless_given() -> None:
    made = build_message(OutgoingEmail(to="reader@example.org", subject="s", text="t"), SENDER)
    assert made.message_id.startswith("<") and made.message_id.endswith("@notify.example.org>")
    assert _parsed(made.data)["Message-ID"] == made.message_id
    given = build_message(OutgoingEmail(to="reader@example.org", subject="s", text="t",
                                        message_id="<n-42.attempt@notify.example.org>"), SENDER)
    assert given.message_id == "<n-42.attempt@notify.example.org>"
    assert _parsed(given.data)["Message-ID"] == given.message_id


@pytest.mark.parametrize("subject", [
    "Привет",
    "Ваш заказ №42 отправлен — спасибо, что выбрали нас! Подробности внутри письма",
    "Короткие слова и длинные слова " * 6,
])
def test_cyrillic_headers_and_bodies_are_encoded_and_decode_to_the_original(subject: str) -> None:
    sender = parse_mailbox("from", "Кларион <noreply@example.org>")
    text = "\n".join(["Здравствуйте, Иван!", "Ваш заказ отправлен."])
    prepared = build_message(OutgoingEmail(to="Иван Петров <ivan@example.org>", subject=subject, text=text,
                                           headers={"X-Clarion-Campaign": subject}), sender)
    assert prepared.data.isascii()
    assert max(len(line) for line in prepared.data.split(b"\r\n")) <= 78
    message = _parsed(prepared.data)
    assert message["Subject"] == subject
    assert message["X-Clarion-Campaign"] == subject
    assert message["From"].addresses[0].display_name == "Кларион"
    assert message["To"].addresses[0].display_name == "Иван Петров"
    assert message.get_content().replace("\r\n", "\n").rstrip("\n") == text


@pytest.mark.parametrize(("fields", "error"), [
    ({"subject": "Hi\r\nBcc: victim@example.org"}, "subject contains a line break"),
    ({"subject": "Hi\nthere"}, "subject contains a line break"),
    ({"to": "reader@example.org\r\nBcc: victim@example.org"}, "to contains a line break"),
    ({"to": "Reader\n <reader@example.org>"}, "to contains a line break"),
    ({"reply_to": "a@example.org\rBcc: victim@example.org"}, "reply_to contains a line break"),
    ({"headers": {"X-Trace": "t\r\nBcc: victim@example.org"}}, "header X-Trace contains a line break"),
    ({"headers": {"X-Bad\r\nBcc": "v"}}, "not a valid header name"),
    ({"headers": {"X-Trailing\n": "v"}}, "not a valid header name"),
    ({"headers": {"Bcc": "victim@example.org"}}, "set by the message builder"),
    ({"headers": {"subject": "another"}}, "set by the message builder"),
    ({"to": "a@example.org, b@example.org"}, "exactly one email address"),
    ({"to": "not an address"}, "exactly one email address"),
    ({"to": "x@"}, "not an email address"),
    ({"message_id": "no-brackets@example.org"}, "message_id must look like"),
    ({"message_id": "<id@example.org>\n"}, "message_id must look like"),
])
def test_header_injection_and_bad_addresses_are_refused_when_the_email_is_made(
        fields: dict[str, object], error: str) -> None:
    values: dict[str, object] = {"to": "reader@example.org", "subject": "s", "text": "t"} | fields
    with pytest.raises(ValueError, match=error):
        OutgoingEmail(**values)  # type: ignore[arg-type]


def test_extra_headers_cannot_be_changed_after_the_email_is_made() -> None:
    headers = {"X-Clarion-Trace-Id": "t-1"}
    outgoing = OutgoingEmail(to="reader@example.org", subject="s", text="t", headers=headers)
    headers["X-Clarion-Trace-Id"] = "t\r\nBcc: victim@example.org"
    assert outgoing.headers["X-Clarion-Trace-Id"] == "t-1"
    with pytest.raises(TypeError):
        outgoing.headers["X-Other"] = "v"  # type: ignore[index]


class _FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_pacer_spaces_sends_one_interval_apart() -> None:
    rate = 5
    time = _FakeTime()
    bucket = TokenBucket(rate, clock=time.clock)
    waits = [bucket.reserve() for _ in range(2 * rate)]
    assert waits == pytest.approx([i / rate for i in range(2 * rate)])
    assert waits[-1] >= 1.0  # 2 x rate sends span at least a second


def test_pacer_gives_no_credit_for_a_quiet_spell_beyond_its_burst() -> None:
    time = _FakeTime()
    bucket = TokenBucket(10, burst=3, clock=time.clock)
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    time.now += 60
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])


def test_pacer_slot_frees_as_time_passes() -> None:
    time = _FakeTime()
    bucket = TokenBucket(4, clock=time.clock)
    assert bucket.reserve() == 0
    time.now += 0.1
    assert bucket.reserve() == pytest.approx(0.15)
    time.now += 1.0
    assert bucket.reserve() == 0


async def test_pacer_wait_sleeps_the_reserved_delay() -> None:
    time = _FakeTime()
    bucket = TokenBucket(2, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        await bucket.wait()
    assert time.slept == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_pacer_refuses_nonsense_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst=burst)
