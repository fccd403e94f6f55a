"""`helm install` of charts/released-operator on a real control plane (kube-apiserver 1.20.2).

The plane has no kubelet, so the operator's own pod never runs. What is checked instead:

- the release installs, the CRD is established, and the objects are the ones the chart renders;
- the chart's ServiceAccount may do every verb the operator needs on every kind it manages
  (SubjectAccessReview, and `kubectl auth can-i --as` for a few), and nothing beyond that
  (writes to nodes or RBAC, pods/exec, wildcards, deleting agents, ...);
- the operator itself, run out of cluster with the ServiceAccount's own token, takes an agent
  through its whole lifecycle (Ready, then deletion through its finalizer) without one
  "Forbidden": the RBAC is not only narrow but sufficient;
- `helm upgrade` to two replicas (kopf peering) and `helm uninstall`, which keeps the CRD.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s_control_plane import ControlPlane, kubectl_path, start_control_plane
from tests.servers import free_port
from tests.unit.chart._helm import CHART_DIR, REPO_ROOT, render, rule_triples, run_helm

pytestmark = pytest.mark.k8s

RELEASE = "released"
NAMESPACE = "released-system"
FULLNAME = f"{RELEASE}-released-operator"  # the chart's fullname for this release name
SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
SA_GROUPS = [
    "system:serviceaccounts",
    f"system:serviceaccounts:{NAMESPACE}",
    "system:authenticated",
]
AGENT_NS = "acme"
CRD_NAME = "whatsappagents.whatsapp.released.io"
GROUP, VERSION, PLURAL = "whatsapp.released.io", "v1alpha1", "whatsappagents"
WAIT_S = 60.0

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except ApiException as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last})")
        time.sleep(0.25)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    started = start_control_plane()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def api(plane: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = plane.api_client()
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def release(helm: str, plane: ControlPlane, api: client.ApiClient) -> dict[str, Any]:
    """The chart installed with its defaults; the agent namespace created beside it."""
    proc = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        plane.kubeconfig,
        "--timeout",
        "2m",
    )
    assert "STATUS: deployed" in proc.stdout, proc.stdout
    client.CoreV1Api(api).create_namespace({"metadata": {"name": AGENT_NS}})
    return {"objects": render(helm, namespace=NAMESPACE, release=RELEASE)}


def _triples_needed(release: dict[str, Any]) -> set[tuple[str, str, str]]:
    (role,) = [o for o in release["objects"] if o["kind"] == "ClusterRole"]
    return rule_triples(role["rules"])


# --- install ----------------------------------------------------------------------------------


def test_crd_is_established_and_kept(api: client.ApiClient, release: dict[str, Any]) -> None:
    ext = client.ApiextensionsV1Api(api)

    def established() -> Any:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        conditions = {c.type: c.status for c in crd.status.conditions or []}
        return crd if conditions.get("Established") == "True" else None

    crd = wait_for("the CRD to be established", established)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
    source = yaml.safe_load((REPO_ROOT / "crds" / "whatsappagent.yaml").read_text())
    assert crd.spec.names.kind == source["spec"]["names"]["kind"]
    assert [v.name for v in crd.spec.versions] == [v["name"] for v in source["spec"]["versions"]]
    # kopf's peering CRD comes from the chart's crds/ directory on install.
    ext.read_custom_resource_definition("clusterkopfpeerings.kopf.dev")


def test_release_objects(api: client.ApiClient, release: dict[str, Any]) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    deployment = apps.read_namespaced_deployment(FULLNAME, NAMESPACE)
    (container,) = deployment.spec.template.spec.containers
    assert container.command == ["released-operator"]
    assert deployment.spec.strategy.type == "Recreate"
    assert deployment.spec.template.spec.service_account_name == FULLNAME
    core.read_namespaced_service_account(FULLNAME, NAMESPACE)
    service = core.read_namespaced_service(f"{FULLNAME}-metrics", NAMESPACE)
    assert {p.name: p.port for p in service.spec.ports} == {"metrics": 8080, "health": 8081}
    role = rbac.read_cluster_role(FULLNAME)
    live = rule_triples([r.to_dict() for r in role.rules])
    assert live == _triples_needed(release)
    binding = rbac.read_cluster_role_binding(FULLNAME)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", FULLNAME, NAMESPACE)
    ]


# --- RBAC as the ServiceAccount ---------------------------------------------------------------

CLUSTER_SCOPED = {
    "namespaces",
    "customresourcedefinitions",
    "nodes",
    "clusterroles",
    "clusterrolebindings",
    "validatingwebhookconfigurations",
    "clusterkopfpeerings",
    "*",
}


def can(api: client.ApiClient, group: str, resource: str, verb: str, ns: str = AGENT_NS) -> bool:
    resource, _, subresource = resource.partition("/")
    attributes = {"group": group, "resource": resource, "verb": verb}
    if subresource:
        attributes["subresource"] = subresource
    if resource not in CLUSTER_SCOPED:
        attributes["namespace"] = ns
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": SA_USER, "groups": SA_GROUPS, "resourceAttributes": attributes},
        }
    )
    return bool(review.status.allowed)


def test_service_account_may_do_what_the_operator_needs(
    api: client.ApiClient, release: dict[str, Any]
) -> None:
    needed = _triples_needed(release)
    assert len(needed) > 50
    denied = [t for t in sorted(needed) if not can(api, *t)]
    assert denied == [], f"the operator's ServiceAccount may not: {denied}"
    # The operator's own namespace and any other agent namespace alike (ClusterRole).
    assert can(api, "", "secrets", "get", ns="some-other-client")
    assert can(api, "apps", "deployments", "patch", ns=NAMESPACE)


DENIED = [
    ("", "nodes", "create"),
    ("", "nodes", "patch"),
    ("", "nodes", "delete"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ("rbac.authorization.k8s.io", "roles", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ("", "pods/exec", "create"),
    ("", "pods/portforward", "create"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    ("", "serviceaccounts/token", "create"),
    ("", "namespaces", "create"),
    ("", "namespaces", "delete"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "delete"),
    ("whatsapp.released.io", "whatsappagents", "create"),
    ("whatsapp.released.io", "whatsappagents", "delete"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "create"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
    ("apps", "statefulsets", "create"),
    ("batch", "jobs", "create"),
    ("", "users", "impersonate"),
    ("*", "*", "*"),
    ("", "*", "get"),
    ("", "secrets", "*"),
]


@pytest.mark.parametrize(("group", "resource", "verb"), DENIED)
def test_service_account_is_denied_the_rest(
    api: client.ApiClient, release: dict[str, Any], group: str, resource: str, verb: str
) -> None:
    assert not can(api, group, resource, verb), f"{SA_USER} may {verb} {group}/{resource}"


def test_kubectl_auth_can_i_as_the_service_account(
    plane: ControlPlane, release: dict[str, Any]
) -> None:
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("no kubectl matching the plane in the cache")
    cases = [
        (["create", "deployments.apps"], "yes"),
        (["patch", "whatsappagents.whatsapp.released.io/status"], "yes"),
        (["watch", "secrets"], "yes"),
        (["create", "pods/exec"], "no"),
        (["delete", "nodes"], "no"),
    ]
    for args, expected in cases:
        proc = subprocess.run(
            [
                kubectl,
                "--kubeconfig",
                plane.kubeconfig,
                "auth",
                "can-i",
                *args,
                "-n",
                AGENT_NS,
                f"--as={SA_USER}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.stdout.strip() == expected, (args, proc.stdout, proc.stderr)


# --- the operator, out of cluster, as the ServiceAccount --------------------------------------


def _service_account_kubeconfig(
    api: client.ApiClient,
    plane: ControlPlane,
    path: Path,
    account: str = FULLNAME,
    namespace: str = NAMESPACE,
) -> Path:
    """A kubeconfig that authenticates with a ServiceAccount's own token (1.20: a Secret)."""
    core = client.CoreV1Api(api)

    def token() -> str | None:
        sa = core.read_namespaced_service_account(account, namespace)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            if secret.type == "kubernetes.io/service-account-token" and secret.data:
                return base64.b64decode(secret.data["token"]).decode()
        return None

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "plane",
                "cluster": {"server": plane.server, "certificate-authority": plane.ca_file},
            }
        ],
        "users": [{"name": "operator", "user": {"token": wait_for("the SA token", token)}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _condition(agent: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((agent or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def test_operator_runs_an_agent_lifecycle_as_the_service_account(
    api: client.ApiClient, plane: ControlPlane, release: dict[str, Any], tmp_path: Path
) -> None:
    core = client.CoreV1Api(api)
    ns = f"life-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        kubeconfig = _service_account_kubeconfig(api, plane, tmp_path / "sa.kubeconfig")
        test_kubeconfig = _service_account_kubeconfig(
            api, plane, tmp_path / "test.kubeconfig", account=f"{FULLNAME}-test"
        )
        _run_lifecycle(api, kubeconfig, ns, tmp_path, release, test_kubeconfig)
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def _run_lifecycle(
    api: client.ApiClient,
    kubeconfig: Path,
    ns: str,
    tmp_path: Path,
    release: dict[str, Any],
    test_kubeconfig: Path,
    extra_env: dict[str, str] | None = None,
) -> None:
    """The operator, out of cluster with ``kubeconfig``'s identity, takes an agent in ``ns``
    from creation to Ready and through its deletion; the chart's `helm test` script runs
    against it with ``test_kubeconfig``. No "Forbidden" may appear in the operator's log."""
    from released.fakes import FakeMeta, FakeOpenAI
    from released.fakes.meta import DEFAULT_ACCESS_TOKEN, DEFAULT_APP_SECRET
    from released.fakes.openai import DEFAULT_API_KEY
    from tests.kubelet import FakeKubelet

    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    wait_for(
        "the default ServiceAccount's token",
        lambda: core.read_namespaced_service_account("default", ns).secrets,
    )
    for name, data in {
        "meta": {"accessToken": DEFAULT_ACCESS_TOKEN, "appSecret": DEFAULT_APP_SECRET},
        "openai": {"apiKey": DEFAULT_API_KEY},
        "db": {"url": "postgresql://bot:pw@postgres.example:5432/bot"},
    }.items():
        core.create_namespaced_secret(
            ns, {"metadata": {"name": name}, "data": {k: _b64(v) for k, v in data.items()}}
        )

    health_port = free_port()
    metrics_port = free_port()
    log_path = tmp_path / f"operator-{ns}.log"
    with contextlib.ExitStack() as stack:
        # An onboarded client: the app is subscribed to its WABA, so the override may be set.
        meta = stack.enter_context(FakeMeta(waba_subscribed=True).start())
        openai = stack.enter_context(FakeOpenAI().start())
        kubelet = FakeKubelet(core, ns, interval=0.3).start()
        stack.callback(kubelet.stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASED_", "KUBE"))}
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)]),
                "RELEASED_GRAPH_URL": meta.url,
                "RELEASED_OPENAI_BASE_URL": openai.url,
                "RELEASED_HEALTH_PORT": str(health_port),
                "RELEASED_METRICS_PORT": str(metrics_port),
                "RELEASED_LOG_FORMAT": "json",
                "RELEASED_CLEANUP_MAX_ATTEMPTS": "3",
                "RELEASED_INGRESS_HOST_SUFFIXES": '["bots.example.com"]',
                **(extra_env or {}),
            }
        )
        log = stack.enter_context(log_path.open("wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "whatsapp_operator"],
            env=env,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

        stack.callback(stop)

        def log_tail() -> str:
            return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

        def alive() -> bool:
            assert proc.poll() is None, f"operator exited {proc.returncode}:\n{log_tail()}"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", health_port), timeout=0.5),
            ):
                return True
            return False

        wait_for("the operator's liveness endpoint", alive, timeout=30)

        number = "5550001234"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WhatsAppAgent",
            "metadata": {"name": "acme"},
            "spec": {
                "phoneNumberId": number,
                "faqs": [{"q": "When are you open?", "a": "9 to 5, Monday to Friday."}],
                "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
                "database": {"secretRef": {"name": "db", "key": "url"}},
                "ingress": {"host": "acme.bots.example.com", "webhook": {"register": True}},
            },
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

        def get() -> dict[str, Any] | None:
            try:
                obj: dict[str, Any] = custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, "acme"
                )
                return obj
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        def ready() -> bool:
            agent = get()
            generation = (agent or {}).get("metadata", {}).get("generation")
            return (
                _condition(agent, "Ready").get("status") == "True"
                and (agent or {}).get("status", {}).get("observedGeneration") == generation
            )

        try:
            wait_for("the agent to be Ready", ready, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {get()}\noperator log:\n{log_tail()}") from None
        assert meta.webhook_override(number), "the webhook override was not registered"
        assert client.AppsV1Api(api).list_namespaced_deployment(ns).items
        _run_helm_test_script(release, test_kubeconfig, health_port, metrics_port)

        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "acme")
        try:
            wait_for("the agent to be deleted (finalizer released)", lambda: get() is None)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log_tail()}") from None
        assert meta.webhook_override(number) is None, "external cleanup did not run"

    text = log_path.read_text(errors="replace")
    assert "Forbidden" not in text, text[-4000:]
    assert "Not enough permissions" not in text, text[-4000:]


