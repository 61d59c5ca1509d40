"""Email for notification workers: messages (`message`), what SMTP failures mean (`errors`),
pacing (`pacing`) and the pooled sender (`sender`). docs/email.md."""

from clarion.mail.errors import Classified, MailOutcome, MailSendError, classify
from clarion.mail.message import OutgoingEmail, PreparedMessage, build_message
from clarion.mail.pacing import Pacer, TokenBucket
from clarion.mail.sender import MailSender, SendResult

__all__ = [
    "Classified",
    "MailOutcome",
    "MailSendError",
    "MailSender",
    "OutgoingEmail",
    "Pacer",
    "PreparedMessage",
    "SendResult",
    "TokenBucket",
    "build_message",
    "classify",
]
