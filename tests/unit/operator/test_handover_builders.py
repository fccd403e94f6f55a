"""What ``spec.handover`` and the admin API make of the children: environment per tier, the
Secrets each tier may read, the worker's way out to the notification URL, and an Ingress that
never routes the admin API."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from whatsapp_operator import credentials as keys
from whatsapp_operator.builders import AgentContext, build_children, build_ingress

from .test_builders import (
    SETTINGS,
    by_kind_name,
    container,
    example_body,
    make_ctx,
)

WEB, WORKER, PURGE = "acme-web", "acme-worker", "acme-purge"


def ctx_with(handover: dict[str, Any] | None, **overrides: Any) -> AgentContext:
    body = example_body()
    if handover is None:
        body["spec"].pop("handover", None)
    else:
        body["spec"]["handover"] = handover
    settings = overrides.pop("settings", SETTINGS)
    values: dict[str, Any] = {"config_checksum": "c" * 64}
    values.update(overrides)
    return AgentContext.from_resource(body, settings, **values)


def envs(ctx: AgentContext) -> dict[str, dict[str, dict[str, Any]]]:
    """Workload name -> variable name -> its env entry."""
    objs = by_kind_name(build_children(ctx))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, name in (("Deployment", WEB), ("Deployment", WORKER), ("CronJob", PURGE)):
        out[name] = {e["name"]: e for e in container(objs[(kind, name)])["env"]}
    return out


def handover_names(env: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name in env if name.startswith("HANDOVER_")}


def test_without_handover_both_tiers_are_told_it_is_off_and_nothing_else() -> None:
    env = envs(ctx_with(None))
    for tier in (WEB, WORKER):
        assert env[tier]["HANDOVER_ENABLED"] == {"name": "HANDOVER_ENABLED", "value": "false"}
        assert handover_names(env[tier]) == {"HANDOVER_ENABLED"}
    assert handover_names(env[PURGE]) == set()


def test_the_full_handover_reaches_web_and_worker_and_only_the_worker_notifies() -> None:
    env = envs(make_ctx())  # examples/agent.yaml configures every handover field
    spec = example_body()["spec"]["handover"]
    shared = {
        "HANDOVER_ENABLED": "true",
        "HANDOVER_HOLD_SECONDS": "86400",  # 24h
        "HANDOVER_AFTER_FALLBACKS": "2",
        "HANDOVER_ON_ORDER": "true",
        "HANDOVER_MESSAGE": spec["message"],
    }
    for tier in (WEB, WORKER):
        for name, value in shared.items():
            assert env[tier][name] == {"name": name, "value": value}, (tier, name)
        assert json.loads(env[tier]["HANDOVER_PHRASES"]["value"]) == spec["phrases"]
    assert handover_names(env[WEB]) == set(shared) | {"HANDOVER_PHRASES"}
    assert env[WORKER]["HANDOVER_NOTIFY_URL"]["value"] == spec["notify"]["url"]
    # The HMAC key is a reference to the tenant's Secret, never a copy.
    assert env[WORKER]["HANDOVER_NOTIFY_SECRET"] == {
        "name": "HANDOVER_NOTIFY_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "acme-handover", "key": "hmacKey"}},
    }
    assert handover_names(env[PURGE]) == set()


def test_an_empty_handover_sets_the_defaults_and_leaves_message_and_phrases_to_the_bot() -> None:
    env = envs(ctx_with({}))
    for tier in (WEB, WORKER):
        values = {n: e["value"] for n, e in env[tier].items() if n.startswith("HANDOVER_")}
        assert values == {
            "HANDOVER_ENABLED": "true",
            "HANDOVER_HOLD_SECONDS": "86400",
            "HANDOVER_AFTER_FALLBACKS": "2",
            "HANDOVER_ON_ORDER": "true",
        }


@pytest.mark.parametrize(
    ("hold", "seconds"), [("30m", "1800"), ("36h", "129600"), ("7d", "604800"), ("90s", "90")]
)
def test_the_hold_reaches_the_bot_in_seconds(hold: str, seconds: str) -> None:
    env = envs(ctx_with({"holdDuration": hold, "onOrder": False, "afterFallbacks": 0}))
    assert env[WORKER]["HANDOVER_HOLD_SECONDS"]["value"] == seconds
    assert env[WORKER]["HANDOVER_ON_ORDER"]["value"] == "false"
    assert env[WEB]["HANDOVER_AFTER_FALLBACKS"]["value"] == "0"


def test_phrases_keep_their_letters() -> None:
    phrases = {"es": ["hablar con una persona"], "pt-BR": ["falar com atendente", "atendimento"]}
    env = envs(ctx_with({"phrases": phrases}))
    raw = env[WORKER]["HANDOVER_PHRASES"]["value"]
    assert json.loads(raw) == phrases
    assert "atendimento" in raw and "\\u" not in raw


def test_the_admin_token_reaches_only_the_web_tier_rotated_like_the_verify_token() -> None:
    for handover in (None, {}):
        env = envs(ctx_with(handover))
        creds = "acme-credentials"
        assert env[WEB]["ADMIN_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": creds, "key": keys.ADMIN_TOKEN}
        }
        assert env[WEB]["ADMIN_TOKEN_PREVIOUS"]["valueFrom"] == {
            "secretKeyRef": {"name": creds, "key": keys.ADMIN_TOKEN_PREVIOUS, "optional": True}
        }
        for tier in (WORKER, PURGE):
            assert not {"ADMIN_TOKEN", "ADMIN_TOKEN_PREVIOUS"} & set(env[tier]), tier


def test_the_safety_identifier_salt_is_the_workers_own_generated_key() -> None:
    env = envs(ctx_with(None))
    assert env[WORKER]["SAFETY_IDENTIFIER_SALT"]["valueFrom"] == {
        "secretKeyRef": {"name": "acme-credentials", "key": keys.SAFETY_IDENTIFIER_SALT}
    }
    assert "SAFETY_IDENTIFIER_SALT" not in env[WEB]
    assert "SAFETY_IDENTIFIER_SALT" not in env[PURGE]


def _routes(ingress: dict[str, Any], request_path: str) -> bool:
    """Whether the Ingress sends ``request_path`` to a backend (Prefix/Exact semantics)."""
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            p = path["path"]
            if path["pathType"] == "Exact" and request_path == p:
                return True
            if path["pathType"] in ("Prefix", "ImplementationSpecific"):
                base = p.rstrip("/")
                if request_path == p or request_path.startswith(base + "/") or base == "":
                    return True
    return False


@pytest.mark.parametrize("handover", [None, {}, "example"])
def test_the_ingress_never_routes_the_admin_api(handover: Any) -> None:
    ctx = make_ctx() if handover == "example" else ctx_with(handover)
    ingress = build_ingress(ctx)
    assert ingress is not None
    for path in ("/admin", "/admin/", "/admin/conversations", "/admin/conversations/1/release"):
        assert not _routes(ingress, path), path
    assert _routes(ingress, "/webhook")
    paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/webhook"]
    assert "default" not in ingress["spec"] and "defaultBackend" not in ingress["spec"]


def _worker_egress(ctx: AgentContext) -> list[dict[str, Any]] | None:
    policy = by_kind_name(build_children(ctx))[("NetworkPolicy", WORKER)]["spec"]
    if "Egress" not in policy["policyTypes"]:
        return None
    egress: list[dict[str, Any]] = policy["egress"]
    return egress


def test_the_worker_may_reach_the_notification_urls_port_and_web_gains_nothing() -> None:
    settings = SETTINGS.model_copy(update={"handover_notify_allowed_networks": ["10.20.0.0/16"]})
    handover = {"notify": {"url": "https://helpdesk.example.com:8443/hook",
                           "secretRef": {"name": "hmac", "key": "k"}}}  # fmt: skip
    ctx = ctx_with(copy.deepcopy(handover), settings=settings)
    (rule,) = _worker_egress(ctx) or []
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    blocks = [peer["ipBlock"] for peer in rule["to"]]
    public_v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert "10.0.0.0/8" in public_v4["except"] and "127.0.0.0/8" in public_v4["except"]
    assert {"cidr": "10.20.0.0/16"} in blocks  # the network the platform allows
    objs = by_kind_name(build_children(ctx))
    web_policy = objs[("NetworkPolicy", WEB)]["spec"]
    assert web_policy["policyTypes"] == ["Ingress"]
    egress_policy = json.dumps(objs[("NetworkPolicy", "acme-egress")]["spec"])
    assert "8443" not in egress_policy  # shared by web and worker: unchanged


def test_the_default_port_is_443_and_no_notify_means_no_worker_egress_rule() -> None:
    (rule,) = _worker_egress(make_ctx()) or []
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    assert _worker_egress(ctx_with({})) is None
    assert _worker_egress(ctx_with(None)) is None
