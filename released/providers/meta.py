"""Meta's Graph API (WhatsApp Cloud API): version, error codes and what each one means.

One policy for the bot and the operator. Meta answers errors as
``{"error": {"message", "type", "code", "error_subcode", "error_user_title", "error_data":
{"details"}, "fbtrace_id"}}`` and decides on ``code`` more than on the HTTP status (it answers
some rate limits with 400), so a known code wins over the status; the status decides only when
the code is missing or unknown.

Typical use::

    info = parse_error(response.status_code, response.json(), response.headers)
    if info.retryable: ...                  # back off (info.retry_after when Meta said so)
    elif info.account_problem: ...          # token, permission or policy: no send can succeed
    elif info.kind is ErrorKind.REENGAGEMENT: ...  # 24-hour window closed: template only

:class:`ErrorKind` names the verdicts; :func:`classify` maps a (status, code) pair to one.
Texts taken from Meta's error body are kept whole: the caller redacts its secrets (and masks
phone numbers) first and clips afterwards, so a secret straddling a cut cannot leak.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

#: The Graph API version every call uses: v25.0 is supported until 2028-07-29 (v23.0 only
#: until 2027-10-08; v26.0 is the latest).
GRAPH_VERSION = "v25.0"
#: Meta's Graph API base URL with :data:`GRAPH_VERSION` (``META_GRAPH_URL``'s default).
DEFAULT_GRAPH_URL = f"https://graph.facebook.com/{GRAPH_VERSION}"

#: A text message body may hold at most this many characters.
MAX_TEXT_LENGTH = 4096
#: After a user's last message a business may answer with free text for this long (the
#: customer-service window); later only a template message is accepted (code 131047).
SERVICE_WINDOW_SECONDS = 24 * 3600
#: Meta redelivers an unacknowledged webhook for up to this long.
REDELIVERY_WINDOW_SECONDS = 7 * 24 * 3600


_PHONE_NUMBER = re.compile(r"^\+?[0-9]{1,20}$")


def is_phone_number(address: str) -> bool:
    """Whether ``address`` is a WhatsApp phone number (digits, as Meta's ``wa_id``/``from``)
    rather than a business-scoped user ID (``CC.`` followed by up to 128 characters)."""
    return bool(_PHONE_NUMBER.match(address))


def address_fields(address: str) -> dict[str, str]:
    """How a send request names its recipient: ``{"to": phone}`` for a phone number,
    ``{"recipient": bsuid}`` for a business-scoped user ID (``to`` is for phone numbers only,
    and wins when both are given; ``recipient`` needs Graph v25.0 or later)."""
    if not address:
        raise ValueError("a message needs a recipient: a phone number or a BSUID")
    return {"to": address} if is_phone_number(address) else {"recipient": address}


class ErrorKind(StrEnum):
    """What a Graph API error means for the caller."""

    RATE_LIMIT = "rate_limit"  # slow down and retry (throughput, pair rate, app rate limits)
    TEMPORARY = "temporary"  # Meta's side failed; retry later
    TOKEN = "token"  # noqa: S105 - the access token is invalid, expired or revoked
    PERMISSION = "permission"  # the token lacks a permission, or the asset is not shared
    POLICY = "policy"  # the account is blocked for a policy violation (lasts hours)
    ACCOUNT = "account"  # the account or number cannot send (locked, payment, unregistered)
    REENGAGEMENT = "reengagement"  # 24-hour customer-service window closed: template only
    RECIPIENT = "recipient"  # this user cannot receive the message
    TEMPLATE = "template"  # the template is missing, paused or does not fit the parameters
    INVALID = "invalid"  # the request itself is wrong (a bug on our side)
    WEBHOOK_VERIFICATION = "webhook_verification"  # Meta could not verify a callback URL
    UNKNOWN = "unknown"


#: Codes that ask the caller to slow down.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, 80007, 130429, 131048, 131056})
#: Codes of failures on Meta's side that a later retry may not meet.
TEMPORARY_CODES = frozenset({1, 2, 131000, 131016, 133004})
#: The access token is invalid or expired (``0`` is the AuthException of an unusable session).
TOKEN_CODES = frozenset({0, 102, 190})
#: Missing permission: 3, 10 and the 200-299 range, and 131005 (access denied).
PERMISSION_CODES = frozenset({3, 10, 131005, *range(200, 300)})
#: Temporarily blocked for policies violations (lasts hours).
POLICY_CODES = frozenset({368})
#: The business account or phone number cannot send: locked, payment problem, unregistered.
ACCOUNT_CODES = frozenset({131031, 131042, 133010})
#: More than 24 hours since the user's last message: only a template may be sent.
REENGAGEMENT_CODE = 131047
#: The recipient cannot receive this message.
RECIPIENT_CODES = frozenset({131021, 131026, 131030, 131050})
#: Template problems (missing, paused, disabled, wrong parameters).
TEMPLATE_CODES = frozenset({*range(132000, 132017), 132068, 132069})
#: Invalid parameters and unsupported content.
INVALID_CODES = frozenset({100, 131008, 131009, 131051, 131052, 131053})
#: The verification handshake against a new callback URL failed.
WEBHOOK_VERIFICATION_CODE = 2200

#: Kinds after which retrying the same request later can succeed.
RETRYABLE_KINDS = frozenset({ErrorKind.RATE_LIMIT, ErrorKind.TEMPORARY})
#: Kinds that stop every send of the account until a person fixes something.
ACCOUNT_PROBLEM_KINDS = frozenset(
    {ErrorKind.TOKEN, ErrorKind.PERMISSION, ErrorKind.POLICY, ErrorKind.ACCOUNT}
)

_BY_CODE: dict[int, ErrorKind] = {
    **dict.fromkeys(RATE_LIMIT_CODES, ErrorKind.RATE_LIMIT),
    **dict.fromkeys(TEMPORARY_CODES, ErrorKind.TEMPORARY),
    **dict.fromkeys(TOKEN_CODES, ErrorKind.TOKEN),
    **dict.fromkeys(PERMISSION_CODES, ErrorKind.PERMISSION),
    **dict.fromkeys(POLICY_CODES, ErrorKind.POLICY),
    **dict.fromkeys(ACCOUNT_CODES, ErrorKind.ACCOUNT),
    REENGAGEMENT_CODE: ErrorKind.REENGAGEMENT,
    **dict.fromkeys(RECIPIENT_CODES, ErrorKind.RECIPIENT),
    **dict.fromkeys(TEMPLATE_CODES, ErrorKind.TEMPLATE),
    **dict.fromkeys(INVALID_CODES, ErrorKind.INVALID),
    WEBHOOK_VERIFICATION_CODE: ErrorKind.WEBHOOK_VERIFICATION,
}

def classify(status: int | None, code: int | None = None) -> ErrorKind:
    """The meaning of a Graph API error from its HTTP ``status`` and Meta's ``code``.

    ``status`` is ``None`` when no answer came at all (timeout, refused connection): temporary.
    """
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is None or status >= 500 or status == 408:
        return ErrorKind.TEMPORARY
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status == 401:
        return ErrorKind.TOKEN
    if status == 403:
        return ErrorKind.PERMISSION
    if 400 <= status < 500:
        return ErrorKind.INVALID
    return ErrorKind.UNKNOWN


def retry_after(headers: Mapping[str, str] | None, *, cap: float = 86400.0) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), at most ``cap``;
    ``None`` when absent or unreadable."""
    if headers is None:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0 if seconds == seconds else None
    return min(seconds, cap)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True, slots=True)
