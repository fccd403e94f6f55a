"""The whole product on a real cluster, end to end, from the built image:

- `helm install` of the chart; the operator runs as a pod with the chart's ServiceAccount;
- PostgreSQL and the fakes of Meta and OpenAI run as pods (the fakes from the project image):
  the operator provisions the agent's database and checks the outside world through them, and
  the bot's pods reach them;
- a WhatsAppAgent and its Secrets applied with `kubectl apply`; its web, worker and Redis pods
  Running and Ready with the operator's real pod specs (non-root, read-only root filesystem,
  probes), its NetworkPolicies in place, its purge CronJob running `released purge` to the end;
- a webhook signed by "Meta" (the fake, from inside the cluster) posted to the agent's web
  Service is answered through the fake Graph API exactly once;
- a worker pod deleted in the middle of a task loses nothing;
- a credential rotation rolls the pods while webhooks keep coming, and none fails;
- deleting the agent removes everything it made, its database included.

What the local node cannot show (and kind with its default CNI cannot either): NetworkPolicies
are accepted but not enforced by the bridge plugin, so the test checks they exist and select
the pods; there is no Ingress controller, so the test checks the Ingress object's fields and
posts to the Service it points to.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN, DEFAULT_APP_SECRET, DEFAULT_WABA_ID
from released.fakes.openai import DEFAULT_API_KEY
from tests.cluster.support import Kubectl, condition, pod_ready, wait_for
from tests.k8s_node import Cluster
from tests.unit.chart._helm import CHART_DIR, run_helm

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

OUTSIDE = "e2e-outside"  # PostgreSQL and the fakes: "the world outside the cluster"
SYSTEM = "released-e2e"  # the chart's release
AGENT_NS = "e2e-acme"
RELEASE = "e2e"
AGENT = "acme"
PHONE = "106540352242922"
FAQ_Q, FAQ_A = "When are you open?", "Monday to Friday, 9:00 to 18:00."
FAKE_PORT = 8080
META_URL = f"http://fake-meta.{OUTSIDE}.svc.cluster.local:{FAKE_PORT}"
OPENAI_URL = f"http://fake-openai.{OUTSIDE}.svc.cluster.local:{FAKE_PORT}"
WEB_URL = f"http://{AGENT}-web.{AGENT_NS}.svc.cluster.local:8000/webhook"
GROUP, VERSION, PLURAL = "whatsapp.released.io", "v1alpha1", "whatsappagents"
INSTANCE = f"app.kubernetes.io/instance={AGENT}"


def _namespace(name: str) -> dict[str, Any]:
    # kubernetes.io/metadata.name is set by Kubernetes 1.21+; the NetworkPolicies select by it.
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name,
                         "labels": {"kubernetes.io/metadata.name": name}}}  # fmt: skip


def _workload(
    name: str, image: str, pull: str, container: dict[str, Any], port: int, **pod: Any
) -> list[dict[str, Any]]:
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    **pod,
                    "containers": [
                        {"name": name, "image": image, "imagePullPolicy": pull,
                         "ports": [{"name": "main", "containerPort": port}], **container}
                    ],
                },
            },
        },
    }  # fmt: skip
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": port, "targetPort": "main"}]},
    }
    return [deployment, service]


def _fake(cluster: Cluster, name: str, args: list[str]) -> list[dict[str, Any]]:
    container = {
        "command": ["python", "-m", f"released.fakes.{name}", "--host", "0.0.0.0",
                    "--port", str(FAKE_PORT), *args],
        "readinessProbe": {"tcpSocket": {"port": "main"}, "periodSeconds": 2},
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }  # fmt: skip
    return _workload(f"fake-{name}", cluster.image, cluster.pull_policy, container, FAKE_PORT,
                     volumes=[{"name": "tmp", "emptyDir": {}}])  # fmt: skip


def _postgres(cluster: Cluster, password: str) -> list[dict[str, Any]]:
    container = {
        "env": [{"name": "POSTGRES_PASSWORD", "value": password},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]},
                           "periodSeconds": 2},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                         {"name": "run", "mountPath": "/var/run/postgresql"}],
    }  # fmt: skip
    return _workload("postgres", cluster.postgres_image, cluster.pull_policy, container, 5432,
                     volumes=[{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}}])


def _split_image(image: str) -> dict[str, str]:
    if "@" in image:
        repository, digest = image.split("@", 1)
        return {"repository": repository, "digest": digest}
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": image, "tag": "latest"}
    return {"repository": repository, "tag": tag}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class World:
    """The fakes (controlled through port-forwards) and the objects the tests applied."""

    meta: FakeMeta
    openai: FakeOpenAI
    postgres_pod: str
    postgres_password: str
    helm: str
    kubeconfig: str


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(kubectl: Kubectl, cluster: Cluster, helm: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:  # fmt: skip
    """The outside world as pods, then the chart installed with the built image."""
    password = secrets.token_urlsafe(16)
    # A cluster used before (kind, or a re-run): the namespaces of the last run must be gone.
    wait_for("the last run's namespaces to be gone",
             lambda: not any(kubectl.exists("namespace", ns) for ns in (OUTSIDE, SYSTEM, AGENT_NS)),
             timeout=300, interval=2)  # fmt: skip
    for ns in (OUTSIDE, SYSTEM, AGENT_NS):
        kubectl.apply(_namespace(ns))
    kubectl.apply(
        *_postgres(cluster, password),
        *_fake(cluster, "meta", ["--waba-subscribed", "--status-webhooks", ""]),
        *_fake(cluster, "openai", []),
        namespace=OUTSIDE,
    )
    admin_url = f"postgresql://postgres:{password}@postgres.{OUTSIDE}.svc.cluster.local:5432/postgres"
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-postgres"},
                   "stringData": {"url": admin_url}}, namespace=SYSTEM)  # fmt: skip
    values = {
        "image": {**_split_image(cluster.image), "pullPolicy": cluster.pull_policy},
        "redisImage": cluster.redis_image,
        "operator": {
            "graphUrl": f"{META_URL}/v25.0",
            "openaiBaseUrl": f"{OPENAI_URL}/v1",
            "logFormat": "json",
            # The per-agent timer (workloads, rotation steps): seconds here, not a minute.
            "extraEnv": [{"name": "RELEASED_TIMER_INTERVAL", "value": "3"}],
        },
        "tenancy": {"ingress": {"hostSuffixes": ["bots.example.com"]}},
        "networkPolicy": {
            # "Meta" reaches the web tier from the outside namespace, as an ingress controller
            # would; the bots reach the fakes there (port 8080, not 443).
            "ingressControllerNamespaces": [OUTSIDE],
            "extraEgress": [{
                "to": [{"namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": OUTSIDE}}}],
                "ports": [{"protocol": "TCP", "port": FAKE_PORT}],
            }],
        },
        "postgres": {"adminSecret": {"name": "e2e-postgres", "key": "url"}},
    }  # fmt: skip
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    outside_ready(kubectl)
    run_helm(helm, "install", RELEASE, str(CHART_DIR), "--namespace", SYSTEM,
             "--kubeconfig", cluster.kubeconfig, "-f", str(values_file),
             "--wait", "--timeout", "4m")  # fmt: skip
    postgres_pod = kubectl.pods(OUTSIDE, "app=postgres")[0]["metadata"]["name"]
    with contextlib.ExitStack() as stack:
        meta_port = stack.enter_context(
            kubectl.port_forward(OUTSIDE, "deployment/fake-meta", FAKE_PORT))
        openai_port = stack.enter_context(
            kubectl.port_forward(OUTSIDE, "deployment/fake-openai", FAKE_PORT))  # fmt: skip
        meta = FakeMeta.attach(f"http://127.0.0.1:{meta_port}")
        openai = FakeOpenAI.attach(f"http://127.0.0.1:{openai_port}")
        stack.callback(meta.stop)
        stack.callback(openai.stop)
        try:
            yield World(meta, openai, postgres_pod, password, helm, cluster.kubeconfig)
        finally:
            _dump_on_failure(kubectl)
            # The agent first, while its operator runs (its finalizer), then the release.
            kubectl.run("delete", PLURAL, "--all", "-n", AGENT_NS, "--timeout=120s",
                        timeout=150, check=False)
            if kubectl.run("get", PLURAL, "-n", AGENT_NS, "-o", "name", check=False).stdout:
                kubectl.run("patch", PLURAL, AGENT, "-n", AGENT_NS, "--type=merge",
                            "-p", '{"metadata": {"finalizers": []}}', check=False)
            run_helm(helm, "uninstall", RELEASE, "--namespace", SYSTEM,
                     "--kubeconfig", cluster.kubeconfig, check=False)
            for ns in (AGENT_NS, SYSTEM, OUTSIDE):
                kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def outside_ready(kubectl: Kubectl) -> None:
    for app in ("postgres", "fake-meta", "fake-openai"):
        wait_for(
            f"{app} Ready",
            lambda app=app: [p for p in kubectl.pods(OUTSIDE, f"app={app}") if pod_ready(p)],  # type: ignore[misc]
            timeout=240,
            detail=lambda: kubectl.run("describe", "pods", "-n", OUTSIDE,
                                       check=False).stdout[-4000:],
        )


def _dump_on_failure(kubectl: Kubectl) -> None:
    """What a person would look at first: pods, events and the operator's log (on -s/-rA)."""
    for args in (["get", "pods", "-A", "-o", "wide"],
                 ["get", "events", "-n", AGENT_NS, "--sort-by=.lastTimestamp"],
                 ["logs", "-n", SYSTEM, f"deployment/{RELEASE}-released-operator",
                  "--tail=60"]):  # fmt: skip
        proc = kubectl.run(*args, check=False)
        print(f"$ kubectl {' '.join(args)}\n{proc.stdout[-6000:]}{proc.stderr[-500:]}")


