"""What a failed SMTP send means for a delivery, decided in one place.

- 4xx reply to MAIL, RCPT or DATA (421, 450, 451, 452, 454, …) → `RETRY`: back off, send again.
- connection lost (`SMTPServerDisconnected`, reset), timeout, could not connect, other network
  errors → `RETRY`.
- 530 / 534 / 535 / 538 (authentication required, too weak, refused, needs TLS), in
  `SMTPAuthenticationError` or at any stage → `FATAL`: the channel's credentials are wrong; stop the
  sender, nothing can succeed until they are fixed.
- the server cannot do what the settings ask (no STARTTLS, no AUTH), its certificate is not trusted
  (set the CA file), a 5xx greeting or EHLO reply (it refuses this client) → `FATAL`.
- any other 5xx reply (550 mailbox unavailable, 552 too big, 553 bad address, 554 transaction
  failed), or an address that needs SMTPUTF8 the server lacks → `PERMANENT`: the delivery fails,
  no retry.

A refused recipient comes as `SMTPRecipientsRefused` (one `SMTPRecipientRefused` per recipient, each
with its code); when several were refused, any temporary refusal makes the whole `RETRY`. Other
replies come as `SMTPResponseException` subclasses (`SMTPSenderRefused`, `SMTPDataError`, …) with
`.code`. A 4xx during authentication (454 temporary failure) is `RETRY`, not `FATAL`.

The error text is the stage and the server's reply (`"recipient refused: 550 5.1.1 …"`), at most
`MAX_ERROR_LENGTH` characters. It never holds the password: aiosmtplib's errors carry the server's
reply, and the sender never puts credentials in a message.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass

import aiosmtplib

MAX_ERROR_LENGTH = 500

AUTHENTICATION_CODES = frozenset({530, 534, 535, 538})


class MailOutcome(enum.Enum):
    RETRY = "retry"
    PERMANENT = "permanent"
    FATAL = "fatal"


@dataclass(frozen=True)
class Classified:
    """An outcome and the short error text that goes with it (for the delivery row and the log)."""

    outcome: MailOutcome
    error: str


class MailSendError(Exception):
    """A send that failed; `.classified` says what it means. The SMTP error is the `__cause__`."""

    def __init__(self, classified: Classified) -> None:
        super().__init__(f"{classified.outcome.value}: {classified.error}")
        self.classified = classified

    @property
    def outcome(self) -> MailOutcome:
        return self.classified.outcome


def classify(exc: BaseException) -> Classified:
    """Map an exception from an SMTP connection or transaction (or a timeout) to its outcome."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusals = exc.recipients
        codes = [r.code for r in refusals]
        text = "; ".join(f"{r.code} {r.message}" for r in refusals)
        if any(code in AUTHENTICATION_CODES for code in codes):
            return _classified(MailOutcome.FATAL, f"recipient refused: {text}")
        temporary = not codes or any(400 <= code < 500 for code in codes)
        outcome = MailOutcome.RETRY if temporary else MailOutcome.PERMANENT
        return _classified(outcome, f"recipient refused: {text}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify_reply(exc)
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                        aiosmtplib.SMTPConnectError)):
        if _certificate_refused(exc):
            return _classified(MailOutcome.FATAL, f"server certificate not trusted: {exc}")
        return _classified(MailOutcome.RETRY, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return _classified(MailOutcome.PERMANENT, f"not supported by the server: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return _classified(MailOutcome.FATAL, f"server cannot do what the channel asks: {exc}")
    if isinstance(exc, TimeoutError):
        return _classified(MailOutcome.RETRY, "timeout")
    if _certificate_refused(exc):
        return _classified(MailOutcome.FATAL, f"server certificate not trusted: {exc}")
    return _classified(MailOutcome.RETRY, f"{type(exc).__name__}: {exc}")


def _classify_reply(exc: aiosmtplib.SMTPResponseException) -> Classified:
    code = exc.code
    stage = _STAGES.get(type(exc), "server replied")
    text = f"{stage}: {code} {exc.message}"
    if 400 <= code < 500:
        return _classified(MailOutcome.RETRY, text)
    if code in AUTHENTICATION_CODES or isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _classified(MailOutcome.FATAL, text)
    if isinstance(exc, (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)):
        return _classified(MailOutcome.FATAL, text)
    return _classified(MailOutcome.PERMANENT, text)


_STAGES: dict[type[aiosmtplib.SMTPResponseException], str] = {
    aiosmtplib.SMTPAuthenticationError: "authentication refused",
    aiosmtplib.SMTPConnectResponseError: "greeting refused",
    aiosmtplib.SMTPHeloError: "EHLO refused",
    aiosmtplib.SMTPSenderRefused: "sender refused",
    aiosmtplib.SMTPRecipientRefused: "recipient refused",
    aiosmtplib.SMTPDataError: "message refused",
}


def _certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; a bound keeps a cyclic one from looping
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _classified(outcome: MailOutcome, error: str) -> Classified:
    return Classified(outcome, " ".join(error.split())[:MAX_ERROR_LENGTH])
