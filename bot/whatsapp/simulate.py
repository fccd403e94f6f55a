"""Webhook deliveries as Meta sends them, for ``released say``, the tests and the benchmarks.

``text_message_payload`` builds the documented ``whatsapp_business_account`` envelope of one
inbound text message; ``signed_delivery`` returns the exact bytes and headers Meta would POST
(``X-Hub-Signature-256`` over the raw body with the app secret).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from bot.whatsapp.signature import sign


def new_wamid() -> str:
    """A fresh message id in the shape Meta uses (``wamid.`` + base64-ish text)."""
    return "wamid." + secrets.token_urlsafe(24)


def text_message_payload(
    phone_number_id: str,
    text: str,
    *,
    wa_id: str = "34600000001",
    name: str = "Test User",
    wamid: str | None = None,
    display_phone_number: str = "15550000001",
    timestamp: int | None = None,
) -> dict[str, Any]:
    """One inbound text message in Meta's webhook envelope."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": display_phone_number,
                                 "phone_number_id": phone_number_id},
                    "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                    "messages": [{
                        "from": wa_id,
                        "id": wamid or new_wamid(),
                        "timestamp": str(timestamp or int(time.time())),
                        "type": "text",
                        "text": {"body": text},
                    }],
                },
            }],
        }],
    }


def signed_delivery(payload: dict[str, Any], app_secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a signed webhook POST."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, app_secret)}
