"""Fixtures for the operator's unit tests: an in-memory API server with one agent's namespace.

``world`` holds a :class:`FakeKube` with the user's Secrets (``meta``, ``openai``, ``db``) in
namespace ``shop``; :func:`make_agent` stores an agent and returns the
:class:`~whatsapp_operator.reconcile.context.Agent` a kopf handler would build for it (with
recorded Events instead of kopf's). The outside world (OpenAI, Meta, PostgreSQL) is replaced by
recorders in :class:`Outside`, patched where the parts call it.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from whatsapp_operator.config import OperatorSettings
from whatsapp_operator.database import DatabaseCredentials
from whatsapp_operator.database import database_name as _database_name
from whatsapp_operator.database import login_roles as _login_roles
from whatsapp_operator.errors import ReleasedError
from whatsapp_operator.knowledge import KnowledgeCheck, KnowledgeState
from whatsapp_operator.meta_account import PhoneNumber, SubscribedApp
from whatsapp_operator.reconcile.context import Agent

from .fake_kube import FakeKube, RecordedEvents

#: The provisioned database of agent ``shop/acme`` and its two alternating login roles.
DB_NAME = _database_name("shop/acme")
ROLE_A, ROLE_B = _login_roles(DB_NAME)

NS = "shop"
META_TOKEN = "EAAtesttoken1234567890"
OPENAI_KEY = "sk-test-key-1234"
APP_SECRET = "0123456789abcdef0123456789abcdef"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def secret(name: str, values: dict[str, str], namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: b64(v) for k, v in values.items()},
    }


def agent_body(name: str = "acme", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "phoneNumberId": "1234567890",
        "faqs": [
            {"q": "What are your opening hours?", "a": "9 to 5, Monday to Friday."},
            {"q": "Where are you?", "a": "Main Street 1."},
        ],
        "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
        "database": {"secretRef": {"name": "db", "key": "url"}},
        "ingress": {"host": f"{name}.bots.example.com"},
    }
    body.update(spec)
    return {
        "apiVersion": "whatsapp.released.io/v1alpha1",
        "kind": "WhatsAppAgent",
        "metadata": {"name": name, "namespace": NS},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


@dataclass
class Outside:
    """What the parts asked of OpenAI, Meta and PostgreSQL; errors to answer with."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    knowledge_error: ReleasedError | None = None
    meta_error: ReleasedError | None = None
    database_error: ReleasedError | None = None
    #: role -> password the fake PostgreSQL knows
    roles: dict[str, str] = field(default_factory=dict)
    #: models OpenAI serves (``GET /v1/models/{id}``), and the error it answers with instead
    models: set[str] = field(default_factory=lambda: {"gpt-6-luna", "gpt-4.1-mini"})
    model_error: ReleasedError | None = None
    #: what reading the phone number with the agent's token answers
    phone: PhoneNumber = field(
        default_factory=lambda: PhoneNumber(
            id="1234567890", display_phone_number="+1 555-010-0000", verified_name="Acme",
            quality_rating="GREEN",
        )
    )
    account_error: ReleasedError | None = None
    #: WABA id -> apps subscribed to it; errors of reading and of subscribing
    wabas: dict[str, list[SubscribedApp]] = field(default_factory=dict)
    waba_error: ReleasedError | None = None
    subscribe_error: ReleasedError | None = None
    #: the app that the agent's token belongs to (what subscribing adds)
    app_id: str = "1"
    #: the vector store check's answer
    knowledge_check: KnowledgeCheck = KnowledgeCheck.OK
    #: agent key -> the connection limit the last ensure_database asked for
    connection_limits: dict[str, int | None] = field(default_factory=dict)

    def named(self, what: str) -> list[Any]:
        return [args for name, args in self.calls if name == what]


@dataclass
class World:
    kube: FakeKube
    settings: OperatorSettings
    outside: Outside

    def agent(self, name: str = "acme") -> Agent:
        """The agent as a handler would see it now (fresh body, new Events list)."""
        body = self.kube.obj("WhatsAppAgent", NS, name)
        assert body is not None
        return Agent(body=body, kube=self.kube, settings=self.settings, events=RecordedEvents())

    def status(self, name: str = "acme") -> dict[str, Any]:
        body = self.kube.obj("WhatsAppAgent", NS, name)
        assert body is not None
        return dict(body.get("status") or {})

    def condition(self, type_: str, name: str = "acme") -> dict[str, Any]:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        raise AssertionError(f"no condition {type_} in {self.status(name)}")

    def roll_out(self, name: str = "acme") -> None:
        """What the controllers would do: every Deployment of the agent rolled out."""
        for dep in self.kube.of_kind("Deployment", NS):
            if dep["metadata"]["labels"].get("app.kubernetes.io/instance") != name:
                continue
            replicas = dep["spec"].get("replicas", 1)
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
            }
            self.kube.objects[("Deployment", NS, dep["metadata"]["name"])] = copy.deepcopy(dep)