@pytest.fixture(scope="module")
def agent(kubectl: Kubectl, world: World) -> dict[str, Any]:
    """The agent and its Secrets, applied with kubectl; returns the agent once Ready."""
    manifest = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{AGENT}-meta"},
         "data": {"accessToken": _b64(DEFAULT_ACCESS_TOKEN),
                  "appSecret": _b64(DEFAULT_APP_SECRET)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{AGENT}-openai"},
         "data": {"apiKey": _b64(DEFAULT_API_KEY)}},
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WhatsAppAgent",
            "metadata": {"name": AGENT},
            "spec": {
                "phoneNumberId": PHONE,
                "businessAccountId": DEFAULT_WABA_ID,
                "faqs": [{"q": FAQ_Q, "a": FAQ_A}],
                "secrets": {"meta": {"name": f"{AGENT}-meta"},
                            "openai": {"name": f"{AGENT}-openai"}},
                "ingress": {"host": f"{AGENT}.bots.example.com", "webhook": {"register": True}},
                "web": {"replicas": 2},
                "worker": {"replicas": 1},
            },
        },
    ]  # fmt: skip
    out = kubectl.apply(*manifest, namespace=AGENT_NS)
    assert "whatsappagent.whatsapp.released.io/acme created" in out, out

    def ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.get(PLURAL, AGENT, namespace=AGENT_NS)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    return wait_for(
        "the agent to be Ready",
        ready,
        timeout=420,
        interval=2,
        detail=lambda: yaml.safe_dump(
            kubectl.get(PLURAL, AGENT, namespace=AGENT_NS).get("status") or {}
        )
        + kubectl.run("get", "pods", "-A", check=False).stdout,
    )


