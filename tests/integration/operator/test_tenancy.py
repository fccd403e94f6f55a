"""A tenant tries every escalation on the real control plane, and each one is refused.

The tenant is a ServiceAccount bound to a Role that allows only ``whatsappagents``, Secrets and
ConfigMaps in its own namespace (docs/security.md, "The tenant's Role"); every request below is
made with its token. An operator with a platform policy (hosts under
``{namespace}.bots.example.com``, IngressClass ``public``, one allowed annotation, one allowed
OpenAI base URL, one StorageClass, the default resource bounds) serves the namespace.

Phase 1, with the validating admission webhook: what the spec alone shows is refused at
``kubectl apply`` with a reason. Phase 2, without it (the webhook down, or an agent that was
admitted): reconciliation refuses the same, and what only the cluster shows (a same-named
object, the Secrets' values), with ``Ready=False`` and a reason. In both, nothing is built from a
refused agent and what existed before is untouched. The test prints the count: tried, refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from released.fakes.meta import DEFAULT_ACCESS_TOKEN
from released.fakes.openai import DEFAULT_API_KEY
from tests.integration.operator.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    free_port,
    wait_for,
)
from tests.k8s_control_plane import ControlPlane

pytestmark = pytest.mark.k8s

GOOD_APP_SECRET = "0123456789abcdef0123456789abcdef"
PLATFORM = {
    "RELEASED_INGRESS_HOST_SUFFIXES": '["{namespace}.bots.example.com"]',
    "RELEASED_INGRESS_CLASSES": '["public"]',
    "RELEASED_INGRESS_ANNOTATIONS": '["cert-manager.io/cluster-issuer"]',
    "RELEASED_OPENAI_ALLOWED_BASE_URLS": '["https://llm.example.com/v1"]',
    "RELEASED_STORAGE_CLASSES": '["standard"]',
    "RELEASED_MAX_REDIS_STORAGE": "10Gi",
}
TENANT_ROLE = [
    {"apiGroups": [GROUP], "resources": [PLURAL],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets", "configmaps"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
]  # fmt: skip


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Tenant:
    """The tenant's own API clients (its ServiceAccount token) in its namespace."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.api = api
        self.ns = ns
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def secret(self, name: str, data: dict[str, str]) -> None:
        body = {"metadata": {"name": name}, "data": {k: _b64(v) for k, v in data.items()}}
        self.core.create_namespaced_secret(self.ns, body)

    def agent(self, name: str, *, dry_run: bool = False, **spec: Any) -> dict[str, Any]:
        """Create agent ``name`` (with ``dry_run``, only ask the API server whether it would)."""
        body: dict[str, Any] = {
            "phoneNumberId": "5550001234",
            "faqs": [{"q": "When are you open?", "a": "9 to 5."}],
            "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
            "database": {"secretRef": {"name": "db", "key": "url"}},
        }
        body.update(spec)
        manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WhatsAppAgent",
                    "metadata": {"name": name}, "spec": body}  # fmt: skip
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, manifest, **({"dry_run": "All"} if dry_run else {})
        )
        return created

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, name
            )
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def _tenant_kubeconfig(admin: client.ApiClient, plane: ControlPlane, ns: str, path: Path) -> Path:
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "tenant"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "tenant"}, "rules": TENANT_ROLE})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
        },
    )

    def token() -> str | None:
        for ref in core.read_namespaced_service_account("tenant", ns).secrets or []:
            secret = core.read_namespaced_secret(ref.name, ns)
            if secret.type == "kubernetes.io/service-account-token" and secret.data:
                return base64.b64decode(secret.data["token"]).decode()
        return None

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {"server": plane.server,
                                                   "certificate-authority": plane.ca_file}}],
        "users": [{"name": "tenant", "user": {"token": wait_for("the tenant's token", token)}}],
        "contexts": [{"name": "tenant", "context": {"cluster": "plane", "user": "tenant",
                                                    "namespace": ns}}],
        "current-context": "tenant",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


# -- the world the tenant lives in ----------------------------------------------------------