class GraphErrorInfo:
    """A Graph API error, parsed: HTTP ``status`` (``None``: no answer), Meta's ``code`` and
    ``subcode``, a short ``title`` and ``details`` from the body, ``fbtrace_id``, the server's
    ``retry_after`` in seconds, and the :class:`ErrorKind`."""

    status: int | None
    code: int | None
    kind: ErrorKind
    subcode: int | None = None
    title: str | None = None
    details: str | None = None
    fbtrace_id: str | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (rate limits, Meta's own failures)."""
        return self.kind in RETRYABLE_KINDS

    @property
    def account_problem(self) -> bool:
        """Whether no message can be sent until a person fixes the token, a permission, a
        policy block or the account (190, 10, 200-299, 368, ...)."""
        return self.kind in ACCOUNT_PROBLEM_KINDS

    def summary(self, endpoint: str = "request") -> str:
        """``Graph API <endpoint>: HTTP 400, code 131047: <title>`` (no request data in it)."""
        text = f"Graph API {endpoint}: " + (
            f"HTTP {self.status}" if self.status is not None else "no answer"
        )
        if self.code is not None:
            text += f", code {self.code}"
        if self.title:
            text += f": {self.title}"
        return text


def parse_error(
    status: int | None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> GraphErrorInfo:
    """Parse a Graph API error answer: ``body`` is the decoded JSON (anything else is treated
    as an error without a body); ``headers`` give ``Retry-After``."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    code = _int(error.get("code"))
    subcode = _int(error.get("error_subcode"))
    title = error.get("error_user_title") or error.get("message")
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, Mapping) else None
    trace = error.get("fbtrace_id")
    return GraphErrorInfo(
        status=status,
        code=code,
        kind=classify(status, code),
        subcode=subcode,
        title=str(title) if title else None,
        details=str(details) if details else None,
        fbtrace_id=str(trace) if trace else None,
        retry_after=retry_after(headers),
    )