# --- helpers ----------------------------------------------------------------------------------


def _agent_pods(kubectl: Kubectl, component: str) -> list[dict[str, Any]]:
    return kubectl.pods(AGENT_NS, f"{INSTANCE},app.kubernetes.io/component={component}")


def _deliver(world: World, text: str, sender: str) -> dict[str, Any]:
    """A user's message, signed and posted by "Meta" (the fake, inside the cluster) to the web
    Service. Returns the fake's record of the delivery (``status`` is the web tier's answer)."""
    return world.meta.deliver_text(PHONE, text, from_number=sender, url=WEB_URL)


def _replies(world: World, sender: str) -> list[str]:
    return world.meta.sent_texts(to=sender)


def _database_name(kubectl: Kubectl) -> str:
    """The database the operator provisioned (its name is in the agent's credentials)."""
    data = kubectl.get("secret", f"{AGENT}-credentials", namespace=AGENT_NS)["data"]
    url = base64.b64decode(data["databaseUrl"]).decode()
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def _psql(kubectl: Kubectl, world: World, sql: str) -> list[str]:
    out = kubectl.exec(OUTSIDE, world.postgres_pod, "env", f"PGPASSWORD={world.postgres_password}",
                       "psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres",
                       "-tAc", sql).stdout  # fmt: skip
    return [line for line in out.splitlines() if line]


