"""Webhook payloads parsed element by element into InboundMessage / StatusUpdate / EchoMessage,
with malformed elements quarantined instead of refusing the delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.whatsapp.events import EchoMessage, InboundMessage, StatusUpdate
from bot.whatsapp.payload import Delivery, PayloadError, parse_delivery

PAYLOADS = Path(__file__).parent / "payloads"
PN = "106540352242922"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def extract_events(
    data: dict[str, Any], phone_number_id: str | None = PN
) -> tuple[list[InboundMessage], list[StatusUpdate], list[str]]:
    delivery = parse_delivery(data, phone_number_id)
    assert delivery.quarantined == []
    return delivery.messages, delivery.statuses, delivery.foreign


def value_of(data: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = data["entry"][0]["changes"][0]["value"]
    return value


def one_message(name: str) -> InboundMessage:
    messages, statuses, foreign = extract_events(load(name), PN)
    assert statuses == [] and foreign == []
    assert len(messages) == 1
    msg = messages[0]
    assert msg.phone_number_id == PN
    # The event is the web/worker contract: it must survive a JSON round trip.
    assert InboundMessage.model_validate(msg.model_dump(mode="json")) == msg
    return msg


def test_every_sample_parses_without_quarantine() -> None:
    names = sorted(p.stem for p in PAYLOADS.glob("*.json"))
    assert len(names) >= 28
    for name in names:
        delivery = parse_delivery((PAYLOADS / f"{name}.json").read_bytes())
        assert isinstance(delivery, Delivery)
        assert delivery.quarantined == [], name


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
    assert StatusUpdate.model_validate(status.model_dump(mode="json")) == status


def test_status_failed_carries_error() -> None:
    _, [status], _ = extract_events(load("status_failed"), PN)
    assert status.status == "failed"
    assert status.error_code == 131047
    assert status.error_title == "Re-engagement message"


def test_unknown_status_value_is_quarantined() -> None:
    data = load("status_sent")
    value_of(data)["statuses"][0]["status"] = "teleported"
    delivery = parse_delivery(data, PN)
    assert delivery.statuses == []
    [kept] = delivery.quarantined
    assert (kept.element, kept.cause, kept.wamid) == ("status", "unknown_status", "wamid.sent1")
    assert "teleported" in kept.raw and "teleported" not in kept.reason


def test_value_level_errors_yield_no_events() -> None:
    assert extract_events(load("value_errors"), PN) == ([], [], [])


def test_foreign_phone_number_id() -> None:
    assert extract_events(load("foreign_phone"), PN) == ([], [], ["999999999999999"])
    # Without a filter every phone number's events are returned.
    [msg], _, _ = extract_events(load("foreign_phone"), None)
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
    assert (event.wa_id, event.user_id) == ("", "US.13491208655302741918")
    assert event.address == "US.13491208655302741918"
    assert event.contact_name == "Bob"


def test_identity_change_system_messages() -> None:
    data = load("system")
    msg = data["entry"][0]["changes"][0]["value"]["messages"][0]
    msg["from_user_id"] = "US.111"
    msg["system"].update({"user_id": "US.222", "previous_user_id": "US.111"})
    [event], _, _ = extract_events(data, PN)
    change = event.identity_change
    assert change is not None and change.type == "user_changed_number"
    assert (change.previous_wa_id, change.wa_id) == (msg["from"], "16505554321")
    assert (change.previous_user_id, change.user_id) == ("US.111", "US.222")

    msg["type"] = "system"
    msg["system"] = {"type": "user_changed_user_id", "user_id": "US.333",
                     "previous_user_id": "US.222", "body": "User changed"}
    del msg["from"]
    [event], _, _ = extract_events(data, PN)
    assert event.identity_change is not None
    assert (event.identity_change.type, event.identity_change.user_id) == (
        "user_changed_user_id", "US.333")
    assert event.identity_change.wa_id is None


def test_edit_revoke_welcome_and_group() -> None:
    data = load("text")
    value = data["entry"][0]["changes"][0]["value"]
    msg = value["messages"][0]
    msg["group_id"] = "GROUP1"
    [event], _, _ = extract_events(data, PN)
    assert event.group_id == "GROUP1"
    del msg["text"], msg["group_id"]
    msg.update(type="edit", edit={"original_message_id": "wamid.orig",
                                  "message": {"type": "text", "text": {"body": "new words"}}})
    [event], _, _ = extract_events(data, PN)
    assert (event.kind, event.text, event.original_wamid) == ("edit", "new words", "wamid.orig")
    del msg["edit"]
    msg.update(type="revoke", revoke={"original_message_id": "wamid.orig"})
    [event], _, _ = extract_events(data, PN)
    assert (event.kind, event.text, event.original_wamid) == ("revoke", None, "wamid.orig")
    del msg["revoke"]
    msg["type"] = "request_welcome"
    [event], _, _ = extract_events(data, PN)
    assert event.kind == "request_welcome"


def test_status_recipient_user_id() -> None:
    data = load("status_sent")
    status = data["entry"][0]["changes"][0]["value"]["statuses"][0]
    status["recipient_user_id"] = "US.444"
    _, [update], _ = extract_events(data, PN)
    assert update.recipient_user_id == "US.444"


def test_non_whatsapp_object_is_ignored() -> None:
    data = load("text")
    data["object"] = "page"
    delivery = parse_delivery(data, PN)
    assert delivery.object == "page"
    assert (delivery.messages, delivery.quarantined) == ([], [])


def test_changes_without_metadata_are_not_messages() -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {"event": "X"}}]}],
    }
    delivery = parse_delivery(payload, PN)
    assert delivery.event_count == 0 and delivery.quarantined == []


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b""])
def test_a_body_that_is_no_json_object_is_a_400(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse_delivery(body, PN)
    assert info.value.status_code == 400
    assert "JSON" in info.value.reason


def test_deep_nesting_is_a_400() -> None:
    with pytest.raises(PayloadError, match=r"nested too deeply|not valid JSON"):
        parse_delivery(b"[" * 100_000 + b"]" * 100_000, PN)


# -- one odd element never refuses the others ------------------------------------------------


def _batch_with(bad: dict[str, Any]) -> dict[str, Any]:
    data = load("text")
    value = value_of(data)
    good2 = dict(value["messages"][0], id="wamid.good2")
    value["messages"] = [value["messages"][0], bad, good2]
    value["statuses"] = value_of(load("status_sent"))["statuses"]
    return data


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        # No id at all.
        ({"from": "16505551234", "type": "text", "text": {"body": "x"}}, "id"),
        # A word where Meta sends a number.
        (
            {"from": "1", "id": "wamid.bad", "type": "location",
             "location": {"latitude": "north-ish", "longitude": 2}},
            "location.latitude",
        ),
        # A wamid longer than the event contract allows.
        ({"from": "1", "id": "w" * 300, "type": "text", "text": {"body": "x"}}, "wamid"),
        # Not even an object.
        ("sk-SECRET-VALUE", "Input should be a valid dictionary"),
        # A list where an object belongs.
        ({"from": "1", "id": "wamid.bad", "type": "text", "text": ["x"]}, "text"),
    ],
)
def test_a_malformed_message_is_quarantined_and_the_rest_proceed(
    bad: Any, fragment: str
) -> None:
    delivery = parse_delivery(_batch_with(bad), PN)
    assert [m.wamid for m in delivery.messages][1:] == ["wamid.good2"]
    assert len(delivery.messages) == 2
    assert len(delivery.statuses) == 1
    [kept] = delivery.quarantined
    assert kept.element == "message"
    assert kept.cause == "invalid"
    assert kept.path == "entry[0].changes[0].value.messages[1]"
    assert kept.phone_number_id == PN and kept.field == "messages"
    assert fragment in kept.reason
    assert "SECRET" not in kept.reason and "north-ish" not in kept.reason
    assert json.loads(kept.raw) == bad


def test_interactive_without_type_is_understood() -> None:
    data = load("interactive_button_reply")
    del value_of(data)["messages"][0]["interactive"]["type"]
    [msg], _, _ = extract_events(data)
    assert (msg.kind, msg.text) == ("interactive", "Cancel my order")
    assert msg.details["interactive_type"] == "button_reply"


def test_numbers_where_meta_sends_strings_are_taken() -> None:
    data = load("text")
    msg = value_of(data)["messages"][0]
    msg["from"], msg["timestamp"] = 16505551234, 1749416383
    value_of(data)["contacts"][0]["wa_id"] = 16505551234
    [event], _, _ = extract_events(data)
    assert event.wa_id == "16505551234"
    assert event.contact_name == "Sheena Nelson"
    assert event.timestamp == datetime.fromtimestamp(1749416383, tz=UTC)


def test_malformed_status_is_quarantined() -> None:
    data = load("status_sent")
    statuses = value_of(data)["statuses"]
    statuses.append({"id": "wamid.nostatus"})
    statuses.append(dict(statuses[0], id="wamid.sent9"))
    delivery = parse_delivery(data, PN)
    assert [s.wamid for s in delivery.statuses] == ["wamid.sent1", "wamid.sent9"]
    [kept] = delivery.quarantined
    assert (kept.element, kept.wamid) == ("status", "wamid.nostatus")
    assert "status" in kept.reason


@pytest.mark.parametrize(
    ("payload", "element", "fragment"),
    [
        ({"entry": []}, "delivery", "object"),
        ({"object": "whatsapp_business_account", "entry": "nope"}, "delivery", "entry"),
        ({"object": "whatsapp_business_account", "entry": [{"changes": "x"}]}, "entry", "changes"),
        ({"object": "whatsapp_business_account", "entry": [{"changes": [7]}]}, "change", "change"),
        (
            {"object": "whatsapp_business_account",
             "entry": [{"changes": [{"field": "messages", "value": {"metadata": {}}}]}]},
            "change",
            "phone_number_id",
        ),
    ],
)
def test_a_malformed_envelope_is_quarantined(
    payload: dict[str, Any], element: str, fragment: str
) -> None:
    delivery = parse_delivery(payload, PN)
    assert delivery.event_count == 0
    [kept] = delivery.quarantined
    assert kept.element == element
    assert fragment in kept.reason


def test_a_bad_entry_does_not_stop_the_next() -> None:
    good = load("text")
    payload = {"object": "whatsapp_business_account",
               "entry": [{"changes": "x"}, good["entry"][0]]}
    delivery = parse_delivery(payload, PN)
    assert len(delivery.messages) == 1
    assert [q.path for q in delivery.quarantined] == ["entry[0]"]


def test_elements_over_the_cap_are_quarantined_not_returned() -> None:
    data = load("text")
    value = value_of(data)
    first = value["messages"][0]
    value["messages"] = [dict(first, id=f"wamid.n{i}") for i in range(12)]
    value["statuses"] = value_of(load("status_sent"))["statuses"]
    delivery = parse_delivery(data, PN, max_events=10)
    assert [m.wamid for m in delivery.messages] == [f"wamid.n{i}" for i in range(10)]
    assert delivery.statuses == []
    assert [(q.element, q.cause, q.wamid) for q in delivery.quarantined] == [
        ("message", "over_cap", "wamid.n10"),
        ("message", "over_cap", "wamid.n11"),
        ("status", "over_cap", "wamid.sent1"),
    ]
    assert "10 events" in delivery.quarantined[0].reason


# -- change.field ------------------------------------------------------------------------------


def test_other_fields_are_neither_messages_nor_statuses() -> None:
    delivery = parse_delivery(load("calls"), PN)
    assert delivery.event_count == 0 and delivery.quarantined == []
    assert delivery.other_fields == ["calls"]
    data = load("status_sent")
    data["entry"][0]["changes"][0]["field"] = "message_template_status_update"
    assert parse_delivery(data, PN).other_fields == ["message_template_status_update"]
    data["entry"][0]["changes"][0]["field"] = "something_new"
    delivery = parse_delivery(data, PN)
    assert (delivery.statuses, delivery.other_fields) == ([], ["other"])


def test_message_echo_is_an_echo() -> None:
    delivery = parse_delivery(load("echo"), PN)
    assert delivery.messages == [] and delivery.statuses == []
    [echo] = delivery.echoes
    assert isinstance(echo, EchoMessage)
    assert (echo.kind, echo.text) == ("text", "A person from the shop here: yes, in red too.")
    assert echo.wa_id == echo.address == "16505551234"
    assert echo.user_id == "US.13491208655302741918"
    assert EchoMessage.model_validate(echo.model_dump(mode="json")) == echo


def test_echo_of_an_edit_and_a_foreign_echo() -> None:
    data = load("echo")
    value = value_of(data)
    value["message_echoes"][0].update(
        type="edit", edit={"original_message_id": "wamid.orig",
                           "message": {"type": "text", "text": {"body": "fixed"}}}
    )
    [echo] = parse_delivery(data, PN).echoes
    assert (echo.kind, echo.text, echo.original_wamid) == ("edit", "fixed", "wamid.orig")
    value["metadata"]["phone_number_id"] = "999"
    assert parse_delivery(data, PN).foreign == ["999"]


# -- today's identities and message kinds ------------------------------------------------------


def test_bsuid_only_sender_today() -> None:
    msg = one_message("text_bsuid_only")
    assert msg.wa_id == ""  # Meta sent "" for the phone number
    assert msg.user_id == "US.13491208655302741918"
    assert msg.parent_user_id == "US.ENT.11815799212886844830"
    assert msg.address == msg.user_id  # a reply goes to the BSUID
    assert msg.contact_name == "Rosa"


def test_sender_with_phone_and_bsuid() -> None:
    data = load("text")
    value = value_of(data)
    value["contacts"][0]["user_id"] = "US.1"
    value["messages"][0]["from_user_id"] = "US.1"
    [msg], _, _ = extract_events(data)
    assert (msg.wa_id, msg.user_id, msg.address) == ("16505551234", "US.1", "16505551234")


def test_identity_change_user_id() -> None:
    msg = one_message("system_user_id_changed")
    assert msg.kind == "system"
    change = msg.identity_change
    assert change is not None
    assert change.type == "user_changed_user_id"
    assert (change.previous_user_id, change.user_id) == ("US.OLD1", "US.NEW1")
    assert (change.previous_parent_user_id, change.parent_user_id) == ("US.ENT.OLD", "US.ENT.NEW")
    assert change.wa_id is None


def test_identity_change_number() -> None:
    msg = one_message("system")
    change = msg.identity_change
    assert change is not None and change.type == "user_changed_number"
    assert (change.previous_wa_id, change.wa_id) == ("16505551234", "16505554321")


def test_edit_revoke_welcome_group_and_order() -> None:
    edit = one_message("edit")
    assert (edit.kind, edit.text, edit.original_wamid) == (
        "edit", "Does it come in blue?", "wamid.original1"
    )
    assert edit.details["edited_type"] == "text"
    revoke = one_message("revoke")
    assert (revoke.kind, revoke.text, revoke.original_wamid) == (
        "revoke", None, "wamid.original1"
    )
    welcome = one_message("request_welcome")
    assert (welcome.kind, welcome.text) == ("request_welcome", None)
    group = one_message("group_text")
    assert group.group_id == "Y2FwaV9ncm91cDoxNjUwNTU1MTIzNA"
    assert group.kind == "text"
    data = load("order")
    del value_of(data)["messages"][0]["order"]["text"]
    [order], _, _ = extract_events(data)
    assert (order.kind, order.text) == ("order", None)
    assert order.details["items"][0]["product_retailer_id"] == "di9ozbzfi4"


def test_status_with_bsuid_recipient() -> None:
    data = load("status_sent")
    status = value_of(data)["statuses"][0]
    status["recipient_id"] = ""
    status["recipient_user_id"] = "US.7"
    _, [update], _ = extract_events(data)
    assert (update.recipient_id, update.recipient_user_id) == (None, "US.7")
