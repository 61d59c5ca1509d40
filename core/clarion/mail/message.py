"""What an email is before it goes out: `OutgoingEmail`, checked when it is made, and the MIME message
built from it with the standard library (`email.message.EmailMessage`).

- text only → `text/plain; charset="utf-8"` when the text is not ASCII; text and html →
  `multipart/alternative` (text first, html last: the part a reader prefers);
- Subject and display names that are not ASCII are RFC 2047 encoded (`=?utf-8?b?…?=`); bodies that
  are not ASCII go base64 or quoted-printable (whichever is shorter), so no server needs 8BITMIME.
  Subject and extra headers are folded by `email.header.Header`, not by the policy: CPython's
  folder (gh-144156, present in the 3.11 we run) can leave the space between two encoded words
  outside both, and readers then drop it ("отправлен —" arrives as "отправлен—");
- `Message-ID` is `email.utils.make_msgid` on the From address's domain unless the email brings its own
  (a worker that may send the same notification twice gives it one, so that both copies share it);
- `Date` is now, in UTC.

Header injection is refused where the email is made: a CR or LF in the subject, an address or an
extra header raises `ValueError` naming the field, before any connection is opened.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address, AddressHeader, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from types import MappingProxyType


class _EncodedUnstructured(UnstructuredHeader, BaseHeader):
    """An unstructured header whose non-ASCII value is folded by `email.header.Header` (docstring)."""

    def fold(self, *, policy: email.policy.Policy) -> str:
        value = str(self)
        if value.isascii():
            return str(super().fold(policy=policy))
        linesep = policy.linesep
        encoded = Header(value, "utf-8", header_name=self.name).encode(
            linesep=linesep, maxlinelen=policy.max_line_length)
        return f"{self.name}: {encoded}{linesep}"


class _UniqueEncodedUnstructured(_EncodedUnstructured):
    max_count = 1


_HEADERS = HeaderRegistry(default_class=_EncodedUnstructured)
_HEADERS.map_to_type("subject", _UniqueEncodedUnstructured)

# CRLF line ends, lines folded at 78, no 8-bit bodies (see the module docstring).
POLICY = email.policy.SMTP.clone(cte_type="7bit", header_factory=_HEADERS)

# Headers the message builder writes itself; an extra header may not replace or repeat them.
RESERVED_HEADERS = frozenset({
    "bcc", "cc", "content-transfer-encoding", "content-type", "date", "from", "message-id", "mime-version",
    "reply-to", "return-path", "sender", "subject", "to",
})

_LINE_BREAK = re.compile(r"[\r\n\x00]")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # printable ASCII except ':' (RFC 5322 ftext)
_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_DOMAIN = re.compile(r"[^\s@<>\"(),;:\[\]\\]+")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)")


def _refuse_line_breaks(what: str, value: str) -> None:
    if _LINE_BREAK.search(value):
        raise ValueError(f"{what} contains a line break (CR, LF or NUL): header injection refused")


def parse_mailbox(what: str, value: str) -> Address:
    """One address, bare (`a@example.org`) or with a display name (`Name <a@example.org>`)."""
    _refuse_line_breaks(what, value)
    bare = _BARE_ADDRESS.fullmatch(value)
    if bare:  # the common case, without the cost of the header parser
        return Address(username=bare[1], domain=bare[2])
    try:
        header = POLICY.header_factory("To", value)
    except (email.errors.HeaderParseError, IndexError, ValueError) as exc:
        raise ValueError(f"{what} is not an email address: {value!r}") from exc
    addresses: tuple[Address, ...] = header.addresses if isinstance(header, AddressHeader) else ()
    if len(addresses) != 1 or header.defects:
        raise ValueError(f"{what} must be exactly one email address: {value!r}")
    [address] = addresses
    if not address.username or not _DOMAIN.fullmatch(address.domain):
        raise ValueError(f"{what} is not an email address: {value!r}")
    return Address(display_name=address.display_name, username=address.username, domain=address.domain)


@dataclass(frozen=True)
class OutgoingEmail:
    """One email to one recipient. Checked when made: a bad address or a line break in a header
    raises `ValueError`. `headers` are extra headers (`X-Clarion-Notification-Id`, …)."""

    to: str
    subject: str
    text: str
    html: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id: str | None = None

    def __post_init__(self) -> None:
        parse_mailbox("to", self.to)
        _refuse_line_breaks("subject", self.subject)
        if self.reply_to is not None:
            parse_mailbox("reply_to", self.reply_to)
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the message builder, not by extra headers")
            _refuse_line_breaks(f"header {name}", value)
        if self.message_id is not None and not _MESSAGE_ID.fullmatch(self.message_id):
            raise ValueError(f"message_id must look like <id@domain>: {self.message_id!r}")
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclass(frozen=True)
class PreparedMessage:
    """The built message, its bytes as they go after DATA, and the envelope."""

    message: EmailMessage
    data: bytes
    envelope_from: str
    envelope_to: str
    message_id: str


def new_message_id(sender: Address) -> str:
    """A fresh `<…@domain>` on the sender's domain."""
    return make_msgid(domain=sender.domain)


def build_message(outgoing: OutgoingEmail, sender: Address, *,
                  now: datetime | None = None) -> PreparedMessage:
    """The MIME message for `outgoing`, sent as `sender` (the channel's From)."""
    recipient = parse_mailbox("to", outgoing.to)
    message_id = outgoing.message_id or new_message_id(sender)
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = recipient
    if outgoing.reply_to is not None:
        message["Reply-To"] = parse_mailbox("reply_to", outgoing.reply_to)
    message["Subject"] = outgoing.subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id
    for name, value in outgoing.headers.items():
        message[name] = value
    message.set_content(outgoing.text)
    if outgoing.html is not None:
        message.add_alternative(outgoing.html, subtype="html")
        for part in message.iter_parts():
            del part["MIME-Version"]  # set_content puts one on each part; it belongs on the top only
    return PreparedMessage(message, message.as_bytes(policy=POLICY), sender.addr_spec, recipient.addr_spec,
                           message_id)