# --- the tests, in order ------------------------------------------------------------------------


def test_operator_runs_as_a_pod_with_the_charts_service_account(
    kubectl: Kubectl, cluster: Cluster, world: World
) -> None:
    (pod,) = kubectl.pods(SYSTEM, "app.kubernetes.io/component=operator")
    assert pod_ready(pod)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == f"{RELEASE}-released-operator"
    (container,) = spec["containers"]
    assert container["image"] == cluster.image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its in-cluster identity is the chart's ServiceAccount (the token the pod mounts).
    who = kubectl.exec(SYSTEM, pod["metadata"]["name"], "python", "-c",
                       "import base64, json; t = open('/var/run/secrets/kubernetes.io/"
                       "serviceaccount/token').read().split('.')[1]; "
                       "print(json.loads(base64.urlsafe_b64decode(t + '==='))['sub'])").stdout
    assert who.strip() == f"system:serviceaccount:{SYSTEM}:{RELEASE}-released-operator"


def test_agent_becomes_ready_with_its_pods_from_the_image(
    kubectl: Kubectl, cluster: Cluster, world: World, agent: dict[str, Any]
) -> None:
    conditions = {c["type"]: c["status"] for c in agent["status"]["conditions"]}
    # The operator reached the fakes of Meta and OpenAI and PostgreSQL from its pod.
    for name in ("WorkloadsReady", "KnowledgeReady", "ModelAvailable", "MetaAccountHealthy",
                 "WabaSubscribed", "WebhookRegistered"):  # fmt: skip
        assert conditions.get(name) == "True", (name, agent["status"]["conditions"])
    assert world.meta.webhook_override(PHONE) == f"https://{AGENT}.bots.example.com/webhook"
    expected = {"web": 2, "worker": 1, "redis": 1}
    for component, count in expected.items():
        pods = wait_for(f"{count} Ready {component} pod(s)",
                        lambda c=component, n=count: (  # type: ignore[misc]
                            pods if len(pods := [p for p in _agent_pods(kubectl, c)
                                                 if pod_ready(p)]) == n else None))  # fmt: skip
        for pod in pods:
            # Redis's pod has acl-reload beside it, which loads rotated passwords.
            names = [c["name"] for c in pod["spec"]["containers"]]
            assert names == (["redis", "acl-reload"] if component == "redis" else [component])
            image = cluster.redis_image if component == "redis" else cluster.image
            for container in pod["spec"]["containers"]:
                assert container["image"] == image
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True
                assert security["runAsNonRoot"] is True
                assert security["allowPrivilegeEscalation"] is False
                assert container["livenessProbe"] and container["readinessProbe"]
            assert all(s["ready"] for s in pod["status"]["containerStatuses"])
    # Really non-root, really read-only, in the running containers.
    web = _agent_pods(kubectl, "web")[0]["metadata"]["name"]
    assert kubectl.exec(AGENT_NS, web, "id", "-u").stdout.strip() == "10001"
    refused = kubectl.exec(AGENT_NS, web, "touch", "/opt/venv/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    redis = _agent_pods(kubectl, "redis")[0]["metadata"]["name"]
    assert kubectl.exec(AGENT_NS, redis, "id", "-u").stdout.strip() == "999"
    assert "ACL loaded" in kubectl.run("logs", "-n", AGENT_NS, redis, "-c", "acl-reload").stdout
    # The web tier's readiness: its Redis and its database (provisioned by the operator on the
    # PostgreSQL pod) answer.
    database = _database_name(kubectl)
    assert database in _psql(kubectl, world, "select datname from pg_database")


def test_network_policies_and_ingress_are_in_place(
    kubectl: Kubectl, cluster: Cluster, world: World, agent: dict[str, Any]
) -> None:
    policies = kubectl.get("networkpolicies", namespace=AGENT_NS, selector=INSTANCE)["items"]
    selected: set[str] = set()
    pods = kubectl.pods(AGENT_NS, INSTANCE)
    for policy in policies:
        match = policy["spec"]["podSelector"].get("matchLabels", {})
        for pod in pods:
            if all(pod["metadata"]["labels"].get(k) == v for k, v in match.items()):
                selected.add(pod["metadata"]["labels"]["app.kubernetes.io/component"])
    assert {"web", "worker", "redis"} <= selected, [p["metadata"]["name"] for p in policies]
    # No Ingress controller here (nor in a bare kind): the object, and the Service it names.
    (ingress,) = kubectl.get("ingress", namespace=AGENT_NS, selector=INSTANCE)["items"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == f"{AGENT}.bots.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhook"
    backend = path["backend"]["service"]
    assert backend == {"name": f"{AGENT}-web", "port": {"name": "http"}}
    service = kubectl.get("service", backend["name"], namespace=AGENT_NS)
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    endpoints = kubectl.get("endpoints", backend["name"], namespace=AGENT_NS)
    ips = {a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or []}
    assert ips == {p["status"]["podIP"] for p in _agent_pods(kubectl, "web")}


def test_purge_cronjob_runs_released_purge_to_completion(
    kubectl: Kubectl, cluster: Cluster, world: World, agent: dict[str, Any]
) -> None:
    (cron,) = kubectl.get("cronjobs", namespace=AGENT_NS, selector=INSTANCE)["items"]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["released", "purge"]
    assert container["image"] == cluster.image
    # What `kubectl create job --from=cronjob/...` does (kubectl 1.20 cannot for batch/v1beta1).
    template = cron["spec"]["jobTemplate"]
    kubectl.apply({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": "purge-now", "labels": template["metadata"]["labels"],
                                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"}},
                   "spec": template["spec"]}, namespace=AGENT_NS)  # fmt: skip

    def done() -> bool:
        status = kubectl.get("job", "purge-now", namespace=AGENT_NS).get("status") or {}
        if status.get("failed"):
            logs = kubectl.run("logs", "-n", AGENT_NS, "job/purge-now", check=False)
            raise AssertionError(f"the purge failed: {status}\n{logs.stdout[-3000:]}{logs.stderr}")
        return bool(status.get("succeeded"))

    wait_for("the purge Job to succeed", done, timeout=180)
    kubectl.run("delete", "job", "-n", AGENT_NS, "purge-now", check=False)


def test_signed_webhook_through_the_web_service_is_answered_exactly_once(
    kubectl: Kubectl, world: World, agent: dict[str, Any]
) -> None:
    sender = "15550000001"
    delivery = _deliver(world, FAQ_Q, sender)
    assert delivery["status"] == 200, delivery
    replies = world.meta.wait_for(lambda: _replies(world, sender), timeout=90)
    assert replies == [FAQ_A]
    # The same delivery again (Meta redelivers when unsure): still one answer.
    again = world.meta.deliver(delivery["payload"], url=WEB_URL)
    assert again["status"] == 200, again
    time.sleep(5)
    assert _replies(world, sender) == [FAQ_A]
    # A forged signature is refused at the web tier.
    forged = world.meta.deliver(delivery["payload"], url=WEB_URL, app_secret="not-the-secret")
    assert forged["status"] == 401, forged


def test_a_worker_pod_deleted_mid_task_loses_nothing(
    kubectl: Kubectl, world: World, agent: dict[str, Any]
) -> None:
    sender = "15550000002"
    (worker,) = _agent_pods(kubectl, "worker")
    before = world.openai.calls().get("POST /v1/responses", 0)
    world.openai.set_latency(8)  # the model takes its time: the task is in the middle
    try:
        assert _deliver(world, FAQ_Q, sender)["status"] == 200
        world.openai.wait_for(
            lambda: world.openai.calls().get("POST /v1/responses", 0) > before, timeout=60
        )
        # kubectl delete waits until the pod is gone (SIGTERM, then its grace period).
        kubectl.run("delete", "pod", "-n", AGENT_NS, worker["metadata"]["name"], timeout=120)
    finally:
        world.openai.set_latency(0)
    wait_for("a new Ready worker", lambda: [p for p in _agent_pods(kubectl, "worker")
                                              if pod_ready(p)], timeout=180)  # fmt: skip
    replies = world.meta.wait_for(lambda: _replies(world, sender), timeout=120)
    time.sleep(5)
    assert _replies(world, sender) == [FAQ_A], replies


def test_credential_rotation_rolls_the_pods_with_no_failed_webhook(
    kubectl: Kubectl, world: World, agent: dict[str, Any]
) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=world.kubeconfig)
    custom = client.CustomObjectsApi(api)
    credentials = kubectl.get("secret", f"{AGENT}-credentials", namespace=AGENT_NS)["data"]
    pods_before = _pods_by_component(kubectl)
    started = time.time()
    results: list[dict[str, Any]] = []
    stop = threading.Event()

    def keep_delivering() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            sender = f"1555100{n:04d}"
            try:
                results.append({"sender": sender, **_deliver(world, FAQ_Q, sender)})
            except Exception as exc:
                results.append({"sender": sender, "status": None, "error": repr(exc)})
            stop.wait(1.0)

    sender_thread = threading.Thread(target=keep_delivering, daemon=True)
    sender_thread.start()
    try:
        # Forcing a rotation (docs/operations.md): lastRotation far in the past.
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, AGENT_NS, PLURAL, AGENT,
            {"status": {"lastRotation": "2000-01-01T00:00:00Z"}},
        )  # fmt: skip

        def rotated() -> bool:
            status = kubectl.get(PLURAL, AGENT, namespace=AGENT_NS).get("status") or {}
            last = status.get("lastRotation", "")
            phase = (status.get("rotation") or {}).get("phase", "Idle")
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
            return last > since and phase == "Idle"

        wait_for("the rotation to finish", rotated, timeout=600, interval=2)
        wait_for("every pod Ready again", lambda: all(
            pod_ready(p) for p in kubectl.pods(AGENT_NS, INSTANCE)
            if p["metadata"]["labels"].get("app.kubernetes.io/component") != "purge"),
            timeout=300)  # fmt: skip
        time.sleep(3)
    finally:
        stop.set()
        sender_thread.join(timeout=30)
        api.close()
    after = kubectl.get("secret", f"{AGENT}-credentials", namespace=AGENT_NS)["data"]
    assert after["redisPassword"] != credentials["redisPassword"]
    pods_after = _pods_by_component(kubectl)
    for component in ("web", "worker"):
        assert not (pods_before[component] & pods_after[component]), f"{component} did not roll"
    # Redis learnt the new password without a restart: the same pod, no container restarted.
    assert pods_after["redis"] == pods_before["redis"]
    assert len(results) >= 10, results
    # What the web tier answered to each delivery (the fake's own record: the control call
    # above may time out while the fake still waits for the web tier).
    senders = {r["sender"] for r in results}
    answered = {}
    for record in world.meta.deliveries():
        text = json.dumps(record["payload"])
        for sender in senders:
            if record["kind"] == "message" and f'"{sender}"' in text:
                answered[sender] = record
    ROTATION["failed"] = sorted(
        (s, r.get("status"), str(r.get("response"))[:80]) for s, r in answered.items()
        if r.get("status") != 200)  # fmt: skip
    ROTATION["total"] = len(senders)
    # Meta redelivers what was not acknowledged: so does the test, then each is answered once.
    print(f"rotation: {len(ROTATION['failed'])} of {len(senders)} deliveries not "
          f"acknowledged: {ROTATION['failed']}")
    for sender, record in answered.items():
        payload, deadline = record["payload"], time.monotonic() + 180
        while record.get("status") != 200 and time.monotonic() < deadline:
            time.sleep(3)
            try:
                record = world.meta.deliver(payload, url=WEB_URL)
            except httpx.HTTPError as exc:  # the fake waits 10 s for the web tier, so do we
                record = {"status": None, "response": repr(exc)}
        assert record.get("status") == 200, (sender, record)
    for sender in senders:
        replies = world.meta.wait_for(lambda s=sender: _replies(world, s), timeout=120)  # type: ignore[misc]
        time.sleep(0.2)
        assert _replies(world, sender) == [FAQ_A], (sender, replies)


