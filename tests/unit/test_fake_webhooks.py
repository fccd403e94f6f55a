"""The webhook builders emit the payloads Meta posts today (BSUIDs, every kind of change)."""

from __future__ import annotations

from typing import Any

import pytest

from released.fakes import webhooks as wh
from released.fakes.webhooks import WhatsAppUser

PN = "106540352242922"


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    assert payload["object"] == "whatsapp_business_account"
    [entry] = payload["entry"]
    [change] = entry["changes"]
    result: dict[str, Any] = change["value"]
    return result


def field_of(payload: dict[str, Any]) -> str:
    return str(payload["entry"][0]["changes"][0]["field"])


def test_phone_user_has_phone_and_bsuid() -> None:
    payload = wh.text_message_event(phone_number_id=PN, text="hi", from_number="+34 600 111 222")
    value = value_of(payload)
    [contact] = value["contacts"]
    [message] = value["messages"]
    assert contact["wa_id"] == message["from"] == "34600111222"
    assert contact["user_id"] == message["from_user_id"] == wh.bsuid_for("34600111222")
    assert wh.is_bsuid(contact["user_id"])
    assert value["metadata"]["phone_number_id"] == PN
    assert message["text"] == {"body": "hi"}


@pytest.mark.parametrize(("hidden", "present"), [("absent", False), ("empty", True)])
def test_username_user_without_phone(hidden: Any, present: bool) -> None:
    user = WhatsAppUser.username_only("Ana", hidden_phone=hidden,
                                      parent_user_id="US.ENT.11815799212886844830")
    value = value_of(wh.text_message_event(phone_number_id=PN, text="hi", user=user))
    [contact] = value["contacts"]
    [message] = value["messages"]
    assert ("from" in message) is present and ("wa_id" in contact) is present
    assert message.get("from", "") == contact.get("wa_id", "") == ""
    assert message["from_user_id"] == contact["user_id"] == user.user_id
    assert message["from_parent_user_id"] == contact["parent_user_id"]
    assert contact["profile"] == {"name": "Ana", "username": "@ana"}
    assert user.address == {"recipient": user.user_id}
    assert WhatsAppUser(phone="34600111222").address == {"to": "34600111222"}


def test_statuses_carry_recipient_user_id() -> None:
    user = WhatsAppUser.username_only()
    status = value_of(wh.status_event(phone_number_id=PN, message_id="wamid.1", user=user,
                                      status="read"))["statuses"][0]
    assert status["recipient_user_id"] == user.user_id
    assert "recipient_id" not in status
    by_phone = value_of(wh.status_event(phone_number_id=PN, message_id="wamid.1",
                                        recipient_id="34600111222"))["statuses"][0]
    assert by_phone["recipient_id"] == "34600111222"
    assert by_phone["recipient_user_id"] == wh.bsuid_for("34600111222")
    failed = value_of(wh.failed_status_event(phone_number_id=PN, message_id="wamid.2",
                                             user=user, code=131047))["statuses"][0]
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == 131047
    with pytest.raises(ValueError, match="recipient"):
        wh.status_event(phone_number_id=PN, message_id="wamid.3")


def test_identity_change_system_messages_have_no_contacts() -> None:
    user = WhatsAppUser(phone="34600111222")
    changed = value_of(wh.user_changed_user_id_event(phone_number_id=PN, user=user,
                                                     new_user_id="ES.99"))
    assert "contacts" not in changed
    [message] = changed["messages"]
    assert message["type"] == "system"
    assert message["system"] == {
        "body": f"User Test User changed from {user.user_id} to ES.99",
        "user_id": "ES.99",
        "previous_user_id": user.user_id,
        "type": "user_changed_user_id",
    }
    number = value_of(wh.user_changed_number_event(phone_number_id=PN, user=user,
                                                   new_phone="34699000111"))
    system = number["messages"][0]["system"]
    assert (system["type"], system["wa_id"], system["user_id"]) == (
        "user_changed_number", "34699000111", user.user_id)
    assert number["messages"][0]["from"] == "34600111222"