@pytest.fixture(scope="module")
def world(
    control_plane: ControlPlane,
    api: client.ApiClient,
    operator_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The tenant's namespace with its Secrets, objects someone else put there, the tenant's
    identity and an operator with the platform's policy and its admission webhook."""
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    ns = f"tenant-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for("the default ServiceAccount", lambda: core.read_namespaced_service_account(
        "default", ns).secrets)  # fmt: skip
    # Someone else's objects, named like the children of agents the tenant may create.
    deployment = apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "billing-web", "labels": {"team": "platform"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "billing"}},
                "template": {
                    "metadata": {"labels": {"app": "billing"}},
                    "spec": {"containers": [{"name": "billing", "image": "billing:1"}]},
                },
            },
        },
    )
    secret = core.create_namespaced_secret(
        ns, {"metadata": {"name": "payroll-credentials"}, "stringData": {"key": "platform"}}
    )
    tmp = tmp_path_factory.mktemp("tenancy")
    tenant_api = kube_config.new_client_from_config(
        str(_tenant_kubeconfig(api, control_plane, ns, tmp / "tenant.kubeconfig"))
    )
    tenant = Tenant(tenant_api, ns)
    tenant.secret("meta", {"accessToken": DEFAULT_ACCESS_TOKEN, "appSecret": GOOD_APP_SECRET})
    tenant.secret("openai", {"apiKey": DEFAULT_API_KEY})
    tenant.secret("db", {"url": "postgresql://bot:pw@postgres.example:5432/bot"})

    certs = tmp / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    managed = f"released-tenancy-{ns}.{GROUP}"
    env = {
        **operator_env,
        **PLATFORM,
        "RELEASED_NAMESPACES": ns,
        "RELEASED_ADMISSION_WEBHOOK": "1",
        "RELEASED_ADMISSION_ADDR": "127.0.0.1",
        "RELEASED_ADMISSION_HOST": "127.0.0.1",
        "RELEASED_ADMISSION_PORT": str(free_port()),
        "RELEASED_ADMISSION_MANAGED": managed,
        "RELEASED_ADMISSION_CERTFILE": str(certs / "tls.crt"),
        "RELEASED_ADMISSION_KEYFILE": str(certs / "tls.key"),
    }
    operator = OperatorProcess(env, tmp).start()
    registrations = client.AdmissionregistrationV1Api(api)
    try:
        wait_for("the webhook configuration",
                 lambda: registrations.read_validating_webhook_configuration(managed))  # fmt: skip
        yield {
            "ns": ns,
            "tenant": tenant,
            "operator": operator,
            "managed": managed,
            "before": {
                ("Deployment", "billing-web"): _fingerprint(deployment),
                ("Secret", "payroll-credentials"): _fingerprint(secret),
            },
            "tally": {"tried": 0, "refused": 0},
        }
    finally:
        operator.stop()
        with contextlib.suppress(ApiException):
            registrations.delete_validating_webhook_configuration(managed)
        tenant_api.close()
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def built_for(api: client.ApiClient, ns: str, agent: str) -> list[str]:
    """Every object in ``ns`` the operator built for ``agent`` (by its instance label)."""
    selector = f"app.kubernetes.io/instance={agent},app.kubernetes.io/managed-by=released-operator"
    core, apps, net = client.CoreV1Api(api), client.AppsV1Api(api), client.NetworkingV1Api(api)
    listings: list[tuple[str, Callable[..., Any]]] = [
        ("Deployment", apps.list_namespaced_deployment),
        ("Service", core.list_namespaced_service),
        ("ConfigMap", core.list_namespaced_config_map),
        ("Secret", core.list_namespaced_secret),
        ("ServiceAccount", core.list_namespaced_service_account),
        ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim),
        ("Ingress", net.list_namespaced_ingress),
        ("NetworkPolicy", net.list_namespaced_network_policy),
    ]
    return [
        f"{kind}/{item.metadata.name}"
        for kind, listing in listings
        for item in listing(ns, label_selector=selector).items
    ]


def _fingerprint(obj: Any) -> tuple[Any, ...]:
    """What a takeover would change: spec generation, labels, owners, data."""
    meta = obj.metadata
    return (meta.generation, meta.labels, meta.owner_references, getattr(obj, "data", None))


def _writers(obj: Any) -> set[str]:
    return {m.manager for m in obj.metadata.managed_fields or []}


def untouched(api: client.ApiClient, world: dict[str, Any]) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for (kind, name), before in world["before"].items():
        read = apps.read_namespaced_deployment if kind == "Deployment" else (
            core.read_namespaced_secret)  # fmt: skip
        obj = read(name, world["ns"])
        assert _fingerprint(obj) == before, f"{kind}/{name} was changed"
        assert not obj.metadata.owner_references, f"{kind}/{name} was adopted"
        assert "released-operator" not in _writers(obj), f"{kind}/{name} was written"


