"""Drill: hundreds of random and malformed bodies against the running web tier's ``/webhook``.

Real HTTP against the uvicorn process: random bytes, random JSON and mutations of valid
payloads (messages of several types, statuses), each signed correctly (so that parsing and
validation are exercised) and unsigned or tampered with. The web tier never answers 5xx: a
signed JSON object always gets 200 (odd elements are quarantined, never a reason for Meta to
retry for 7 days), a signed body that is no JSON object 400, an oversized one 413, unsigned
bodies always 401. Afterwards the web tier and the worker
are still up, no task crashed on what got through, and a message answered before the fuzzing
is still stored with its reply.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.config import Settings
from bot.devstack import LocalStack
from bot.whatsapp.signature import sign
from bot.whatsapp.simulate import new_wamid, text_message_payload
from released.fakes import FakeMeta

from .conftest import ACCEPTABLE, QUESTIONS, SUMMARY, db_rows, status_payload, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,  # the same bodies on every CI run; a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEEN: Counter[int] = Counter()
MAX_BODY = Settings().webhook_max_body_bytes

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and Infinity too: Python's json writes them, strict parsers refuse them
    | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


# -- the stack and what is stored before the fuzzing ----------------------------------------


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.urls["web"], timeout=10.0) as http:
        yield http


@pytest.fixture(scope="module")
def secret(stack: LocalStack) -> str:
    return stack.env["META_APP_SECRET"]


@pytest.fixture(scope="module")
def valid_payloads(stack: LocalStack) -> list[dict[str, Any]]:
    """Valid webhooks of several shapes, the seeds of the mutations."""
    pnid = stack.env["PHONE_NUMBER_ID"]
    text = text_message_payload(pnid, "What is Released?", wamid="wamid.fuzz-seed-text")
    image = copy.deepcopy(text)
    image["entry"][0]["changes"][0]["value"]["messages"][0].update(
        {"type": "image", "image": {"id": "1234", "mime_type": "image/jpeg", "sha256": "x"}}
    )
    del image["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    button = copy.deepcopy(text)
    button["entry"][0]["changes"][0]["value"]["messages"][0].update(
        {
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Hi"}},
            "context": {"from": "15550000001", "id": "wamid.fuzz-context"},
        }
    )
    del button["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    statuses = status_payload(pnid, [("wamid.fuzz-seed-status", "delivered")], "34600000001")
    return [text, image, button, statuses]


@pytest.fixture(scope="module")
def stored_before(stack: LocalStack, client: httpx.Client, secret: str) -> str:
    """A message answered before any fuzzing; its wamid."""
    meta = FakeMeta.attach(stack.urls["fake_meta"])
    question = next(iter(QUESTIONS))
    wamid = new_wamid()
    body = json.dumps(text_message_payload(stack.env["PHONE_NUMBER_ID"], question, wamid=wamid))
    response = client.post("/webhook", content=body, headers=_signed(body.encode(), secret))
    assert response.status_code == 200
    meta.wait_for(lambda: [m for m in meta.sent() if m["context_message_id"] == wamid], timeout=30)
    wait_until(lambda: _stored(stack, wamid) == _EXPECTED_ROWS, timeout=20, what="reply stored")
    return wamid


_EXPECTED_ROWS = [("inbound", "received"), ("outbound", "sent")]


def _stored(stack: LocalStack, wamid: str) -> list[tuple[str, str]]:
    rows = db_rows(
        stack,
        "SELECT direction, status FROM messages WHERE wamid = ? OR reply_to = ? ORDER BY id",
        wamid,
        wamid,
    )
    return [(str(d), str(s)) for d, s in rows]


# -- helpers ----------------------------------------------------------------------------------


def _signed(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}


def _post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> int:
    status = client.post("/webhook", content=body, headers=headers).status_code
    SEEN[status] += 1
    assert status < 500, f"{status} for {body[:200]!r}"
    assert status in ACCEPTABLE, f"{status} for {body[:200]!r}"
    return status


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(data: st.DataObject, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid payload with one to three random edits: a key dropped, a value replaced by any
    JSON value or by a value of the wrong type, a list emptied or grown, a huge string."""
    payload = copy.deepcopy(data.draw(st.sampled_from(seeds)))
    for change in payload["entry"][0]["changes"]:
        for message in change["value"].get("messages", []):
            # A new wamid each time, so that what passes validation reaches the worker.
            message["id"] = f"wamid.fuzz-{data.draw(st.uuids()).hex}"
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(payload)[1:]
        if not paths:  # everything dropped already
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = payload
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        action = data.draw(
            st.sampled_from(["drop", "replace", "wrong_type", "empty", "grow", "huge"])
        )
        if action == "drop":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif action == "replace":
            parent[key] = data.draw(JSON)
        elif action == "wrong_type":
            parent[key] = data.draw(
                st.sampled_from([None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"": None}])
            )
        elif action == "empty":
            parent[key] = type(parent[key])() if isinstance(parent[key], list | dict) else ""
        elif action == "grow" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * data.draw(st.integers(2, 20))
        elif action == "huge":
            parent[key] = "é" * data.draw(st.sampled_from([5_000, 70_000]))
    return payload


# -- the drill --------------------------------------------------------------------------------


