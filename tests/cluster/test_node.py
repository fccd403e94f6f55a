"""The cluster itself, with the project's image: a node that runs pods (non-root, read-only root
filesystem), Services by ClusterIP and by DNS name, `kubectl logs`, `exec` and
`port-forward`; on the local node, nothing a pod sends leaves the machine."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.support import Kubectl, pod_ready, wait_for
from tests.k8s_node import Cluster

# The first test's setup may build the node (cold: minutes) and always starts it.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

PORT = 8000
# A tiny HTTP server from the project's image: answers its pod name and the path.
SERVER = """
import http.server, json, os, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pod": os.environ["POD"], "path": self.path}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("served", self.path, flush=True)
socketserver.TCPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def _deployment(cluster: Cluster, name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "web",
                            "image": cluster.image,
                            "imagePullPolicy": cluster.pull_policy,
                            "command": ["python", "-c", SERVER],
                            "env": [{"name": "POD", "valueFrom": {
                                "fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                               "periodSeconds": 1},
                            "securityContext": {"readOnlyRootFilesystem": True,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                          "limits": {"memory": "128Mi"}},
                        }
                    ],
                },
            },
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def app(kubectl: Kubectl, cluster: Cluster) -> Iterator[dict[str, str]]:
    """Two replicas of the server behind a Service, in a namespace of their own."""
    ns = f"node-{uuid.uuid4().hex[:6]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hello"},
        "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    kubectl.apply(_deployment(cluster, "hello", 2), service, namespace=ns)
    try:
        wait_for(
            "two Ready pods",
            lambda: len([p for p in kubectl.pods(ns, "app=hello") if pod_ready(p)]) == 2,
            timeout=180,
            detail=lambda: kubectl.run("describe", "pods", "-n", ns, check=False).stdout[-3000:],
        )
        pods = kubectl.pods(ns, "app=hello")
        yield {"ns": ns, "pod": pods[0]["metadata"]["name"], "other": pods[1]["metadata"]["name"],
               "ip": pods[0]["status"]["podIP"]}  # fmt: skip
    finally:
        kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def _fetch(kubectl: Kubectl, ns: str, pod: str, url: str) -> dict[str, Any]:
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
    out = kubectl.exec(ns, pod, "python", "-c", code).stdout
    return dict(json.loads(out))


def test_node_is_ready(kubectl: Kubectl, cluster: Cluster) -> None:
    nodes = kubectl.get("nodes")["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n["status"]["conditions"])]  # fmt: skip
    assert ready, [n["status"]["conditions"] for n in nodes]
    if cluster.local:
        (node,) = nodes
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.20.2"
        assert info["containerRuntimeVersion"].startswith("containerd://1.")


def test_pods_run_the_image_as_non_root_on_a_read_only_root(
    kubectl: Kubectl, cluster: Cluster, app: dict[str, str]
) -> None:
    ns, pod = app["ns"], app["pod"]
    if cluster.local:
        assert app["ip"].startswith("10.244.0."), app  # the node's pod CIDR, 10.244.0.0/24
    assert kubectl.exec(ns, pod, "id", "-u").stdout.strip() == "10001"
    refused = kubectl.exec(ns, pod, "touch", "/opt/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_service_by_cluster_ip_and_by_dns_name_from_another_pod(
    kubectl: Kubectl, app: dict[str, str]
) -> None:
    ns, other = app["ns"], app["other"]
    ip = kubectl.get("service", "hello", namespace=ns)["spec"]["clusterIP"]
    # kube-proxy programs a new Service within a moment: poll.
    seen = wait_for("the Service by ClusterIP", lambda: _fetch(kubectl, ns, other, f"http://{ip}/a"))
    assert seen["path"] == "/a"
    by_name = _fetch(kubectl, ns, other, f"http://hello.{ns}.svc.cluster.local/b")
    assert by_name["path"] == "/b"
    short = _fetch(kubectl, ns, other, "http://hello/c")  # the pod's search domains
    assert short["path"] == "/c"
    # Both replicas answer through the Service.
    pods = {_fetch(kubectl, ns, other, "http://hello/spread")["pod"] for _ in range(20)}
    assert len(pods) == 2, pods


def test_logs_and_port_forward(kubectl: Kubectl, app: dict[str, str]) -> None:
    ns, pod = app["ns"], app["pod"]
    with kubectl.port_forward(ns, f"pod/{pod}", PORT) as port:
        url = f"http://127.0.0.1:{port}/forwarded"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert json.loads(answer.read())["pod"] == pod
    wait_for("the request in the pod's log",
             lambda: "served /forwarded" in kubectl.logs(ns, pod), timeout=30)  # fmt: skip


def test_nothing_a_pod_sends_leaves_the_machine(
    kubectl: Kubectl, cluster: Cluster, app: dict[str, str]
) -> None:
    if not cluster.local:
        pytest.skip("only the local node confines its pods to the machine")
    code = (
        "import socket\n"
        "for host in ('1.1.1.1', '8.8.8.8', '10.244.9.9'):\n"
        "    try:\n"
        "        socket.create_connection((host, 80), timeout=3).close(); print(host, 'open')\n"
        "    except OSError as exc:\n"
        "        print(host, 'refused', type(exc).__name__)\n"
        "try:\n"
        "    print('dns', socket.gethostbyname('pypi.org'))\n"
        "except OSError:\n"
        "    print('dns none')\n"
    )
    out = kubectl.exec(app["ns"], app["pod"], "python", "-c", code).stdout
    assert "open" not in out, out
    assert "dns none" in out, out