def refused_at_admission(world: dict[str, Any], name: str, spec: dict[str, Any]) -> str:
    """Create the agent as the tenant; the webhook must refuse it. Returns the reason."""
    world["tally"]["tried"] += 1
    tenant: Tenant = world["tenant"]

    def attempt() -> str | None:
        try:
            tenant.agent(name, **spec)
        except ApiException as exc:
            message = str(json.loads(exc.body).get("message", ""))
            if exc.status in (400, 422) and "admission webhook" in message:
                return message
            raise
        # Admitted: the webhook was not serving yet; remove it and try again.
        tenant.custom.delete_namespaced_custom_object(GROUP, VERSION, tenant.ns, PLURAL, name)
        wait_for(f"{name} to be gone", lambda: tenant.get(name) is None)
        return None

    message = wait_for(f"the webhook to refuse {name}", attempt, timeout=30)
    world["tally"]["refused"] += 1
    return message


def refused_by_reconcile(
    api: client.ApiClient, world: dict[str, Any], name: str, spec: dict[str, Any], reason: str
) -> str:
    """Create the agent as the tenant (the webhook is off); it must end Ready=False with
    ``reason`` and nothing built. Returns the condition's message."""
    world["tally"]["tried"] += 1
    tenant: Tenant = world["tenant"]
    tenant.agent(name, **spec)

    def blocked() -> dict[str, Any] | None:
        for cond in ((tenant.get(name) or {}).get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "False" and cond["reason"] == reason:
                return dict(cond)
        return None

    operator: OperatorProcess = world["operator"]
    try:
        cond = wait_for(f"{name}: Ready=False reason={reason}", blocked, timeout=45)
    except AssertionError:
        status = json.dumps((tenant.get(name) or {}).get("status"), indent=1)[:2000]
        raise AssertionError(f"{name}: {status}\n{operator.log_tail()}") from None
    assert built_for(api, world["ns"], name) == [], f"{name}: something was built"
    world["tally"]["refused"] += 1
    return str(cond["message"])


HOST = {"host": "bot.{ns}.bots.example.com"}


def ingress(world: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"ingress": {"host": HOST["host"].format(ns=world["ns"]), **fields}}


SPEC_ESCALATIONS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("snippet", lambda w: ingress(w, annotations={
        "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x;"}),
     "configuration-snippet"),
    ("server-snippet", lambda w: ingress(w, annotations={
        "nginx.ingress.kubernetes.io/server-snippet": "location / {}"}), "server-snippet"),
    ("auth", lambda w: ingress(w, annotations={
        "nginx.ingress.kubernetes.io/auth-url": "http://10.0.0.1/"}), "auth-url"),
    ("rewrite", lambda w: ingress(w, annotations={
        "nginx.ingress.kubernetes.io/rewrite-target": "/metrics"}), "rewrite-target"),
    ("foreign-host", lambda w: {"ingress": {"host": "bot.other.bots.example.com"}},
     "spec.ingress.host 'bot.other.bots.example.com'"),
    ("company-host", lambda w: {"ingress": {"host": "api.example.com"}},
     "spec.ingress.host 'api.example.com'"),
    ("ingress-class", lambda w: ingress(w, className="internal"),
     "spec.ingress.className 'internal'"),
    ("cpu", lambda w: {"web": {"resources": {"requests": {"cpu": "64"},
                                             "limits": {"memory": "1Gi"}}}},
     "spec.web.resources.requests.cpu 64"),
    ("memory", lambda w: {"worker": {"resources": {"limits": {"memory": "1Ti"}}}},
     "spec.worker.resources.limits.memory 1Ti"),
    ("gpu", lambda w: {"web": {"resources": {"limits": {"memory": "1Gi",
                                                       "nvidia.com/gpu": "4"}}}},
     "nvidia.com/gpu"),
    ("no-limit", lambda w: {"web": {"resources": {"requests": {"memory": "1Gi"}}}},
     "spec.web.resources.limits.memory is missing"),
    ("storage", lambda w: {"redis": {"storage": "1Ti"}}, "spec.redis.storage 1Ti"),
    ("storage-class", lambda w: {"redis": {"storageClassName": "premium-nvme"}},
     "spec.redis.storageClassName 'premium-nvme'"),
]  # fmt: skip


def test_phase_1_the_webhook_refuses_what_the_spec_shows(
    api: client.ApiClient, world: dict[str, Any]
) -> None:
    for name, spec, reason in SPEC_ESCALATIONS:
        message = refused_at_admission(world, f"adm-{name}", spec(world))
        assert reason in message, (name, message)
        assert world["tenant"].get(f"adm-{name}") is None
    # Within the policy the same tenant is admitted.
    world["tenant"].agent("fine", **ingress(world, className="public",
                          annotations={"cert-manager.io/cluster-issuer": "le"}))  # fmt: skip
    untouched(api, world)


