"""Handover to a person end to end: real processes (``LocalStack``: uvicorn, a Celery worker,
Redis, SQLite, the fakes of Meta and OpenAI), Meta's webhooks delivered by the fake, a
notification receiver on 127.0.0.1, and ``released conversations`` run as a person would,
with no flags (it finds the local bot and its admin token itself).

- a user asks for a person: the handover message, one signed notification, the bot silent
  until a person releases the conversation;
- a staff echo (``smb_message_echoes``) holds the conversation;
- a hold expires and the bot answers again;
- ``released conversations reply`` reaches the user through the fake Graph API;
- a notification receiver that takes the request and never answers does not delay the
  handover message (the worker's own task waits for it);
- the admin API refuses requests without its token, and nothing under ``/webhook`` (what the
  Ingress routes) reaches it.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.devstack import LocalStack
from bot.handover import verify_signature
from bot.whatsapp.signature import SIGNATURE_HEADER, sign
from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.webhooks import WhatsAppUser, message_echo_event, text_message_event

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NOTIFY_SECRET = "e2e-notification-secret-0123456789"


#: The longest a stalled receiver keeps a request unanswered (the test answers it sooner).
STALL_LIMIT = 60.0


class Receiver:
    """Collects the handover notifications the worker POSTs (127.0.0.1 only).

    While ``answering`` is clear it takes each request and answers nothing (at most
    ``STALL_LIMIT`` seconds): a receiver that hangs. ``waiting`` holds the connections of the
    requests it has not answered yet.
    """

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answering = threading.Event()
        self.answering.set()
        self.waiting: dict[str, socket.socket] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 1_000_000)
                body = self.rfile.read(length)
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if not receiver.answering.is_set():
                    user = str(json.loads(body).get("user"))
                    receiver.waiting[user] = self.connection
                    receiver.answering.wait(STALL_LIMIT)
                    receiver.waiting.pop(user, None)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:  # the worker gave up waiting meanwhile
                    pass

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/released"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[bytes]:
        return [body for _, body in self.received]

    def close(self) -> None:
        self.answering.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[LocalStack]:
    local = LocalStack(
        workdir=tmp_path_factory.mktemp("handover"),
        web_port=0,
        with_purge=False,
        extra_env={
            "HANDOVER_ENABLED": "true",
            "HANDOVER_NOTIFY_URL": receiver.url,
            "HANDOVER_NOTIFY_SECRET": NOTIFY_SECRET,
            "LOG_FORMAT": "json",
        },
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def meta(stack: LocalStack) -> FakeMeta:
    fake = FakeMeta.attach(stack.urls["fake_meta"])
    fake.reset()
    return fake


@pytest.fixture
def oai(stack: LocalStack) -> FakeOpenAI:
    fake = FakeOpenAI.attach(stack.urls["fake_openai"])
    fake.reset()
    return fake


def released(stack: LocalStack, *args: str) -> str:
    """Run ``released ARGS`` as a person on this machine would: no URL, no token given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELEASED_ADMIN", "ADMIN_TOKEN"))}
    env["RELEASED_HOME"] = str(stack.workdir)
    proc = subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def conversations(stack: LocalStack, state: str = "all") -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(
        released(stack, "conversations", "list", "--state", state, "--json")
    )["conversations"]
    return data


def the_conversation(stack: LocalStack, user: WhatsAppUser) -> dict[str, Any]:
    found = [c for c in conversations(stack) if c["user"] == user.phone]
    assert len(found) == 1, found
    return found[0]


def writes(stack: LocalStack, meta: FakeMeta, user: WhatsAppUser, text: str) -> str:
    """The user writes ``text`` (Meta's fake delivers it to the bot's webhook)."""
    event = text_message_event(phone_number_id=stack.env["PHONE_NUMBER_ID"], user=user,
                               text=text)
    result = meta.deliver(event, url=f"{stack.urls['web']}/webhook")
    assert result["status"] == 200, result
    return str(event["entry"][0]["changes"][0]["value"]["messages"][0]["id"])


#: Generous: a loaded CI machine runs the worker slowly; nothing waits this long when all is well.
WAIT = 120.0


def reply_to(meta: FakeMeta, wamid: str, timeout: float = WAIT) -> dict[str, Any]:
    found: list[dict[str, Any]] = meta.wait_for(
        lambda: [m for m in meta.sent() if m["context_message_id"] == wamid], timeout=timeout)
    return found[0]


def sent_to(meta: FakeMeta, user: WhatsAppUser) -> list[dict[str, Any]]:
    return [m for m in meta.sent() if m["to"] == user.phone]


