"""``whatsapp_operator.meta_account`` and ``models`` against the contract-checked fakes.

Meta: the app's subscription to the WABA (read, subscribe, the WABA-level override seen), the
phone number read with the agent's token, and an expired or revoked token reported with Meta's
code and subcode (and the ``MetaAccountHealthy`` reason the part makes of it). OpenAI:
``GET /v1/models/{id}`` before and after a model's shutdown on the fake's clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from whatsapp_operator import meta_account as ma
from whatsapp_operator.errors import PermanentError, ReleasedError
from whatsapp_operator.models import model_condition, model_exists
from whatsapp_operator.openai_api import OpenAIParams
from whatsapp_operator.reconcile.parts.meta_account import account_condition
from whatsapp_operator.retrying import NO_RETRIES

from released.fakes.meta import DEFAULT_APP_ID, DEFAULT_WABA_ID, FakeMeta
from released.fakes.openai import DEFAULT_API_KEY, FakeOpenAI

TOKEN = "EAAtestaccesstoken1234567890"
PHONE = "106540352242922"


@pytest.fixture(scope="module")
def meta() -> Iterator[FakeMeta]:
    fake = FakeMeta(access_token=TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def graph(meta: FakeMeta) -> str:
    meta.reset()
    return meta.url


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


async def test_subscribe_an_unsubscribed_app(graph: str, meta: FakeMeta) -> None:
    assert not meta.subscribed(DEFAULT_WABA_ID)
    apps = await ma.subscribed_apps(graph, DEFAULT_WABA_ID, TOKEN)
    assert apps == [] and not ma.app_subscribed(apps, None)
    await ma.subscribe_app(graph, DEFAULT_WABA_ID, TOKEN)
    assert meta.subscribed(DEFAULT_WABA_ID)
    apps = await ma.subscribed_apps(graph, DEFAULT_WABA_ID, TOKEN)
    assert [a.app_id for a in apps] == [DEFAULT_APP_ID]
    assert ma.app_subscribed(apps, DEFAULT_APP_ID) and not ma.app_subscribed(apps, "42")
    # The subscription is what Meta needs to deliver: a message now reaches the app.
    posts = [r for r in meta.requests() if r["method"] == "POST"]
    assert posts[-1]["body"] in (None, {}, "")  # body-less: nothing of ours to pass back


async def test_a_waba_level_override_is_seen(graph: str, meta: FakeMeta) -> None:
    # The client's own tooling subscribed the app with a WABA-level override.
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{graph}/{DEFAULT_WABA_ID}/subscribed_apps",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"override_callback_uri": "https://crm.example.com/hook", "verify_token": "v"},
        )
    assert response.status_code == 200, response.text
    apps = await ma.subscribed_apps(graph, DEFAULT_WABA_ID, TOKEN)
    assert ma.app_subscribed(apps, None)
    assert apps[0].override_callback_uri == "https://crm.example.com/hook"


async def test_read_the_phone_number_with_the_agents_token(graph: str, meta: FakeMeta) -> None:
    phone = await ma.read_phone_number(graph, PHONE, TOKEN)
    assert phone.id == PHONE and phone.quality_rating == "GREEN"
    assert phone.verified_name and phone.display_phone_number
    (request,) = meta.requests()
    assert request["query"]["fields"] == ",".join(ma.PHONE_FIELDS)
    assert TOKEN not in str(request["query"])


@pytest.mark.parametrize(
    ("state", "subcode", "reason"),
    [("expired", 463, "TokenExpired"), ("revoked", 460, "TokenRejected")],
)
async def test_a_refused_token_says_which_and_what_to_do(
    graph: str, meta: FakeMeta, state: str, subcode: int, reason: str
) -> None:
    meta.set_token_state(state)
    with pytest.raises(PermanentError) as excinfo:
        await ma.read_phone_number(graph, PHONE, TOKEN, retry=NO_RETRIES)
    exc = excinfo.value
    assert (exc.kind, exc.code, exc.subcode) == ("token", 190, subcode)
    assert TOKEN not in str(exc)
    assert len(meta.requests()) == 1  # a refused token is not retried
    cond = account_condition(exc, PHONE)
    assert cond is not None and (cond.status, cond.reason) == ("False", reason)
    meta.set_token_state("valid")
    assert (await ma.read_phone_number(graph, PHONE, TOKEN)).id == PHONE


async def test_refused_permission_and_policy_block(graph: str, meta: FakeMeta) -> None:
    meta.script_errors(["permission", "policy_block"])
    for kind, reason in (("permission", "PermissionDenied"), ("policy", "PolicyBlocked")):
        with pytest.raises(ReleasedError) as excinfo:
            await ma.read_phone_number(graph, PHONE, TOKEN, retry=NO_RETRIES)
        cond = account_condition(excinfo.value, PHONE)
        assert excinfo.value.kind == kind
        assert cond is not None and cond.reason == reason


async def test_a_compatible_server_without_the_model_route_is_asked_for_the_list(
    oai: FakeOpenAI,
) -> None:
    oai.reset()
    params = OpenAIParams(api_key=SecretStr(DEFAULT_API_KEY), base_url=oai.url)
    oai.script_errors(
        [{"kind": "not_found", "code": None, "times": 2, "endpoint": "GET /v1/models/{model}"}]
    )
    assert await model_exists(params, "gpt-6-luna")  # found in GET /v1/models
    assert not await model_exists(params, "gpt-4o-nano-x")
    assert [r["endpoint"] for r in oai.requests()] == [
        "GET /v1/models/{model}", "GET /v1/models", "GET /v1/models/{model}", "GET /v1/models"
    ]


async def test_models_before_and_after_a_shutdown(oai: FakeOpenAI) -> None:
    oai.reset()
    params = OpenAIParams(api_key=SecretStr(DEFAULT_API_KEY), base_url=oai.url)
    try:
        assert await model_exists(params, "gpt-6-luna")
        oai.set_clock("2027-01-13T12:00:00Z")
        assert await model_exists(params, "gpt-4.1-mini")
        warn = model_condition("gpt-4.1-mini", True, dt.date(2027, 1, 13))
        assert warn.reason == "ShutdownAnnounced"
        oai.set_clock("2027-01-14T00:00:01Z")
        assert not await model_exists(params, "gpt-4.1-mini")
        assert await model_exists(params, "gpt-6-luna")
        assert not await model_exists(params, "gpt-does-not-exist")
        # Every answer came from GET /v1/models/{id} (404 model_not_found: no list needed).
        assert {r["endpoint"] for r in oai.requests()} == {"GET /v1/models/{model}"}
    finally:
        oai.reset()
