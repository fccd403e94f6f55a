"""The operator end to end on a real control plane (kube-apiserver 1.20.2 + controller-manager).

The operator runs as ``python -m whatsapp_operator`` in a child process, against the OpenAI and
Meta fakes; a fake kubelet readies the agents' pods. Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import subprocess
import time
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from released.fakes import FakeMeta, FakeOpenAI
from tests.integration.operator.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    agent_manifest,
    agent_namespace,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.k8s

CHECKSUM = f"{GROUP}/config-checksum"
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)
DEPLOYMENTS = ("web", "worker", "redis")
REFERENCED_LABEL = f"{GROUP}/referenced"
#: What a restart must not write: the agents, every kind of child, the referenced Secrets.
RESTART_KINDS = (
    ("whatsapp.released.io/v1alpha1", "WhatsAppAgent"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("batch/v1beta1", "CronJob"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("policy/v1beta1", "PodDisruptionBudget"),
)


def phone() -> str:
    return str(random.randint(10**9, 10**10 - 1))


def create_agent(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, body
    )
    return result


def get_agent(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name
        )
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(agent: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((agent or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def wait_ready(
    custom: client.CustomObjectsApi,
    ns: str,
    name: str,
    operator: OperatorProcess,
    timeout: float = 60,
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        agent = get_agent(custom, ns, name)
        cond = condition(agent, "Ready")
        generation = (agent or {}).get("metadata", {}).get("generation")
        if cond and cond["status"] == "True":
            assert agent is not None
            if agent["status"].get("observedGeneration") == generation:
                return agent
        return None

    try:
        return wait_for(f"agent {ns}/{name} to be Ready", ready, timeout=timeout)
    except AssertionError:
        agent = get_agent(custom, ns, name)
        status = json.dumps((agent or {}).get("status"), indent=1)[:3000]
        raise AssertionError(
            f"agent {ns}/{name} not Ready; status: {status}\noperator log:\n{operator.log_tail()}"
        ) from None


def store_for(fake_openai: FakeOpenAI, ns: str, name: str) -> list[dict[str, Any]]:
    key = f"{ns}/{name}"
    return [
        vs
        for vs in fake_openai.vector_stores()
        if (vs.get("metadata") or {}).get("released_agent") == key
    ]


def template_checksum(apps: client.AppsV1Api, ns: str, name: str) -> str:
    dep = apps.read_namespaced_deployment(name, ns)
    return str((dep.spec.template.metadata.annotations or {}).get(CHECKSUM, ""))


# ---------------------------------------------------------------------------------------------


def test_agent_gets_children_and_becomes_ready(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    api: client.ApiClient,
    namespace: str,
    fake_openai: FakeOpenAI,
    fake_meta: FakeMeta,
) -> None:
    number = phone()
    spec_ingress = {"host": "acme.bots.example.com", "webhook": {"register": True}}
    agent = create_agent(
        custom,
        namespace,
        agent_manifest("acme", phoneNumberId=number, ingress=spec_ingress),
    )
    uid = agent["metadata"]["uid"]
    ready = wait_ready(custom, namespace, "acme", operator)

    net = client.NetworkingV1Api(api)
    children: list[Any] = [
        *(apps.read_namespaced_deployment(f"acme-{d}", namespace) for d in DEPLOYMENTS),
        core.read_namespaced_service("acme-web", namespace),
        core.read_namespaced_service("acme-redis", namespace),
        core.read_namespaced_config_map("acme-faqs", namespace),
        core.read_namespaced_secret("acme-credentials", namespace),
        core.read_namespaced_service_account("acme", namespace),
        core.read_namespaced_persistent_volume_claim("acme-redis", namespace),
        net.read_namespaced_ingress("acme", namespace),
        *(
            net.read_namespaced_network_policy(f"acme-{p}", namespace)
            for p in ("web", "worker", "purge", "redis", "egress")
        ),
    ]
    pdb = custom.get_namespaced_custom_object(
        "policy", "v1beta1", namespace, "poddisruptionbudgets", "acme-web"
    )
    # The retention purge: a CronJob (batch/v1beta1 on Kubernetes 1.20), no process between runs.
    purge = custom.get_namespaced_custom_object(
        "batch", "v1beta1", namespace, "cronjobs", "acme-purge"
    )
    assert purge["spec"]["concurrencyPolicy"] == "Forbid"
    purge_pod = purge["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert purge_pod["containers"][0]["command"] == ["released", "purge"]
    assert purge_pod["securityContext"]["runAsNonRoot"] is True
    serialize = client.ApiClient().sanitize_for_serialization
    objects: list[dict[str, Any]] = [serialize(c) for c in children] + [pdb, purge]
    for obj in objects:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        for label in LABELS:
            assert label in labels, (meta["name"], label)
        assert labels["app.kubernetes.io/instance"] == "acme"
        assert labels["app.kubernetes.io/managed-by"] == "released-operator"
        owners = [(o["kind"], o["uid"], o.get("controller")) for o in meta["ownerReferences"]]
        assert owners == [("WhatsAppAgent", uid, True)], meta["name"]

    assert (
        core.read_namespaced_service_account("acme", namespace).automount_service_account_token
        is False
    )
    for d in DEPLOYMENTS:
        dep = apps.read_namespaced_deployment(f"acme-{d}", namespace)
        pod = dep.spec.template.spec
        assert pod.security_context.run_as_non_root is True, d
        for container in pod.containers:
            assert container.security_context.read_only_root_filesystem is True, (d, container.name)
            assert container.security_context.allow_privilege_escalation is False
        if d != "redis":
            assert len(template_checksum(apps, namespace, f"acme-{d}")) >= 32, d

    status = ready["status"]
    assert status["knowledge"]["faqHash"]
    assert status["webhookUrl"] == "https://acme.bots.example.com/webhook"
    assert status["nextRotation"]
    types = {c["type"]: c for c in status["conditions"]}
    assert {t: types[t]["status"] for t in types} == {
        "Ready": "True",
        "WorkloadsReady": "True",
        "KnowledgeReady": "True",
        "WebhookRegistered": "True",
        "CredentialsRotated": "True",
        "ModelAvailable": "True",
        "MetaAccountHealthy": "True",
        "WabaSubscribed": "Unknown",  # no businessAccountId: not checked, not blocking
    }
    assert len(store_for(fake_openai, namespace, "acme")) == 1
    assert fake_meta.webhook_override(number) == "https://acme.bots.example.com/webhook"
    # No secret in the status.
    creds = core.read_namespaced_secret("acme-credentials", namespace).data
    text = json.dumps(status)
    for value in creds.values():
        assert base64.b64decode(value).decode() not in text


def test_faq_change_updates_configmap_knowledge_and_rolls_pods(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    namespace: str,
    fake_openai: FakeOpenAI,
) -> None:
    create_agent(custom, namespace, agent_manifest("faq", phoneNumberId=phone()))
    before = wait_ready(custom, namespace, "faq", operator)
    old_hash = before["status"]["knowledge"]["faqHash"]
    old_file = before["status"]["knowledge"]["fileId"]
    old_checksum = template_checksum(apps, namespace, "faq-web")
    knowledge_since = condition(before, "KnowledgeReady")["lastTransitionTime"]  # type: ignore[index]

    new_faqs = [
        {"q": "What are your opening hours?", "a": "8 to 8, every day."},
        {"q": "Do you deliver?", "a": "Yes, within the city."},
    ]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "faq", {"spec": {"faqs": new_faqs}}
    )

    def new_hash() -> dict[str, Any] | None:
        agent = get_agent(custom, namespace, "faq")
        knowledge = ((agent or {}).get("status") or {}).get("knowledge") or {}
        return agent if knowledge.get("faqHash") not in (None, old_hash) else None

    after = wait_for("a new faqHash in the status", new_hash)
    cm = core.read_namespaced_config_map("faq-faqs", namespace)
    assert "Do you deliver?" in json.dumps(cm.data)
    assert "8 to 8, every day." in json.dumps(cm.data)
    assert after["status"]["knowledge"]["fileId"] != old_file
    # KnowledgeReady stayed True: its lastTransitionTime did not move.
    assert condition(after, "KnowledgeReady") == {
        **condition(after, "KnowledgeReady"),  # type: ignore[dict-item]
        "status": "True",
        "lastTransitionTime": knowledge_since,
        "observedGeneration": 2,
    }
    wait_for(
        "the web pod template to get a new checksum",
        lambda: template_checksum(apps, namespace, "faq-web") not in ("", old_checksum),
    )
    stores = store_for(fake_openai, namespace, "faq")
    assert len(stores) == 1
    assert stores[0]["file_ids"] == [after["status"]["knowledge"]["fileId"]]
    assert old_file not in {f["id"] for f in fake_openai.files()}
    wait_ready(custom, namespace, "faq", operator)


def test_referenced_secret_change_rolls_pods(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    """The operator watches only what agents reference, by a label it puts on it (selected
    by the API server), and a change there still rolls the pods."""
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "unrelated"}, "data": {"k": _b64("v")}}
    )
    create_agent(custom, namespace, agent_manifest("sec", phoneNumberId=phone()))
    wait_ready(custom, namespace, "sec", operator)

    def labelled(name: str) -> bool:
        labels = core.read_namespaced_secret(name, namespace).metadata.labels or {}
        return labels.get(REFERENCED_LABEL) == "true"

    assert labelled("meta") and labelled("openai")
    assert not labelled("unrelated")
    selected = core.list_namespaced_secret(namespace, label_selector=REFERENCED_LABEL).items
    assert {s.metadata.name for s in selected} == {"meta", "openai", "db"}

    old = template_checksum(apps, namespace, "sec-worker")
    core.patch_namespaced_secret(
        "openai", namespace, {"data": {"apiKey": _b64("sk-rotated-by-a-person")}}
    )
    wait_for(
        "the worker template to roll after the OpenAI Secret changed",
        lambda: template_checksum(apps, namespace, "sec-worker") not in ("", old),
    )
    # Deleting the agent takes the label off what no agent references any more.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sec")
    wait_for("the labels to go", lambda: not labelled("openai") and not labelled("meta"))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_restarted_operator_writes_nothing_to_unchanged_agents(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    namespace: str,
    fake_meta: FakeMeta,
    fake_openai: FakeOpenAI,
) -> None:
    """Resuming after a restart reads every agent and writes none of them, nor a child, and
    asks OpenAI and Meta nothing about them (their periodic checks come later, spread out)."""
    phones = {name: phone() for name in ("calm-a", "calm-b")}
    for name, number in phones.items():
        create_agent(custom, namespace, agent_manifest(name, phoneNumberId=number))
    for name in phones:
        wait_ready(custom, namespace, name, operator)
    dyn = DynamicClient(custom.api_client)

    def versions() -> dict[str, str]:
        found = {}
        for api_version, kind in RESTART_KINDS:
            items = dyn.resources.get(api_version=api_version, kind=kind).get(namespace=namespace)
            for item in items.items:
                found[f"{kind}/{item.metadata.name}"] = item.metadata.resourceVersion
        return found

    def successes() -> float:
        text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith('released_operator_reconciles_total{outcome="success"}'):
                return float(line.split()[-1])
        return 0.0

    def settled() -> dict[str, str] | None:
        first = versions()
        time.sleep(3)
        return first if versions() == first else None

    before = wait_for("the agents to settle", settled, 60)
    operator.stop()
    asked = (len(fake_meta.requests()), len(fake_openai.requests()))
    operator.start()
    wait_for("both resume passes", lambda: successes() >= 2, timeout=60)
    after = versions()
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == [], f"written on restart: {changed}\n{operator.log_tail()}"
    # (other tests' agents, not settled, may be asked about: only these two count)
    stores = [get_agent(custom, namespace, name)["status"]["knowledge"]["vectorStoreId"]
              for name in phones]  # fmt: skip
    about_them = [
        f"{r['method']} {r['path']}"
        for r in fake_meta.requests()[asked[0] :] + fake_openai.requests()[asked[1] :]
        if any(key in r["path"] for key in [*phones.values(), *stores])
    ]
    assert about_them == [], about_them
    assert len(before) > 20  # both agents and their children were compared


def test_duplicate_questions_are_invalid_spec_and_touch_nothing(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    faqs = [{"q": "Where are you?", "a": "Main Street 1."}, {"q": "where are you", "a": "Here."}]
    create_agent(custom, namespace, agent_manifest("dup", phoneNumberId=phone(), faqs=faqs))

    def invalid() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, namespace, "dup"), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = wait_for("Ready=False reason=InvalidSpec", invalid)
    assert cond["status"] == "False"
    assert "duplicates" in cond["message"]
    assert cond["observedGeneration"] == 1
    assert apps.list_namespaced_deployment(namespace).items == []
    assert [
        s.metadata.name
        for s in core.list_namespaced_secret(namespace).items
        if "dup" in s.metadata.name
    ] == []

    # Fixing the spec reconciles it.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "dup", {"spec": {"faqs": faqs[:1]}}
    )
    wait_ready(custom, namespace, "dup", operator)


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    fake_openai: FakeOpenAI,
) -> None:
    # Slow OpenAI down so the kill lands in the middle of the knowledge step.
    fake_openai.set_latency(0.4)
    try:
        create_agent(custom, namespace, agent_manifest("kill", phoneNumberId=phone()))
        wait_for(
            "the credentials Secret (reconciliation under way)",
            lambda: core.read_namespaced_secret("kill-credentials", namespace),
            timeout=30,
        )
        creds_before = core.read_namespaced_secret("kill-credentials", namespace).data
        operator.kill()
        # The kill landed before the reconciliation finished: no status written yet.
        killed = get_agent(custom, namespace, "kill") or {}
        assert "knowledge" not in (killed.get("status") or {})
    finally:
        fake_openai.set_latency(0.0)
    operator.start()
    ready = wait_ready(custom, namespace, "kill", operator, timeout=90)

    assert core.read_namespaced_secret("kill-credentials", namespace).data == creds_before
    stores = store_for(fake_openai, namespace, "kill")
    assert len(stores) == 1
    assert stores[0]["id"] == ready["status"]["knowledge"]["vectorStoreId"]
    assert len(stores[0]["file_ids"]) == 1
    deployments = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
    assert sorted(deployments) == sorted(f"kill-{d}" for d in DEPLOYMENTS)
    for d in DEPLOYMENTS:
        owned = [
            rs
            for rs in apps.list_namespaced_replica_set(namespace).items
            if rs.metadata.name.startswith(f"kill-{d}-") and (rs.spec.replicas or 0) > 0
        ]
        assert len(owned) == 1, (d, [rs.metadata.name for rs in owned])


def test_schema_violation_is_refused_by_the_api_server(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    body = agent_manifest("bad", phoneNumberId="not-digits")
    with pytest.raises(ApiException) as info:
        create_agent(custom, namespace, body)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "spec.phoneNumberId" in message
    assert "^[0-9]{5,20}$" in message


def test_suspend_scales_to_zero(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    create_agent(custom, namespace, agent_manifest("nap", phoneNumberId=phone()))
    wait_ready(custom, namespace, "nap", operator)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "nap", {"spec": {"suspend": True}}
    )

    def scaled_down() -> bool:
        return all(
            (apps.read_namespaced_deployment(f"nap-{d}", namespace).spec.replicas or 0) == 0
            for d in DEPLOYMENTS
        )

    wait_for("every Deployment at 0 replicas", scaled_down)

    def suspended() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, namespace, "nap"), "Ready")
        return cond if cond and cond["reason"] == "Suspended" else None

    assert wait_for("Ready=False reason=Suspended", suspended)["status"] == "False"
    # Retention still runs while the agent is suspended.
    purge = custom.get_namespaced_custom_object(
        "batch", "v1beta1", namespace, "cronjobs", "nap-purge"
    )
    assert purge["spec"]["suspend"] is False


def test_rotation_when_due_rotates_and_revokes(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake_meta: FakeMeta,
) -> None:
    number = phone()
    ingress = {"host": "rot.bots.example.com", "webhook": {"register": True}}
    manifest = agent_manifest(
        "rot", phoneNumberId=number, ingress=ingress, rotation={"interval": "1h"}
    )
    create_agent(custom, namespace, manifest)
    wait_ready(custom, namespace, "rot", operator)
    before = decoded_secret(core, namespace, "rot-credentials")
    assert fake_meta.webhooks()["phone_numbers"][number]["verify_token"] == before["verifyToken"]

    # Make the rotation due now.
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "rot",
        {"status": {"nextRotation": "2020-01-01T00:00:00Z"}},
    )

    def rotated() -> dict[str, Any] | None:
        agent = get_agent(custom, namespace, "rot")
        cond = condition(agent, "CredentialsRotated")
        return agent if cond and cond["reason"] == "Rotated" else None

    try:
        agent = wait_for("the rotation to complete", rotated, timeout=60)
    except AssertionError:
        raise AssertionError(operator.log_tail()) from None
    after = decoded_secret(core, namespace, "rot-credentials")
    assert after["redisPassword"] != before["redisPassword"]
    assert after["verifyToken"] != before["verifyToken"]
    assert not {k for k in after if k.endswith("Previous")}
    assert after.get("rotationId")
    status = agent["status"]
    assert status["lastRotation"] > "2020"
    assert status["nextRotation"] > status["lastRotation"]
    # Meta got the new verify token only once the web tier had rolled onto it.
    assert fake_meta.webhooks()["phone_numbers"][number]["verify_token"] == after["verifyToken"]
    wait_ready(custom, namespace, "rot", operator)


def decoded_secret(core: client.CoreV1Api, ns: str, name: str) -> dict[str, str]:
    data = core.read_namespaced_secret(name, ns).data or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_without_database_the_agent_says_so(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    body = agent_manifest("nodb", phoneNumberId=phone())
    del body["spec"]["database"]
    create_agent(custom, namespace, body)

    def reason() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, namespace, "nodb"), "Ready")
        return cond if cond and cond["reason"] == "DatabaseNotConfigured" else None

    cond = wait_for("Ready=False reason=DatabaseNotConfigured", reason)
    assert cond["status"] == "False"
    assert "secretRef" in cond["message"]
    assert apps.list_namespaced_deployment(namespace).items == []


def test_knowledge_failure_is_reported_and_retried(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    namespace: str,
    fake_openai: FakeOpenAI,
) -> None:
    # As many 429s as the operator's retry policy tries: the pass fails once, then succeeds.
    fake_openai.script_errors([{"kind": "rate_limit", "retry_after": 1, "times": 3}])
    create_agent(custom, namespace, agent_manifest("kn", phoneNumberId=phone()))

    def knowledge_false() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, namespace, "kn"), "KnowledgeReady")
        return cond if cond and cond["status"] == "False" else None

    failed = wait_for("KnowledgeReady=False", knowledge_false, timeout=30)
    assert failed["reason"]
    ready = wait_ready(custom, namespace, "kn", operator)
    assert ready["status"]["knowledge"]["faqHash"]

    metrics = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    assert 'released_operator_reconciles_total{outcome="retry"}' in metrics
    assert "released_operator_reconcile_seconds_bucket" in metrics
    assert 'released_operator_agents{ready="True"}' in metrics


def test_cleanup_gives_up_after_max_attempts_and_releases_the_finalizer(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake_openai: FakeOpenAI,
) -> None:
    create_agent(custom, namespace, agent_manifest("stuck", phoneNumberId=phone()))
    wait_ready(custom, namespace, "stuck", operator)
    # OpenAI refuses the key from now on: the store cannot be deleted.
    fake_openai.script_errors([{"kind": "auth", "times": 1000, "endpoint": "vector_stores"}])
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stuck")
        # RELEASED_CLEANUP_MAX_ATTEMPTS=3: attempts at about 0 s, 5 s and 15 s.
        wait_for(
            "the finalizer to be released", lambda: get_agent(custom, namespace, "stuck") is None
        )
    finally:
        fake_openai.clear_errors()
    reasons = {
        e.reason
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.name == "stuck"
    }
    assert {"CleanupRetrying", "CleanupFailed"} <= reasons
    assert len(store_for(fake_openai, namespace, "stuck")) == 1  # left behind, and said so


def test_missing_secret_is_reported_then_picked_up(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    body = agent_manifest("late", phoneNumberId=phone())
    body["spec"]["secrets"]["openai"]["name"] = "openai-late"
    create_agent(custom, namespace, body)

    def missing() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, namespace, "late"), "Ready")
        return cond if cond and cond["reason"] == "SecretNotFound" else None

    assert "openai-late" in wait_for("Ready=False reason=SecretNotFound", missing)["message"]
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "openai-late"},
            "data": {"apiKey": base64.b64encode(b"sk-test-fake-openai-key").decode()},
        },
    )
    wait_ready(custom, namespace, "late", operator)


def test_admission_webhook_refuses_a_bad_spec(
    operator_env: dict[str, str],
    custom: client.CustomObjectsApi,
    api: client.ApiClient,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A second operator that watches no namespace serves the validating webhook only."""
    port = free_port()
    managed = f"released-test-{namespace}.{GROUP}"
    certs = tmp_path_factory.mktemp("admission-certs")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    env = {
        **operator_env,
        "RELEASED_NAMESPACES": "no-such-namespace",
        "RELEASED_ADMISSION_WEBHOOK": "1",
        "RELEASED_ADMISSION_ADDR": "127.0.0.1",
        "RELEASED_ADMISSION_HOST": "127.0.0.1",
        "RELEASED_ADMISSION_PORT": str(port),
        "RELEASED_ADMISSION_MANAGED": managed,
        "RELEASED_ADMISSION_CERTFILE": str(certs / "tls.crt"),
        "RELEASED_ADMISSION_KEYFILE": str(certs / "tls.key"),
    }
    webhook = OperatorProcess(env, tmp_path_factory.mktemp("admission")).start()
    registrations = client.AdmissionregistrationV1Api(api)
    try:
        wait_for(
            "the ValidatingWebhookConfiguration",
            lambda: registrations.read_validating_webhook_configuration(managed),
        )
        faqs = [{"q": "Where are you?", "a": "Here."}, {"q": "WHERE are you?", "a": "There."}]

        def refused() -> str | None:
            body = agent_manifest("adm", phoneNumberId=phone(), faqs=faqs)
            try:
                create_agent(custom, namespace, body)
            except ApiException as exc:
                message = str(json.loads(exc.body).get("message", ""))
                return message if "duplicates" in message else None
            # Accepted (the webhook was not serving yet): remove it and try again.
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "adm")
            wait_for("adm to be gone", lambda: get_agent(custom, namespace, "adm") is None)
            return None

        message = wait_for("the webhook to refuse duplicate questions", refused, timeout=30)
        assert "spec.faqs[1].q" in message
    finally:
        webhook.stop()
        with contextlib.suppress(ApiException):
            registrations.delete_validating_webhook_configuration(managed)


