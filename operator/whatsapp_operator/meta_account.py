"""The agent's Meta account as Meta sees it: the app's subscription to the WABA, the phone number.

- **Subscription** (README of the contracts, "Webhook routing and subscription"): the app must
  be subscribed to the WhatsApp Business Account (WABA) or no message arrives, and Meta refuses
  a phone number's callback override. :func:`subscribed_apps` reads
  ``GET /{WABA_ID}/subscribed_apps``; :func:`subscribe_app` sends
  ``POST /{WABA_ID}/subscribed_apps`` without a body. A body-less POST also *removes* the
  app's WABA-level callback override, and passing the override back needs its verify token,
  which only whoever set it knows: so the operator posts only when the app is absent from the
  list, that is when it has no subscription and hence no WABA-level override of its own to
  lose (:func:`app_subscribed`).
- **Phone number** (:func:`read_phone_number`): ``GET /{PHONE_NUMBER_ID}?fields=...`` with the
  agent's own token, the cheapest call that proves the token works for this number. Meta's
  refusals (190 token, 10/200 permission, 368 policy, ...) come back as domain errors carrying
  Meta's verdict (``kind``) and codes: see :mod:`whatsapp_operator.graph`.

Every call goes through :func:`whatsapp_operator.graph.request` (timeout, retries, Meta's error
policy from :mod:`released.providers.meta`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from . import graph
from .errors import PermanentError
from .retrying import DEFAULT_POLICY, RetryPolicy

#: What the account check reads of the phone number (fields of Meta's ``PhoneNumberInfo``).
PHONE_FIELDS = ("display_phone_number", "verified_name", "quality_rating", "name_status")

_DIGITS = re.compile(r"^[0-9]{1,32}$")


def _node(graph_url: str, node_id: str, what: str) -> str:
    if not _DIGITS.match(node_id):
        raise PermanentError(
            f"{what} must be digits", reason="InvalidSpec", service=graph.SERVICE
        )
    return f"{graph_url.rstrip('/')}/{node_id}"


@dataclass(frozen=True)
class SubscribedApp:
    """One app subscribed to a WABA (``data[]`` of ``GET /{WABA_ID}/subscribed_apps``)."""

    app_id: str | None
    name: str | None = None
    #: The app's WABA-level callback override, when it has one.
    override_callback_uri: str | None = None

    @classmethod
    def from_graph(cls, item: Mapping[str, Any]) -> SubscribedApp:
        data = item.get("whatsapp_business_api_data")
        data = data if isinstance(data, Mapping) else {}
        app_id = data.get("id") or item.get("id")
        name = data.get("name") or item.get("name")
        uri = item.get("override_callback_uri")
        return cls(
            app_id=str(app_id) if app_id else None,
            name=str(name) if name else None,
            override_callback_uri=str(uri) if uri else None,
        )


def app_subscribed(apps: Sequence[SubscribedApp], app_id: str | None) -> bool:
    """Whether the operator's app is among ``apps``: the one with ``app_id`` when the platform
    named it (``RELEASED_META_APP_ID``), otherwise any (the token's app is the only one a
    client's WABA usually has)."""
    if app_id:
        return any(app.app_id == app_id for app in apps)
    return bool(apps)


async def subscribed_apps(
    graph_url: str,
    waba_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> list[SubscribedApp]:
    """The apps subscribed to the WABA (``GET /{WABA_ID}/subscribed_apps``)."""
    body = await graph.request(
        "GET",
        _node(graph_url, waba_id, "businessAccountId") + "/subscribed_apps",
        access_token,
        "read the app's subscription to the WhatsApp Business Account",
        client=client,
        retry=retry,
    )
    data = body.get("data")
    if not isinstance(data, list):
        return []
    return [SubscribedApp.from_graph(item) for item in data if isinstance(item, Mapping)]


async def subscribe_app(
    graph_url: str,
    waba_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> None:
    """Subscribe the token's app to the WABA (``POST /{WABA_ID}/subscribed_apps``, no body).

    Call it only when :func:`app_subscribed` is false: on a subscribed app the same request
    removes its WABA-level callback override.
    """
    body = await graph.request(
        "POST",
        _node(graph_url, waba_id, "businessAccountId") + "/subscribed_apps",
        access_token,
        "subscribe the app to the WhatsApp Business Account",
        client=client,
        retry=retry,
    )
    if body.get("success") is not True:
        raise PermanentError(
            "Meta did not confirm the app's subscription to the WhatsApp Business Account",
            reason="MetaRequestInvalid",
            service=graph.SERVICE,
        )


@dataclass(frozen=True)
class PhoneNumber:
    """What Meta says about the agent's phone number."""

    id: str
    display_phone_number: str | None = None
    verified_name: str | None = None
    #: ``GREEN``, ``YELLOW``, ``RED`` or ``NA``: how recipients rate the number's messages.
    quality_rating: str | None = None
    name_status: str | None = None

    def describe(self) -> str:
        """``+1 555-010-0000 ("Acme"), quality GREEN`` (what is known)."""
        text = self.display_phone_number or self.id
        if self.verified_name:
            text += f' ("{self.verified_name}")'
        if self.quality_rating:
            text += f", quality {self.quality_rating}"
        return text


async def read_phone_number(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> PhoneNumber:
    """``GET /{PHONE_NUMBER_ID}?fields=...`` with the agent's token."""
    body = await graph.request(
        "GET",
        _node(graph_url, phone_number_id, "phoneNumberId"),
        access_token,
        "read the phone number",
        client=client,
        retry=retry,
        params={"fields": ",".join(PHONE_FIELDS)},
    )

    def text(key: str) -> str | None:
        value = body.get(key)
        return str(value) if isinstance(value, str | int) and value != "" else None

    return PhoneNumber(
        id=str(body.get("id") or phone_number_id),
        display_phone_number=text("display_phone_number"),
        verified_name=text("verified_name"),
        quality_rating=text("quality_rating"),
        name_status=text("name_status"),
    )