def make_world(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> World:
    kube = FakeKube()
    kube.put(secret("meta", {"accessToken": META_TOKEN, "appSecret": APP_SECRET}))
    kube.put(secret("openai", {"apiKey": OPENAI_KEY}))
    kube.put(secret("db", {"url": "postgresql://bot:pw@postgres.example:5432/bot"}))
    outside = Outside()
    _patch_outside(monkeypatch, outside)
    # The platform lets agents use hosts under bots.example.com (the tests' hosts).
    settings.setdefault("ingress_host_suffixes", ["bots.example.com"])
    return World(kube=kube, settings=OperatorSettings(**settings), outside=outside)


def _patch_outside(monkeypatch: pytest.MonkeyPatch, outside: Outside) -> None:
    from whatsapp_operator import database, meta_webhook
    from whatsapp_operator.reconcile import cleanup
    from whatsapp_operator.reconcile.parts import database as db_part
    from whatsapp_operator.reconcile.parts import knowledge as knowledge_part
    from whatsapp_operator.reconcile.parts import meta_account as account_part
    from whatsapp_operator.reconcile.parts import model as model_part
    from whatsapp_operator.reconcile.parts import waba as waba_part
    from whatsapp_operator.reconcile.parts import webhook as webhook_part

    async def ensure_knowledge(params: Any, key: str, faqs: Any, current: Any) -> KnowledgeState:
        outside.calls.append(("ensure_knowledge", (params, key, faqs, current)))
        if outside.knowledge_error is not None:
            raise outside.knowledge_error
        return KnowledgeState(vector_store_id="vs_1", file_id="file_1", faq_hash=f"h{len(faqs)}")

    async def delete_knowledge(params: Any, state: Any, *, agent_key: str) -> None:
        outside.calls.append(("delete_knowledge", (params, state, agent_key)))
        if outside.knowledge_error is not None:
            raise outside.knowledge_error

    async def register_callback(*args: Any, **kwargs: Any) -> None:
        outside.calls.append(("register_callback", args))
        if outside.meta_error is not None:
            raise outside.meta_error

    async def unregister_callback(*args: Any, **kwargs: Any) -> None:
        outside.calls.append(("unregister_callback", args))
        if outside.meta_error is not None:
            raise outside.meta_error

    async def ensure_database(
        admin_url: str,
        key: str,
        *,
        host_for_pods: str | None,
        current: Any,
        connections: int | None = None,
    ) -> DatabaseCredentials:
        outside.calls.append(("ensure_database", (key, current)))
        outside.connection_limits[key] = connections
        if outside.database_error is not None:
            raise outside.database_error
        db = current or DatabaseCredentials(
            database=database.database_name(key),
            role=database.login_roles(database.database_name(key))[0],
            password="pw-a",
            host="pg.shared",
        )
        outside.roles[db.role] = db.password.get_secret_value()
        return db

    async def set_role_password(admin_url: str, role: str, password: str) -> None:
        outside.calls.append(("set_role_password", role))
        if outside.database_error is not None:
            raise outside.database_error
        outside.roles[role] = password

    async def revoke_role(admin_url: str, role: str) -> None:
        outside.calls.append(("revoke_role", role))
        outside.roles.pop(role, None)

    async def drop_database(admin_url: str, key: str) -> bool:
        outside.calls.append(("drop_database", key))
        if outside.database_error is not None:
            raise outside.database_error
        return True

    async def model_exists(params: Any, model: str, *, max_age: float = 0.0) -> bool:
        outside.calls.append(("model_exists", model))
        if outside.model_error is not None:
            raise outside.model_error
        return model in outside.models

    async def read_phone_number(graph_url: str, pnid: str, token: str) -> PhoneNumber:
        outside.calls.append(("read_phone_number", (pnid, token)))
        if outside.account_error is not None:
            raise outside.account_error
        return outside.phone

    async def subscribed_apps(graph_url: str, waba: str, token: str) -> list[SubscribedApp]:
        outside.calls.append(("subscribed_apps", waba))
        if outside.waba_error is not None:
            raise outside.waba_error
        return list(outside.wabas.get(waba, []))

    async def subscribe_app(graph_url: str, waba: str, token: str) -> None:
        outside.calls.append(("subscribe_app", waba))
        if outside.subscribe_error is not None:
            raise outside.subscribe_error
        outside.wabas.setdefault(waba, []).append(SubscribedApp(app_id=outside.app_id))

    async def check_knowledge(params: Any, state: KnowledgeState) -> KnowledgeCheck:
        outside.calls.append(("check_knowledge", state))
        if outside.knowledge_error is not None:
            raise outside.knowledge_error
        return outside.knowledge_check

    monkeypatch.setattr(model_part, "model_exists", model_exists)
    monkeypatch.setattr(account_part, "read_phone_number", read_phone_number)
    monkeypatch.setattr(waba_part, "subscribed_apps", subscribed_apps)
    monkeypatch.setattr(waba_part, "subscribe_app", subscribe_app)
    monkeypatch.setattr(knowledge_part, "check_knowledge", check_knowledge)
    monkeypatch.setattr(knowledge_part, "ensure_knowledge", ensure_knowledge)
    monkeypatch.setattr(cleanup, "delete_knowledge", delete_knowledge)
    monkeypatch.setattr(webhook_part, "register_callback", register_callback)
    monkeypatch.setattr(webhook_part, "unregister_callback", unregister_callback)
    monkeypatch.setattr(cleanup, "unregister_callback", unregister_callback)
    monkeypatch.setattr(meta_webhook, "register_callback", register_callback)
    monkeypatch.setattr(db_part, "ensure_database", ensure_database)
    monkeypatch.setattr(database, "set_role_password", set_role_password)
    monkeypatch.setattr(database, "revoke_role", revoke_role)
    monkeypatch.setattr(cleanup, "drop_database", drop_database)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield make_world(monkeypatch)


@pytest.fixture
def pg_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The operator has a shared PostgreSQL (agents without ``database.secretRef`` use it)."""
    yield make_world(
        monkeypatch,
        postgres_admin_url="postgresql://admin:admin@pg:5432/postgres",
        postgres_host_for_pods="pg.shared:5432",
    )
