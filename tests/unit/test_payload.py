"""Webhook payload models and their normalization into InboundMessage / StatusUpdate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.whatsapp.events import InboundMessage
from bot.whatsapp.payload import PayloadError, WebhookPayload, extract_events, parse_payload

PAYLOADS = Path(__file__).parent / "payloads"
PN = "106540352242922"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def one_message(name: str) -> InboundMessage:
    messages, statuses, foreign = extract_events(load(name), PN)
    assert statuses == [] and foreign == []
    assert len(messages) == 1
    msg = messages[0]
    assert msg.phone_number_id == PN
    # The event is the web/worker contract: it must survive a JSON round trip.
    assert InboundMessage.model_validate(msg.model_dump(mode="json")) == msg
    return msg


def test_every_sample_parses() -> None:
    names = sorted(p.stem for p in PAYLOADS.glob("*.json"))
    assert len(names) >= 20
    for name in names:
        assert isinstance(parse_payload((PAYLOADS / f"{name}.json").read_bytes()), WebhookPayload)


def test_text() -> None:
    msg = one_message("text")
    assert msg.kind == "text"
    assert msg.text == "Does the coffee maker come in red?"
    assert msg.wa_id == "16505551234"
    assert msg.contact_name == "Sheena Nelson"
    assert msg.wamid.startswith("wamid.")
    assert msg.timestamp == datetime.fromtimestamp(1749416383, tz=UTC)
    assert msg.details == {}


def test_text_reply_keeps_context() -> None:
    msg = one_message("text_reply")
    assert msg.text == "And in blue?"
    assert msg.details["context_id"].startswith("wamid.")


def test_template_button() -> None:
    msg = one_message("button")
    assert (msg.kind, msg.text) == ("button", "Stop promotions")
    assert msg.details["payload"] == "Unsubscribe"


def test_interactive_button_reply() -> None:
    msg = one_message("interactive_button_reply")
    assert (msg.kind, msg.text) == ("interactive", "Cancel my order")
    assert msg.details["interactive_type"] == "button_reply"
    assert msg.details["reply_id"] == "cancel-order"


def test_interactive_list_reply() -> None:
    msg = one_message("interactive_list_reply")
    assert (msg.kind, msg.text) == ("interactive", "Express shipping")
    assert msg.details == {
        "interactive_type": "list_reply",
        "reply_id": "priority_express",
        "description": "Next-day delivery",
        "context_id": "wamid.interactive2",
    }


def test_image_caption_and_no_url() -> None:
    msg = one_message("image")
    assert (msg.kind, msg.text) == ("image", "This is the one I got")
    assert msg.details["media_id"] == "1003383421387256"
    assert msg.details["mime_type"] == "image/jpeg"
    # The media URL carries a signed hash: it is not passed on.
    assert "url" not in msg.details
    assert "lookaside" not in json.dumps(msg.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("name", "kind", "text", "extra"),
    [
        ("audio", "audio", None, {"voice": True, "mime_type": "audio/ogg; codecs=opus"}),
        ("video", "video", "Unboxing", {"mime_type": "video/mp4"}),
        ("document", "document", "Receipt", {"filename": "receipt.pdf"}),
        ("sticker", "sticker", None, {"animated": False, "mime_type": "image/webp"}),
    ],
)
def test_media(name: str, kind: str, text: str | None, extra: dict[str, Any]) -> None:
    msg = one_message(name)
    assert (msg.kind, msg.text) == (kind, text)
    assert msg.details["media_id"]
    for key, value in extra.items():
        assert msg.details[key] == value


def test_location() -> None:
    msg = one_message("location")
    assert msg.kind == "location"
    assert msg.text == "Meta Headquarters, 1 Hacker Way, Menlo Park, CA 94025"
    assert msg.details["latitude"] == pytest.approx(37.483307)
    assert msg.details["longitude"] == pytest.approx(-122.148981)


def test_location_without_name_has_no_text() -> None:
    data = load("location")
    loc = data["entry"][0]["changes"][0]["value"]["messages"][0]["location"]
    del loc["name"], loc["address"]
    [msg], _, _ = extract_events(data, PN)
    assert msg.text is None
    assert "latitude" in msg.details


def test_contacts() -> None:
    msg = one_message("contacts")
    assert msg.kind == "contacts"
    assert msg.text is None
    assert msg.details["contacts"] == [
        {"name": "Barbara J. Johnson", "phones": ["+1 (415) 555-0123"]}
    ]


def test_reaction() -> None:
    msg = one_message("reaction")
    assert msg.kind == "reaction"
    assert msg.text is None
    assert msg.details == {"message_id": "wamid.sent1", "emoji": "\N{THUMBS UP SIGN}"}


def test_order() -> None:
    msg = one_message("order")
    assert (msg.kind, msg.text) == ("order", "Please deliver after 5pm")
    assert msg.details["catalog_id"] == "194836987003835"
    assert msg.details["items"][0]["quantity"] == 2


def test_system_message_has_no_contacts() -> None:
    msg = one_message("system")
    assert msg.kind == "system"
    assert msg.contact_name is None
    assert msg.text is not None and "changed from" in msg.text
    assert msg.details == {"system_type": "user_changed_number", "new_wa_id": "16505554321"}


def test_unsupported_carries_errors() -> None:
    msg = one_message("unsupported")
    assert msg.kind == "unsupported"
    assert msg.text is None
    assert msg.details["errors"][0]["code"] == 131051
    assert msg.details["errors"][0]["details"] == "Message type is currently not supported."


def test_unknown_future_type_is_kept() -> None:
    msg = one_message("unknown_type")
    assert msg.kind == "unknown"
    assert msg.details == {"type": "hologram"}


def test_known_type_without_body_is_unknown() -> None:
    data = load("text")
    del data["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    [msg], _, _ = extract_events(data, PN)
    assert msg.kind == "unknown"
    assert msg.details == {"type": "text"}


def test_status_sent_with_conversation_and_pricing() -> None:
    messages, statuses, foreign = extract_events(load("status_sent"), PN)
    assert messages == [] and foreign == []
    [status] = statuses
    assert status.wamid == "wamid.sent1"
    assert status.status == "sent"
    assert status.recipient_id == "16505551234"
    assert status.error_code is None
    assert status.timestamp == datetime.fromtimestamp(1750263773, tz=UTC)
    model = parse_payload(json.dumps(load("status_sent")))
    parsed = model.entry[0].changes[0].value.statuses[0]
    assert parsed.pricing is not None and parsed.pricing.category == "service"
    assert parsed.conversation is not None and parsed.conversation.origin is not None
    assert parsed.conversation.origin.type == "service"


def test_status_failed_carries_error() -> None:
    _, [status], _ = extract_events(load("status_failed"), PN)
    assert status.status == "failed"
    assert status.error_code == 131047
    assert status.error_title == "Re-engagement message"


def test_unknown_status_value_is_skipped() -> None:
    data = load("status_sent")
    data["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "teleported"
    assert extract_events(data, PN) == ([], [], [])


def test_value_level_errors_yield_no_events() -> None:
    assert extract_events(load("value_errors"), PN) == ([], [], [])
    value = parse_payload(json.dumps(load("value_errors"))).entry[0].changes[0].value
    assert value.errors[0].code == 130429


def test_foreign_phone_number_id() -> None:
    assert extract_events(load("foreign_phone"), PN) == ([], [], ["999999999999999"])
    # Without a filter every phone number's events are returned.
    [msg], _, _ = extract_events(load("foreign_phone"))
    assert msg.phone_number_id == "999999999999999"


def test_mixed_batch_and_contact_matching() -> None:
    data = load("text")
    value = data["entry"][0]["changes"][0]["value"]
    value["contacts"].append({"profile": {"name": "Other"}, "wa_id": "447700900123"})
    second = dict(value["messages"][0], id="wamid.second", **{"from": "447700900123"})
    value["messages"].append(second)
    value["statuses"] = load("status_sent")["entry"][0]["changes"][0]["value"]["statuses"]
    messages, statuses, _ = extract_events(data, PN)
    assert [m.contact_name for m in messages] == ["Sheena Nelson", "Other"]
    assert len(statuses) == 1


def test_unknown_fields_are_ignored() -> None:
    data = load("text")
    data["brand_new_top_level"] = {"x": 1}
    msg = data["entry"][0]["changes"][0]["value"]["messages"][0]
    msg["text"]["new_field"] = [1, 2, 3]
    msg["identity_key_hash"] = "abc"
    [event], _, _ = extract_events(data, PN)
    assert event.text == "Does the coffee maker come in red?"


def test_bsuid_only_sender() -> None:
    data = load("text")
    value = data["entry"][0]["changes"][0]["value"]
    msg = value["messages"][0]
    del msg["from"]
    msg["from_user_id"] = "US.13491208655302741918"
    value["contacts"] = [{"profile": {"name": "Bob"}, "user_id": "US.13491208655302741918"}]
    [event], _, _ = extract_events(data, PN)
    assert event.wa_id == "US.13491208655302741918"
    assert event.contact_name == "Bob"


def test_non_whatsapp_object_is_ignored() -> None:
    data = load("text")
    data["object"] = "page"
    assert extract_events(data, PN) == ([], [], [])


def test_changes_without_metadata_are_skipped() -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "account_update", "value": {"event": "X"}}]}],
    }
    assert extract_events(payload, PN) == ([], [], [])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1, 2]", 400, "not a JSON object"),
        (b'{"entry": []}', 422, "object"),
        (b'{"object": "whatsapp_business_account", "entry": "nope"}', 422, "entry"),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": '
            b'{"metadata": {"phone_number_id": "1"}, "messages": [{"type": "text"}]}}]}]}',
            422,
            "messages.0.id",
        ),
    ],
)
def test_malformed(body: bytes, status: int, fragment: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(body)
    assert info.value.status_code == status
    assert fragment in info.value.reason


def test_malformed_reason_does_not_echo_values() -> None:
    body = json.dumps({"object": "whatsapp_business_account", "entry": "sk-SECRET-VALUE"})
    with pytest.raises(PayloadError) as info:
        parse_payload(body)
    assert "SECRET" not in info.value.reason
