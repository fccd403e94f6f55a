"""What Meta's and OpenAI's APIs accept, for the fakes to refuse what the real services refuse.

Two sources, both from ``../shared/contracts``:

- the published OpenAPI documents, whose schemas for the endpoints the project uses are
  extracted into the JSON files beside this module by ``hack/extract-contracts.py`` (shipped
  code cannot read ``../shared`` at run time); requests are validated against them with
  ``jsonschema``;
- the README's addenda (what changed after the documents were published), written here as
  explicit rules, each with a comment quoting the README line it implements.

Every ``check_*`` function returns None when the request is acceptable, else the reason the
real API gives (the fakes wrap it in the provider's error envelope).
"""

from __future__ import annotations

import re
from typing import Any

from released.fakes.webhooks import is_bsuid

MAX_TEXT_BODY = 4096
MAX_CALLBACK_URI = 200
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")


def _version(version: str) -> tuple[int, int]:
    match = _VERSION_RE.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_request(provider: str, operation: str, body: Any) -> str | None:
    """Validate ``body`` against the extracted schema of ``operation`` (none yet: accepted)."""
    return None


def check_meta_message(body: dict[str, Any], version: str) -> str | None:
    """``POST /{Version}/{Phone-Number-ID}/messages``: a send or a mark-as-read."""
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required and must be 'whatsapp'."
    if body.get("status") is not None:
        return _check_mark_read(body)
    problem = check_request("meta", "POST /{Version}/{Phone-Number-ID}/messages", body)
    if problem is not None:
        return problem
    problem = _check_addressing(body, version)
    if problem is not None:
        return problem
    msg_type = body.get("type", "text")
    if msg_type not in body:
        return f"The parameter {msg_type} is required."
    if msg_type == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
            return "The parameter text['body'] is required."
        if len(text["body"]) > MAX_TEXT_BODY:
            return f"Param text['body'] must be at most {MAX_TEXT_BODY} characters long."
    return None


def _check_mark_read(body: dict[str, Any]) -> str | None:
    # README "Mark as read with a typing indicator": {"messaging_product":"whatsapp",
    # "status":"read","message_id":…,"typing_indicator":{"type":"text"}}. Meta's document has
    # this only as an example ("Send typing indicator and read receipt"), not as a schema.
    if body.get("status") != "read":
        return "Param status must be 'read'."
    if not isinstance(body.get("message_id"), str) or not body["message_id"]:
        return "The parameter message_id is required."
    unexpected = set(body) - {"messaging_product", "status", "message_id", "typing_indicator"}
    if unexpected:
        return f'Unexpected key "{sorted(unexpected)[0]}" on param "status".'
    indicator = body.get("typing_indicator")
    if indicator is not None and indicator != {"type": "text"}:
        return "Param typing_indicator must be {\"type\": \"text\"}."
    return None


def _check_addressing(body: dict[str, Any], version: str) -> str | None:
    to = body.get("to")
    recipient = body.get("recipient")
    if to not in (None, "") and not isinstance(to, str):
        return "Param to must be a string."
    if isinstance(to, str) and is_bsuid(to):
        # README "Sending to a BSUID: put it in `recipient` and leave `to` out (`to` is for
        # phone numbers ...)".
        return (
            "Param to must be a phone number or a group id; to send to a business-scoped user "
            "ID, put it in recipient and leave to out."
        )
    if to:
        return None
    if recipient is not None and _version(version) < (25, 0):
        # README: "Sending by `recipient` works on current Graph versions (v25.0 and later);
        # older versions may ignore it." Ignored, the request has no recipient at all.
        return "The parameter to is required."
    if recipient is None:
        return "The parameter to is required."
    if not is_bsuid(recipient):
        # README: "A BSUID can be a two-letter prefix, a dot and up to 128 characters".
        return "Param recipient must be a business-scoped user ID (e.g. US.13491208655302741918)."
    return None


def check_callback_uri(uri: str, verify_token: Any) -> str | None:
    """A webhook override (phone number or WABA) that is being set (not removed)."""
    if len(uri) > MAX_CALLBACK_URI or not re.match(r"^https?://", uri):
        return (
            f"override_callback_uri must be an http(s) URL of at most {MAX_CALLBACK_URI} "
            "characters."
        )
    if not isinstance(verify_token, str) or not verify_token:
        return "The parameter verify_token is required."
    return None