def test_answered_before_fuzzing(stack: LocalStack, stored_before: str) -> None:
    assert _stored(stack, stored_before) == _EXPECTED_ROWS


@FUZZ
@given(body=st.binary(max_size=4096), header=st.sampled_from(["none", "garbage", "wrong"]))
def test_unsigned_random_bytes_get_401(
    client: httpx.Client, secret: str, body: bytes, header: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if header == "garbage":
        headers["X-Hub-Signature-256"] = "sha256=" + body[:32].hex()
    elif header == "wrong":
        headers["X-Hub-Signature-256"] = sign(body, secret + "x")
    assert _post(client, body, headers) == 401


@FUZZ
@given(body=st.binary(max_size=4096))
def test_signed_random_bytes(client: httpx.Client, secret: str, body: bytes) -> None:
    status = _post(client, body, _signed(body, secret))
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        assert status == 400
    else:
        assert status == (200 if isinstance(parsed, dict) else 400)


@FUZZ
@given(value=JSON)
def test_signed_random_json(client: httpx.Client, secret: str, value: Any) -> None:
    body = _dumps(value)
    status = _post(client, body, _signed(body, secret))
    assert status == (200 if isinstance(value, dict) else 400)


@FUZZ
@given(data=st.data())
def test_signed_mutated_payloads(
    client: httpx.Client, secret: str, valid_payloads: list[dict[str, Any]], data: st.DataObject
) -> None:
    mutated = _mutate(data, valid_payloads)
    body = _dumps(mutated)
    expected = 413 if len(body) > MAX_BODY else 200 if isinstance(mutated, dict) else 400
    assert _post(client, body, _signed(body, secret)) == expected


@FUZZ
@given(data=st.data())
def test_tampered_payloads_get_401(
    client: httpx.Client, secret: str, valid_payloads: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Signed, then changed on the way: the signature no longer matches."""
    original = _dumps(data.draw(st.sampled_from(valid_payloads)))
    body = _dumps(_mutate(data, valid_payloads))
    if body != original:
        # The size is checked as the body streams in, before the signature can be.
        expected = 413 if len(body) > MAX_BODY else 401
        assert _post(client, body, _signed(original, secret)) == expected


def test_oversized_and_odd_requests(client: httpx.Client, secret: str) -> None:
    big = b'{"object":"' + b"x" * (3 * 1024 * 1024 + 1) + b'"}'
    assert _post(client, big, _signed(big, secret)) == 413
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    headers = _signed(body, secret)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "", "application/xml"):
        assert _post(client, body, {**headers, "Content-Type": content_type}) == 200
    assert _post(client, b"", _signed(b"", secret)) == 400
    nan = b'{"object": NaN, "entry": [{"id": Infinity}]}'
    assert _post(client, nan, _signed(nan, secret)) == 200  # a JSON object: quarantined
    shallow = b"[" * 500 + b"]" * 500
    assert _post(client, shallow, _signed(shallow, secret)) == 400


def test_nothing_stored_is_lost(stack: LocalStack, stored_before: str) -> None:
    started = time.monotonic()
    # The web tier and the worker are still up and ready.
    ready = httpx.get(f"{stack.urls['web']}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    for name in ("web", "worker"):
        assert stack.processes[name].poll() is None, stack.log_text(name)[-3000:]
    # What got through was queued; let the worker drain it.
    broker = redis.Redis.from_url(stack.urls["redis"])
    try:
        wait_until(lambda: broker.llen("celery") == 0, timeout=90, what="the queue drained")
    finally:
        broker.close()
    time.sleep(2.0)
    assert _stored(stack, stored_before) == _EXPECTED_ROWS
    web_log, worker_log = stack.log_text("web"), stack.log_text("worker")
    for marker in ("Traceback", "Exception in ASGI application"):
        at = web_log.find(marker)
        assert at < 0, web_log[max(0, at - 500) : at + 3000]
    assert "raised unexpected" not in worker_log, worker_log[-3000:]
    inbound, outbound = (
        db_rows(stack, "SELECT COUNT(*) FROM messages WHERE direction = ?", d)[0][0]
        for d in ("inbound", "outbound")
    )
    SUMMARY.append(
        {
            "drill": "webhook fuzzing (hypothesis)",
            "sent": 1,
            "answered": 1,
            "duplicates": 0,
            "wrong_text": 0,
            "requests": sum(SEEN.values()),
            "status_codes": dict(sorted(SEEN.items())),
            "5xx": sum(n for s, n in SEEN.items() if s >= 500),
            "stored_in/out": f"{inbound}/{outbound}",
            "drain_s": round(time.monotonic() - started, 1),
        }
    )
    assert inbound > 1  # mutated messages did get through to the worker


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_is_a_400(
    stack: LocalStack, client: httpx.Client, secret: str, stored_before: str, depth: int
) -> None:
    """Last in the module: until it is fixed it leaves a traceback in the web tier's log."""
    body = b'{"object":"whatsapp_business_account","entry":' + b"[" * depth + b"]" * depth + b"}"
    status = client.post("/webhook", content=body, headers=_signed(body, secret)).status_code
    assert _stored(stack, stored_before) == _EXPECTED_ROWS
    assert status == 400