def test_phase_2_reconciliation_refuses_the_rest(
    api: client.ApiClient, world: dict[str, Any]
) -> None:
    tenant: Tenant = world["tenant"]
    client.AdmissionregistrationV1Api(api).delete_validating_webhook_configuration(world["managed"])
    # The API server stops calling the webhook once its informer has seen the deletion: until
    # then a dry run of what it refuses is still refused by it.
    snippet = SPEC_ESCALATIONS[0][1](world)

    def webhook_gone() -> bool:
        try:
            tenant.agent("dry-run", dry_run=True, **snippet)
        except ApiException as exc:
            if "admission webhook" in str(exc.body):
                return False
            raise
        return True

    wait_for("the admission webhook to be off", webhook_gone, timeout=30)
    # What admission would have refused, if the webhook is down: refused by reconcile.
    for name, spec, expected in SPEC_ESCALATIONS:
        message = refused_by_reconcile(api, world, f"rec-{name}", spec(world), "PolicyViolation")
        assert expected in message, (name, message)

    # Taking over someone else's Deployment and Secret by naming an agent after them.
    message = refused_by_reconcile(api, world, "billing", {}, "Conflict")
    assert "Deployment/billing-web" in message
    message = refused_by_reconcile(api, world, "payroll", {}, "Conflict")
    assert "Secret/payroll-credentials" in message

    # Internal and link-local OpenAI base URLs (SSRF), even under an allowed name's disguise.
    for name, url in (
        ("ssrf-cluster", "https://10.96.0.1/v1"),
        ("ssrf-metadata", "https://169.254.169.254/latest"),
        ("ssrf-loopback", "http://127.0.0.1:8080/v1"),
        ("ssrf-unlisted", "https://attacker.example.org/v1"),
    ):
        tenant.secret(f"openai-{name}", {"apiKey": DEFAULT_API_KEY, "baseUrl": url})
        spec = {"secrets": {"meta": {"name": "meta"}, "openai": {"name": f"openai-{name}"}}}
        message = refused_by_reconcile(api, world, name, spec, "OpenAIBaseUrlRefused")
        assert url not in message and "baseUrl" in message

    # A placeholder or a guessable app secret: no Ingress, nothing at all.
    for name, app_secret in (("placeholder", "REPLACE_ME"), ("guessable", "my-app-secret")):
        tenant.secret(f"meta-{name}", {"accessToken": DEFAULT_ACCESS_TOKEN,
                                       "appSecret": app_secret})  # fmt: skip
        spec = {"secrets": {"meta": {"name": f"meta-{name}"}, "openai": {"name": "openai"}},
                **ingress(world)}  # fmt: skip
        message = refused_by_reconcile(api, world, name, spec, "InvalidMetaSecret")
        assert "appSecret" in message and "my-app-secret" not in message

    untouched(api, world)


def test_phase_3_the_tenant_cannot_go_around_the_operator(
    api: client.ApiClient, world: dict[str, Any]
) -> None:
    """The tenant's own rights: no Deployment, Ingress, Role or other namespace."""
    tenant: Tenant = world["tenant"]
    ns = world["ns"]
    attempts: dict[str, Callable[[], Any]] = {
        "create an Ingress": lambda: client.NetworkingV1Api(tenant.api).create_namespaced_ingress(
            ns, {"metadata": {"name": "x"}, "spec": {"defaultBackend": {"service": {
                "name": "x", "port": {"number": 80}}}}}),
        "patch the Deployment": lambda: client.AppsV1Api(tenant.api).patch_namespaced_deployment(
            "billing-web", ns, {"spec": {"replicas": 0}}),
        "read Secrets elsewhere": lambda: tenant.core.list_namespaced_secret("default"),
        "create a Role": lambda: client.RbacAuthorizationV1Api(tenant.api).create_namespaced_role(
            ns, {"metadata": {"name": "x"}, "rules": []}),
        "write an agent's status": lambda: tenant.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "fine", {"status": {"webhookUrl": "https://x/"}}),
    }  # fmt: skip
    for what, attempt in attempts.items():
        world["tally"]["tried"] += 1
        with pytest.raises(ApiException) as denied:
            attempt()
        assert denied.value.status == 403, (what, denied.value.status)
        world["tally"]["refused"] += 1
    untouched(api, world)
    tally = world["tally"]
    print(f"\ntenant escalations: tried {tally['tried']}, refused {tally['refused']}")
    assert tally["tried"] == tally["refused"] == 2 * len(SPEC_ESCALATIONS) + 2 + 4 + 2 + 5
