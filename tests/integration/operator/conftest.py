"""Fixtures for the operator's integration tests on a real control plane.

One control plane (etcd + kube-apiserver 1.20.2 + kube-controller-manager) per session, with the
``WhatsAppAgent`` CRD applied from ``crds/whatsappagent.yaml``; the fakes of OpenAI and Meta in
threads; the operator itself as a child process (``python -m whatsapp_operator``, the same
command as in the image) pointed at the fakes through ``RELEASED_GRAPH_URL`` and
``RELEASED_OPENAI_BASE_URL``. Each test gets its own namespace, with the user's Secrets and a
fake kubelet that binds and readies the agent's pods.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
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

from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN, DEFAULT_APP_SECRET
from released.fakes.openai import DEFAULT_API_KEY
from tests.k8s_control_plane import ControlPlane, start_control_plane
from tests.kubelet import FakeKubelet
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "whatsappagent.yaml"
GROUP, VERSION, PLURAL = "whatsapp.released.io", "v1alpha1", "whatsappagents"
WAIT_S = 45.0

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except ApiException as exc:  # transient answers while objects come and go
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_exc})")
        time.sleep(0.25)


# ---------------------------------------------------------------------------------------------
# the cluster


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    plane = start_control_plane()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = control_plane.api_client()
    ext = client.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load(CRD_FILE.read_text())
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        obj = ext.read_custom_resource_definition(crd["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in obj.status.conditions or []
        )

    wait_for("the WhatsAppAgent CRD to be established", established)
    yield api_client
    api_client.close()


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


# ---------------------------------------------------------------------------------------------
# the fakes


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def fake_meta() -> Iterator[FakeMeta]:
    # The clients' Meta apps are already subscribed to their WABAs (onboarding); without that
    # Meta refuses a webhook override (README of ../shared/contracts).
    fake = FakeMeta(waba_subscribed=True).start()
    try:
        yield fake
    finally:
        fake.stop()


# ---------------------------------------------------------------------------------------------
# the operator


class OperatorProcess:
    """``python -m whatsapp_operator`` as a child process, restartable and killable."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / "operator-0.log"
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        self.health_port = free_port()
        self.metrics_port = free_port()
        env = {
            **self.env,
            "RELEASED_METRICS_PORT": str(self.metrics_port),
            "RELEASED_HEALTH_PORT": str(self.health_port),
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "whatsapp_operator"],
                env=env,
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for("the operator's liveness endpoint", self._alive, timeout=30)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.health_port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # Event posting retries for namespaces being deleted are noise here.
        kept = [line for line in text.splitlines() if "/events -> " not in line]
        return "\n".join(kept[-lines:])

    def log_text(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log"))
        )


@pytest.fixture(scope="session")
def operator_env(
    control_plane: ControlPlane, fake_openai: FakeOpenAI, fake_meta: FakeMeta
) -> dict[str, str]:
    pythonpath = os.pathsep.join(
        [str(REPO / "operator"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASED_")}
    env.update(
        {
            "KUBECONFIG": control_plane.kubeconfig,
            "PYTHONPATH": pythonpath,
            "RELEASED_GRAPH_URL": fake_meta.url,
            "RELEASED_OPENAI_BASE_URL": fake_openai.url,
            "RELEASED_LOG_FORMAT": "json",
            "RELEASED_CLEANUP_MAX_ATTEMPTS": "3",
            # The session's operator watches the tests' op-* namespaces (a glob pattern).
            "RELEASED_NAMESPACES": "op-*",
            # The platform's policy: agents may use hosts under bots.example.com.
            "RELEASED_INGRESS_HOST_SUFFIXES": '["bots.example.com"]',
            # The per-agent timer (workloads, rotation) every 2 s instead of 60 s.
            "RELEASED_TIMER_INTERVAL": "2",
            "RELEASED_WATCH_SERVER_TIMEOUT": "60",
            "RELEASED_WATCH_CLIENT_TIMEOUT": "90",
        }
    )
    return env


@pytest.fixture(scope="session")
def operator(
    api: client.ApiClient, operator_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(operator_env, tmp_path_factory.mktemp("operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------
# one namespace per test


def _default_sa_ready(core: client.CoreV1Api, ns: str) -> bool:
    try:
        return bool(core.read_namespaced_service_account("default", ns).secrets)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@contextlib.contextmanager
def agent_namespace(core: client.CoreV1Api, prefix: str = "op") -> Iterator[str]:
    """A fresh namespace with the user's Secrets ``meta``, ``openai`` and ``db`` (a database
    URL) and a fake kubelet for its pods; deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(f"service account default in {name}", lambda: _default_sa_ready(core, name))
    secrets = {
        "meta": {"accessToken": DEFAULT_ACCESS_TOKEN, "appSecret": DEFAULT_APP_SECRET},
        "openai": {"apiKey": DEFAULT_API_KEY},
        "db": {"url": "postgresql://bot:pw@postgres.example:5432/bot"},
    }
    for secret, data in secrets.items():
        core.create_namespaced_secret(
            name,
            {
                "metadata": {"name": secret},
                "data": {k: _b64(v) for k, v in data.items()},
            },
        )
    kubelet = FakeKubelet(core, name, interval=0.3).start()
    try:
        yield name
    finally:
        kubelet.stop()
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A namespace that the session's operator watches (``op-*``)."""
    with agent_namespace(core, "op") as name:
        yield name


def agent_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A valid agent with inline FAQs, the namespace's Secrets and a database Secret."""
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
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WhatsAppAgent",
        "metadata": {"name": name},
        "spec": body,
    }