def _pods_by_component(kubectl: Kubectl) -> dict[str, set[tuple[str, int]]]:
    """component -> {(pod name, restarts of its containers)} of the agent's running pods."""
    found: dict[str, set[tuple[str, int]]] = {}
    for pod in kubectl.pods(AGENT_NS, INSTANCE):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
        restarts = sum(c.get("restartCount", 0)
                       for c in pod.get("status", {}).get("containerStatuses") or [])  # fmt: skip
        found.setdefault(component, set()).add((pod["metadata"]["name"], restarts))
    return found


#: What the rotation test saw, for the next test.
ROTATION: dict[str, Any] = {}


def test_no_webhook_failed_during_the_rotation() -> None:
    """Redis is not restarted (it loads the new passwords live) and the old web pods serve
    until the new ones are Ready: every delivery during the rotation got 200 at once."""
    assert ROTATION, "the rotation test did not run"
    assert ROTATION["failed"] == [], f"{len(ROTATION['failed'])} of {ROTATION['total']}: " + str(
        ROTATION["failed"][:5]
    )


def test_deleting_the_agent_removes_everything(
    kubectl: Kubectl, world: World, agent: dict[str, Any]
) -> None:
    kinds = ("deployments,services,configmaps,secrets,serviceaccounts,persistentvolumeclaims,"
             "networkpolicies,ingresses,cronjobs,jobs,poddisruptionbudgets,pods")  # fmt: skip
    database = _database_name(kubectl)
    made = kubectl.run("get", kinds, "-n", AGENT_NS, "-l", INSTANCE, "-o", "name").stdout.split()
    assert len(made) >= 15, made
    kubectl.run("delete", PLURAL, AGENT, "-n", AGENT_NS, timeout=300)

    def left() -> list[str]:
        found = kubectl.run("get", kinds, "-n", AGENT_NS, "-l", INSTANCE, "-o", "name")
        return found.stdout.split()

    wait_for("every child to be gone", lambda: not left(), timeout=300,
             detail=lambda: "\n".join(left()))  # fmt: skip
    # The user's own Secrets stay; the database and its roles the operator made are dropped.
    assert kubectl.exists("secret", f"{AGENT}-meta", AGENT_NS)
    wait_for("the database to be dropped",
             lambda: database not in _psql(kubectl, world, "select datname from pg_database"),
             timeout=120)  # fmt: skip
    # (the name comes from the operator's sanitizer: [a-z0-9_] only)
    roles = _psql(kubectl, world,
                  f"select rolname from pg_roles where rolname like '{database}%'")  # noqa: S608
    assert roles == [], roles
    assert world.meta.webhook_override(PHONE) is None