def _run_helm_test_script(
    release: dict[str, Any], kubeconfig: Path, health_port: int, metrics_port: int
) -> None:
    """The chart's `helm test` pod script, run here against the live operator: the pod's
    service-account directory becomes the test ServiceAccount's token and the plane's CA, the
    Service URLs the local ports."""
    (pod,) = [
        o
        for o in release["objects"]
        if o["kind"] == "Pod" and o["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    (container,) = pod["spec"]["containers"]
    config = yaml.safe_load(kubeconfig.read_text())
    sa_dir = kubeconfig.parent / f"{kubeconfig.stem}-sa"
    sa_dir.mkdir(exist_ok=True)
    (sa_dir / "token").write_text(config["users"][0]["user"]["token"])
    cluster = config["clusters"][0]["cluster"]
    (sa_dir / "ca.crt").write_text(Path(cluster["certificate-authority"]).read_text())
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(
        {
            "METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
            "HEALTH_URL": f"http://127.0.0.1:{health_port}/healthz",
            "SA_DIR": str(sa_dir),
            "KUBE_API": cluster["server"],
            "PATH": os.environ.get("PATH", ""),
        }
    )
    assert container["command"] == ["python", "-c"]
    proc = subprocess.run(
        [sys.executable, "-c", container["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CRD established" in proc.stdout and "metrics OK" in proc.stdout


# --- the namespaced scope: a second release whose operator serves one namespace ---------------

NS_RELEASE = "nsop"
NS_NAMESPACE = "nsop-system"
NS_FULLNAME = f"{NS_RELEASE}-released-operator"
NS_USER = f"system:serviceaccount:{NS_NAMESPACE}:{NS_FULLNAME}"
NS_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NS_NAMESPACE}",
             "system:authenticated"]  # fmt: skip
TENANT_NS = "tenant-a"
OTHER_NS = "tenant-b"
NS_VALUES = (
    "rbac.scope=namespaced",
    f"operator.namespaces={{{TENANT_NS}}}",
    "crds.install=false",  # the first release owns the CRD
)


@pytest.fixture(scope="module")
def namespaced_release(
    helm: str, plane: ControlPlane, api: client.ApiClient, release: dict[str, Any]
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    for ns in (TENANT_NS, OTHER_NS):
        core.create_namespace({"metadata": {"name": ns}})
    args = ["install", NS_RELEASE, str(CHART_DIR), "--namespace", NS_NAMESPACE,
            "--create-namespace", "--kubeconfig", plane.kubeconfig, "--timeout", "2m"]  # fmt: skip
    for value in NS_VALUES:
        args += ["--set", value]
    proc = run_helm(helm, *args)
    assert "STATUS: deployed" in proc.stdout, proc.stdout
    return {"objects": render(helm, *NS_VALUES, namespace=NS_NAMESPACE, release=NS_RELEASE)}


def ns_can(api: client.ApiClient, group: str, resource: str, verb: str, ns: str | None) -> bool:
    resource, _, subresource = resource.partition("/")
    attributes = {"group": group, "resource": resource, "verb": verb}
    if subresource:
        attributes["subresource"] = subresource
    if ns is not None:
        attributes["namespace"] = ns
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": NS_USER, "groups": NS_GROUPS, "resourceAttributes": attributes},
        }
    )
    return bool(review.status.allowed)


def test_namespaced_release_has_roles_only_where_agents_live(
    api: client.ApiClient, namespaced_release: dict[str, Any]
) -> None:
    from whatsapp_operator import rbac as rules

    rbac = client.RbacAuthorizationV1Api(api)
    role = rbac.read_namespaced_role(NS_FULLNAME, TENANT_NS)
    needed = rule_triples([dict(r) for r in rules.NAMESPACED_RULES])
    assert rule_triples([r.to_dict() for r in role.rules]) == needed
    binding = rbac.read_namespaced_role_binding(NS_FULLNAME, TENANT_NS)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", NS_FULLNAME, NS_NAMESPACE)
    ]
    for ns in (OTHER_NS, NS_NAMESPACE, "default"):
        assert not [
            r for r in rbac.list_namespaced_role(ns).items if r.metadata.name == NS_FULLNAME
        ]
    cluster = rbac.read_cluster_role(NS_FULLNAME)
    granted = rule_triples([r.to_dict() for r in cluster.rules])
    assert granted == {t for t in rule_triples([dict(r) for r in rules.CLUSTER_RULES])
                       if t[0] != "admissionregistration.k8s.io"}  # fmt: skip


def test_namespaced_service_account_may_do_its_work_in_its_namespace_only(
    api: client.ApiClient, namespaced_release: dict[str, Any]
) -> None:
    from whatsapp_operator import rbac as rules

    needed = sorted(rule_triples([dict(r) for r in rules.NAMESPACED_RULES]))
    assert len(needed) > 40
    denied = [t for t in needed if not ns_can(api, *t, ns=TENANT_NS)]
    assert denied == [], f"{NS_USER} may not: {denied}"
    allowed_elsewhere = [
        (t, ns) for ns in (OTHER_NS, NS_NAMESPACE) for t in needed if ns_can(api, *t, ns=ns)
    ]
    assert allowed_elsewhere == [], allowed_elsewhere
    # Cluster-wide (no namespace): no Secret, ConfigMap or Deployment anywhere.
    for group, resource in [("", "secrets"), ("", "configmaps"), ("apps", "deployments"),
                            ("whatsapp.released.io", "whatsappagents")]:  # fmt: skip
        for verb in ("get", "list", "watch"):
            assert not ns_can(api, group, resource, verb, ns=None), (resource, verb)
    assert ns_can(api, "apiextensions.k8s.io", "customresourcedefinitions", "get", ns=None)
    assert ns_can(api, "", "namespaces", "list", ns=None)


def test_namespaced_denials_hold_against_the_real_api(
    api: client.ApiClient, plane: ControlPlane, namespaced_release: dict[str, Any], tmp_path: Path
) -> None:
    """With the chart's own ServiceAccount token, not a review: the API server refuses."""
    from kubernetes import config as kube_config

    core = client.CoreV1Api(api)
    core.create_namespaced_secret(OTHER_NS, {"metadata": {"name": "theirs"},
                                             "stringData": {"k": "v"}})  # fmt: skip
    kubeconfig = _service_account_kubeconfig(
        api, plane, tmp_path / "ns.kubeconfig", account=NS_FULLNAME, namespace=NS_NAMESPACE
    )
    as_operator = kube_config.new_client_from_config(str(kubeconfig))
    try:
        its_core = client.CoreV1Api(as_operator)
        its_apps = client.AppsV1Api(as_operator)
        its_core.list_namespaced_secret(TENANT_NS)  # its own namespace: allowed
        attempts = {
            "list Secrets cluster-wide": lambda: its_core.list_secret_for_all_namespaces(),
            "read a Secret in another namespace": lambda: its_core.read_namespaced_secret(
                "theirs", OTHER_NS
            ),
            "list Secrets in the release namespace": lambda: its_core.list_namespaced_secret(
                NS_NAMESPACE
            ),
            "watch ConfigMaps cluster-wide": lambda: its_core.list_config_map_for_all_namespaces(
                watch=False
            ),
            "create a Deployment in another namespace": lambda: (
                its_apps.create_namespaced_deployment(
                    OTHER_NS,
                    {
                        "metadata": {"name": "x"},
                        "spec": {
                            "selector": {"matchLabels": {"a": "b"}},
                            "template": {
                                "metadata": {"labels": {"a": "b"}},
                                "spec": {"containers": [{"name": "x", "image": "x"}]},
                            },
                        },
                    },
                )
            ),
        }
        refused = []
        for what, attempt in attempts.items():
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403, (what, denied.value.status)
            refused.append(what)
        assert len(refused) == len(attempts) == 5
    finally:
        as_operator.close()


def test_namespaced_operator_runs_an_agent_lifecycle_as_its_service_account(
    api: client.ApiClient, plane: ControlPlane, namespaced_release: dict[str, Any], tmp_path: Path
) -> None:
    kubeconfig = _service_account_kubeconfig(
        api, plane, tmp_path / "ns.kubeconfig", account=NS_FULLNAME, namespace=NS_NAMESPACE
    )
    test_kubeconfig = _service_account_kubeconfig(
        api, plane, tmp_path / "ns-test.kubeconfig", account=f"{NS_FULLNAME}-test",
        namespace=NS_NAMESPACE,
    )  # fmt: skip
    (deployment,) = [o for o in namespaced_release["objects"] if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    namespaces = {e["name"]: e.get("value") for e in container["env"]}["RELEASED_NAMESPACES"]
    assert namespaces == TENANT_NS
    _run_lifecycle(
        api,
        kubeconfig,
        TENANT_NS,
        tmp_path,
        namespaced_release,
        test_kubeconfig,
        extra_env={"RELEASED_NAMESPACES": namespaces},
    )


# --- upgrade and uninstall (last: they change the release) ------------------------------------


def _run_peering_command(
    api: client.ApiClient, plane: ControlPlane, container: Any, tmp_path: Path
) -> None:
    """The upgraded Deployment's command, run here as the ServiceAccount: kopf joins the
    ClusterKopfPeering the chart created (RBAC and CRD for peering suffice)."""
    health_port = free_port()
    args = [
        f"--liveness=http://127.0.0.1:{health_port}/healthz" if a.startswith("--liveness=") else a
        for a in container.args
    ]
    assert container.command == ["kopf"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASED_", "KUBE"))}
    env.update(
        {
            "KUBECONFIG": str(_service_account_kubeconfig(api, plane, tmp_path / "sa.kubeconfig")),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)]),
            "RELEASED_METRICS_PORT": str(free_port()),
            "RELEASED_HEALTH_PORT": str(health_port),
        }
    )
    log_path = tmp_path / "peering.log"
    custom = client.CustomObjectsApi(api)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", *args],
            env=env,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:

            def peers() -> dict[str, Any]:
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                obj = custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", FULLNAME
                )
                return dict(obj.get("status") or {})

            try:
                found = wait_for("kopf to announce itself in the peering", peers, timeout=60)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}"
                ) from None
            assert len(found) == 1, found
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert "Forbidden" not in text and "Not enough permissions" not in text, text[-3000:]


def test_upgrade_to_peering_then_uninstall_keeps_the_crd(
    helm: str, api: client.ApiClient, plane: ControlPlane, release: dict[str, Any], tmp_path: Path
) -> None:
    run_helm(
        helm,
        "upgrade",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        plane.kubeconfig,
        "--set",
        "replicas=2",
    )
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(FULLNAME, NAMESPACE)
    assert deployment.spec.replicas == 2
    assert deployment.spec.strategy.type == "RollingUpdate"
    (container,) = deployment.spec.template.spec.containers
    assert f"--peering={FULLNAME}" in container.args
    custom = client.CustomObjectsApi(api)
    custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", FULLNAME)
    assert can(api, "kopf.dev", "clusterkopfpeerings", "patch")
    _run_peering_command(api, plane, container, tmp_path)

    run_helm(helm, "uninstall", RELEASE, "--namespace", NAMESPACE, "--kubeconfig", plane.kubeconfig)
    rbac = client.RbacAuthorizationV1Api(api)
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(FULLNAME)
    assert gone.value.status == 404
    ext = client.ApiextensionsV1Api(api)
    crd = ext.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.deletion_timestamp is None, "helm uninstall deleted the kept CRD"