def wait_until(predicate: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_a_user_asks_for_a_person(
    stack: LocalStack, meta: FakeMeta, oai: FakeOpenAI, receiver: Receiver
) -> None:
    ana = WhatsAppUser(phone="34611000001", name="Ana")
    first = writes(stack, meta, ana, "What is Released?")
    reply_to(meta, first)
    asks = writes(stack, meta, ana, "Quiero hablar con una persona")
    handover = reply_to(meta, asks)
    assert "passed your conversation to a person" in handover["text"]

    # One signed notification, naming the user and carrying what was said.
    wait_until(lambda: receiver.received)
    time.sleep(2.0)  # a second delivery would show up by now
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert verify_signature(NOTIFY_SECRET, body, headers["x-released-signature-256"])
    note = json.loads(body)
    assert note["reason"] == "user_request" and note["user"] == ana.phone
    assert note["id"] == headers["x-released-delivery"]
    assert "Quiero hablar con una persona" in [m["text"] for m in note["messages"]]

    # The bot is silent: the next messages are stored and counted, not answered.
    sends, asked = len(meta.sent()), len(oai.response_requests())
    for text in ("¿Hola?", "What is Released?"):
        writes(stack, meta, ana, text)
    wait_until(lambda: the_conversation(stack, ana)["heldMessages"] == 2)
    time.sleep(1.0)
    assert len(meta.sent()) == sends and len(oai.response_requests()) == asked
    conv = the_conversation(stack, ana)
    assert conv["state"] == "held" and conv["heldReason"] == "user_request"
    assert [c["id"] for c in conversations(stack, "held")] == [conv["id"]]
    shown = released(stack, "conversations", "show", str(conv["id"]))
    assert "held until" in shown and "¿Hola?" in shown

    # A person releases it: the bot answers again.
    assert "answered by the bot again" in released(stack, "conversations", "release",
                                                   str(conv["id"]))
    back = writes(stack, meta, ana, "What is Released?")
    assert "Kubernetes" in reply_to(meta, back)["text"]
    assert len(receiver.received) == 1


def test_a_staff_echo_holds_the_conversation(stack: LocalStack, meta: FakeMeta) -> None:
    bruno = WhatsAppUser(phone="34611000002", name="Bruno")
    first = writes(stack, meta, bruno, "What is Released?")
    reply_to(meta, first)
    echo = message_echo_event(phone_number_id=stack.env["PHONE_NUMBER_ID"], user=bruno,
                              text="Hola Bruno, te escribo desde la tienda")
    assert meta.deliver(echo, url=f"{stack.urls['web']}/webhook")["status"] == 200
    conv = wait_until(lambda: [c for c in conversations(stack, "held")
                               if c["user"] == bruno.phone])[0]
    assert conv["heldReason"] == "staff_echo"
    before = len(sent_to(meta, bruno))
    writes(stack, meta, bruno, "¡Gracias! ¿Y el precio?")
    wait_until(lambda: the_conversation(stack, bruno)["heldMessages"] == 1)
    time.sleep(1.0)
    assert len(sent_to(meta, bruno)) == before
    shown = json.loads(released(stack, "conversations", "show", str(conv["id"]), "--json"))
    assert [(m["source"], m["text"]) for m in shown["messages"]][-2:] == [
        ("echo", "Hola Bruno, te escribo desde la tienda"), (None, "¡Gracias! ¿Y el precio?")]


def test_a_hold_expires_and_the_bot_answers_again(stack: LocalStack, meta: FakeMeta) -> None:
    carla = WhatsAppUser(phone="34611000003", name="Carla")
    reply_to(meta, writes(stack, meta, carla, "What is Released?"))
    conv = the_conversation(stack, carla)
    # Held for an hour first, so that the silence is checked with no expiry to race against;
    # then the person shortens the hold to a few seconds and lets it run out.
    out = released(
        stack, "conversations", "hold", str(conv["id"]), "--for", "1h", "--reason", "Lucía"
    )
    assert "held until" in out and "Lucía" in out
    sends = len(sent_to(meta, carla))
    unanswered = writes(stack, meta, carla, "¿Sigues ahí?")
    wait_until(lambda: the_conversation(stack, carla)["heldMessages"] == 1)
    assert len(sent_to(meta, carla)) == sends
    out = released(stack, "conversations", "hold", str(conv["id"]), "--for", "3s")
    assert "held until" in out
    wait_until(lambda: the_conversation(stack, carla)["state"] == "bot", timeout=30)
    again = writes(stack, meta, carla, "What is Released?")
    assert "Kubernetes" in reply_to(meta, again)["text"]
    # What came in while held stays unanswered: the bot does not catch up afterwards.
    assert not [m for m in sent_to(meta, carla) if m["context_message_id"] == unanswered]
    assert len(sent_to(meta, carla)) == sends + 1


def test_a_reply_through_the_cli_reaches_the_user(stack: LocalStack, meta: FakeMeta) -> None:
    dani = WhatsAppUser(phone="34611000004", name="Dani")
    reply_to(meta, writes(stack, meta, dani, "What is Released?"))
    conv = the_conversation(stack, dani)
    out = released(stack, "conversations", "reply", str(conv["id"]),
                   "Hola Dani, soy Lucía: ¿en qué te ayudo?")
    assert out.startswith(f"sent to {conv['id']}")
    sent = sent_to(meta, dani)[-1]
    assert sent["text"] == "Hola Dani, soy Lucía: ¿en qué te ayudo?"
    assert sent["context_message_id"] is None
    shown = json.loads(released(stack, "conversations", "show", str(conv["id"]), "--json"))
    staff = shown["messages"][-1]
    assert (staff["source"], staff["wamid"]) == ("staff", sent["id"])
    assert staff["status"] in ("sent", "delivered", "read")
    assert shown["state"] == "held" and shown["heldReason"] == "admin"
    # The bot leaves Dani to Lucía now.
    writes(stack, meta, dani, "Gracias Lucía")
    wait_until(lambda: the_conversation(stack, dani)["heldMessages"] == 1)
    assert sent_to(meta, dani)[-1]["id"] == sent["id"]


def closed_by_peer(conn: socket.socket) -> bool:
    """Whether the other end closed ``conn`` (it sends nothing more on a request it made)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def test_a_receiver_that_never_answers_does_not_delay_the_handover_message(
    stack: LocalStack, meta: FakeMeta, receiver: Receiver
) -> None:
    """The notification is a task of its own: the worker answering the user only queues it.

    The receiver takes the notification's request and answers nothing. The handover message
    must reach the user while that request is still open, the worker still waiting for its
    answer: had the answer waited for the POST, it would have gone out only after the POST
    timed out and its connection closed.
    """
    eva = WhatsAppUser(phone="34611000005", name="Eva")
    receiver.answering.clear()
    try:
        asks = writes(stack, meta, eva, "Quiero hablar con una persona")
        handover = reply_to(meta, asks)
        assert "passed your conversation to a person" in handover["text"]
        pending = wait_until(lambda: receiver.waiting.get(eva.phone))
        assert not closed_by_peer(pending), "the handover message waited for the notification"
    finally:
        receiver.answering.set()
    # Answered at last, the notification is delivered: the same one however many tries it took.
    notes = wait_until(
        lambda: [note for note in map(json.loads, receiver.bodies()) if note["user"] == eva.phone]
    )
    assert len({note["id"] for note in notes}) == 1 and notes[0]["reason"] == "user_request"
    assert [m for m in sent_to(meta, eva) if m["context_message_id"] == asks] == [handover]


def raw_request(
    web: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> int:
    """The status of ``METHOD path`` sent as is (no client normalises ``..`` or ``//``)."""
    host, port = web.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_admin_api_needs_the_token_and_is_not_the_webhook(
    stack: LocalStack, meta: FakeMeta
) -> None:
    web = stack.urls["web"]
    state = json.loads((Path(stack.workdir) / "stack.json").read_text())
    assert (Path(stack.workdir) / "stack.json").stat().st_mode & 0o077 == 0
    token = state["admin_token"]
    fran = WhatsAppUser(phone="34611000006", name="Fran")
    reply_to(meta, writes(stack, meta, fran, "What is Released?"))
    conv = the_conversation(stack, fran)["id"]
    sends = len(sent_to(meta, fran))
    calls = [
        ("GET", "/admin/conversations", None),
        ("GET", f"/admin/conversations/{conv}", None),
        ("POST", f"/admin/conversations/{conv}/hold", {"seconds": 3600}),
        ("POST", f"/admin/conversations/{conv}/release", None),
        ("POST", f"/admin/conversations/{conv}/reply", {"text": "Hola, soy Lucía"}),
    ]

    # No token, a wrong one, another credential of the agent, Meta's signature: refused.
    body = json.dumps({"seconds": 3600}).encode()
    refused = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {stack.env['META_VERIFY_TOKEN']}"},
        {SIGNATURE_HEADER: sign(body, stack.env["META_APP_SECRET"])},
    ]
    for headers in refused:
        for method, path, payload in calls:
            response = httpx.request(method, f"{web}{path}", headers=headers, json=payload)
            assert response.status_code == 401, (headers, method, path)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "messages" not in response.text and token not in response.text

    # The Ingress routes the prefix /webhook: nothing under it reaches the admin API, not even
    # with the token.
    bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for path in (
        f"/webhook/admin/conversations/{conv}/hold",
        "/webhook/../admin/conversations",
        "/webhook/%2e%2e/admin/conversations",
        "/webhook//admin/conversations",
    ):
        for method in ("GET", "POST"):
            status = raw_request(web, method, path, bearer, body)
            assert status in (404, 405), (method, path, status)
    # The webhook itself takes Meta's signature, never the admin token.
    assert httpx.post(f"{web}/webhook", headers=bearer, content=body).status_code == 401
    verify = httpx.get(
        f"{web}/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"},
    )
    assert verify.status_code == 403

    # None of that held the conversation or said anything to the user.
    assert the_conversation(stack, fran)["state"] == "bot"
    assert len(sent_to(meta, fran)) == sends
    # With the token it works.
    ok = httpx.get(f"{web}/admin/conversations", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and conv in [c["id"] for c in ok.json()["conversations"]]
    metrics = httpx.get(f"{web}/metrics").text
    assert "released_conversations_held" in metrics