def test_delete_removes_children_and_vector_store(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    fake_openai: FakeOpenAI,
    fake_meta: FakeMeta,
) -> None:
    number = phone()
    ingress = {"host": "gone.bots.example.com", "webhook": {"register": True}}
    create_agent(custom, namespace, agent_manifest("gone", phoneNumberId=number, ingress=ingress))
    wait_ready(custom, namespace, "gone", operator)
    assert len(store_for(fake_openai, namespace, "gone")) == 1
    assert fake_meta.webhook_override(number)

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    wait_for("the agent to be gone", lambda: get_agent(custom, namespace, "gone") is None)
    assert store_for(fake_openai, namespace, "gone") == []
    assert fake_meta.webhook_override(number) is None
    wait_for(
        "the garbage collector to delete the children",
        lambda: (
            not apps.list_namespaced_deployment(namespace).items
            and not [
                c
                for c in core.list_namespaced_config_map(namespace).items
                if c.metadata.name.startswith("gone-")
            ]
            and not [
                s
                for s in core.list_namespaced_secret(namespace).items
                if s.metadata.name == "gone-credentials"
            ]
        ),
    )


def test_database_is_provisioned_and_dropped(
    operator_env: dict[str, str],
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Without ``database.secretRef`` an operator with a shared PostgreSQL provisions one."""
    import psycopg2

    env = {
        **operator_env,
        "RELEASED_NAMESPACES": "db-*",
        "RELEASED_POSTGRES_ADMIN_URL": postgres_url,
    }
    db_operator = OperatorProcess(env, tmp_path_factory.mktemp("db-operator")).start()
    try:
        with agent_namespace(core, "db") as ns:
            body = agent_manifest("pg", phoneNumberId=phone())
            del body["spec"]["database"]
            create_agent(custom, ns, body)
            wait_ready(custom, ns, "pg", db_operator)
            creds = decoded_secret(core, ns, "pg-credentials")
            assert creds["databaseUrl"].startswith("postgresql://")
            assert creds["databaseRole"] in creds["databaseUrl"]

            def databases() -> set[str]:
                conn = psycopg2.connect(postgres_url)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT datname FROM pg_database")
                        return {row[0] for row in cur.fetchall()}
                finally:
                    conn.close()

            database = creds["databaseUrl"].rsplit("/", 1)[1]
            assert database in databases()
            status = get_agent(custom, ns, "pg")["status"]
            assert status["database"] == {"name": database, "role": creds["databaseRole"]}
            # The agent's role can log in with the password from the Secret.
            psycopg2.connect(creds["databaseUrl"]).close()

            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "pg")
            wait_for("the agent to be gone", lambda: get_agent(custom, ns, "pg") is None)
            assert database not in databases()
    finally:
        db_operator.stop()


def test_faqs_from_a_configmap_follow_its_changes(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    faqs = [{"q": "Is there parking?", "a": "Yes, behind the shop."}]
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "client-faqs"}, "data": {"faqs.yaml": json.dumps(faqs)}}
    )
    body = agent_manifest("cmf", phoneNumberId=phone())
    del body["spec"]["faqs"]
    body["spec"]["faqsFrom"] = {"configMapKeyRef": {"name": "client-faqs", "key": "faqs.yaml"}}
    create_agent(custom, namespace, body)
    ready = wait_ready(custom, namespace, "cmf", operator)
    old_hash = ready["status"]["knowledge"]["faqHash"]
    assert "Is there parking?" in json.dumps(
        core.read_namespaced_config_map("cmf-faqs", namespace).data
    )

    faqs.append({"q": "Do you take cards?", "a": "All of them."})
    core.patch_namespaced_config_map(
        "client-faqs", namespace, {"data": {"faqs.yaml": json.dumps(faqs)}}
    )

    def changed() -> dict[str, Any] | None:
        agent = get_agent(custom, namespace, "cmf")
        knowledge = ((agent or {}).get("status") or {}).get("knowledge") or {}
        return agent if knowledge.get("faqHash") not in (None, old_hash) else None

    wait_for("a new faqHash after the ConfigMap changed", changed)
    data = json.dumps(core.read_namespaced_config_map("cmf-faqs", namespace).data)
    assert "Do you take cards?" in data


def test_removing_the_ingress_deletes_it(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    api: client.ApiClient,
    namespace: str,
) -> None:
    create_agent(custom, namespace, agent_manifest("noing", phoneNumberId=phone()))
    wait_ready(custom, namespace, "noing", operator)
    net = client.NetworkingV1Api(api)
    assert net.read_namespaced_ingress("noing", namespace)
    # A JSON merge patch with null removes spec.ingress.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "noing", {"spec": {"ingress": None}}
    )

    def ingress_gone() -> bool:
        try:
            net.read_namespaced_ingress("noing", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the Ingress to be deleted", ingress_gone)
    wait_ready(custom, namespace, "noing", operator)


def test_service_monitor_when_its_crd_exists(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    api: client.ApiClient,
    namespace: str,
) -> None:
    ext = client.ApiextensionsV1Api(api)
    name = "servicemonitors.monitoring.coreos.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    with contextlib.suppress(ApiException):
        ext.create_custom_resource_definition(crd)

    def served() -> bool:
        try:
            custom.list_namespaced_custom_object(
                "monitoring.coreos.com", "v1", namespace, "servicemonitors"
            )
        except ApiException:
            return False
        return True

    wait_for("the ServiceMonitor CRD to be served", served)
    create_agent(custom, namespace, agent_manifest("mon", phoneNumberId=phone()))
    wait_ready(custom, namespace, "mon", operator)
    monitor = custom.get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "servicemonitors", "mon-web"
    )
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "mon"
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "WhatsAppAgent"