def test_every_message_kind() -> None:
    kinds = {
        "interactive": wh.interactive_reply_event(phone_number_id=PN, reply_id="b1", title="Yes"),
        "button": wh.button_event(phone_number_id=PN, text="Stop promotions"),
        "image": wh.media_message_event(phone_number_id=PN, kind="image", caption="my order"),
        "audio": wh.media_message_event(phone_number_id=PN, kind="audio", voice=True),
        "document": wh.media_message_event(phone_number_id=PN, kind="document"),
        "location": wh.location_event(phone_number_id=PN, name="Office"),
        "sticker": wh.sticker_event(phone_number_id=PN),
        "reaction": wh.reaction_event(phone_number_id=PN, reacted_message_id="wamid.r"),
        "edit": wh.edit_event(phone_number_id=PN, original_message_id="wamid.o", text="fixed"),
        "revoke": wh.revoke_event(phone_number_id=PN, original_message_id="wamid.o"),
        "order": wh.order_event(phone_number_id=PN),
        "request_welcome": wh.request_welcome_event(phone_number_id=PN),
        "unsupported": wh.unsupported_event(phone_number_id=PN, unsupported_type="poll"),
        "contacts": wh.contacts_message_event(phone_number_id=PN),
    }
    for kind, payload in kinds.items():
        [message] = value_of(payload)["messages"]
        assert message["type"] == kind
        assert message["from_user_id"]
        assert kind in message or kind == "request_welcome", kind
    image = value_of(kinds["image"])["messages"][0]["image"]
    assert image["caption"] == "my order" and image["mime_type"] == "image/jpeg"
    assert value_of(kinds["audio"])["messages"][0]["audio"]["voice"] is True
    edit = value_of(kinds["edit"])["messages"][0]["edit"]
    assert edit == {"original_message_id": "wamid.o",
                    "message": {"type": "text", "text": {"body": "fixed"}}}
    order = value_of(kinds["order"])["messages"][0]["order"]
    assert order["text"] == "" and order["product_items"][0]["quantity"] == 2
    unsupported = value_of(kinds["unsupported"])["messages"][0]
    assert unsupported["errors"][0]["code"] == 131051
    removed = value_of(wh.reaction_event(phone_number_id=PN, reacted_message_id="wamid.r",
                                         emoji=None))["messages"][0]["reaction"]
    assert removed == {"message_id": "wamid.r"}
    reply = value_of(kinds["interactive"])["messages"][0]
    assert reply["interactive"] == {"type": "button_reply",
                                    "button_reply": {"id": "b1", "title": "Yes"}}
    assert reply["context"]["id"] == "wamid.interactive-prompt"


def test_group_message_and_other_fields() -> None:
    group = value_of(wh.group_message_event(phone_number_id=PN))["messages"][0]
    assert group["group_id"]
    user = WhatsAppUser.username_only()
    echo = wh.message_echo_event(phone_number_id=PN, user=user, text="sent from the app")
    assert field_of(echo) == "smb_message_echoes"
    [sent] = value_of(echo)["message_echoes"]
    assert sent["to_user_id"] == user.user_id and "to" not in sent
    call = wh.call_event(phone_number_id=PN, user=user)
    assert field_of(call) == "calls"
    assert value_of(call)["calls"][0]["from_user_id"] == user.user_id
    update = wh.account_update_event(event="ACCOUNT_RESTRICTION")
    assert field_of(update) == "account_update"
    assert "metadata" not in value_of(update)
    assert value_of(update)["restriction_info"][0]["restriction_type"]


def test_batch_merges_like_meta() -> None:
    first = wh.text_message_event(phone_number_id=PN, text="one", from_number="1")
    second = wh.text_message_event(phone_number_id=PN, text="two", from_number="1")
    status = wh.status_event(phone_number_id=PN, message_id="wamid.s", recipient_id="1")
    other = wh.text_message_event(phone_number_id="999", text="three", from_number="2")
    elsewhere = wh.text_message_event(phone_number_id="888", text="four", waba_id="200")
    merged = wh.batch(first, second, [status, other], elsewhere)
    assert [e["id"] for e in merged["entry"]] == [wh.DEFAULT_WABA_ID, "200"]
    changes = merged["entry"][0]["changes"]
    assert len(changes) == 2
    assert [m["text"]["body"] for m in changes[0]["value"]["messages"]] == ["one", "two"]
    assert len(changes[0]["value"]["contacts"]) == 1
    assert changes[0]["value"]["statuses"][0]["id"] == "wamid.s"
    assert first["entry"][0]["changes"][0]["value"].get("statuses") is None
