"""kubectl for the cluster tests: apply, get, wait, exec, logs and port-forward, the way a
user would, against whatever cluster :class:`tests.k8s_node.Cluster` names."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import yaml

from tests.k8s_node import Cluster

T = TypeVar("T")


class KubectlError(RuntimeError):
    pass


class Kubectl:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.cluster.kubectl, "--kubeconfig", self.cluster.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> str:
        ns = ["-n", namespace] if namespace else []
        text = yaml.safe_dump_all(list(objects))
        return self.run("apply", *ns, "-f", "-", stdin=text).stdout

    def get(self, kind: str, name: str = "", namespace: str | None = None, **kw: str) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        for key, value in kw.items():
            args += [f"--{key.replace('_', '-')}", value]
        return json.loads(self.run(*args).stdout)

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        ns = ["-n", namespace] if namespace else []
        proc = self.run("get", kind, name, *ns, "-o", "name", check=False)
        if proc.returncode == 0:
            return True
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return False
        raise KubectlError(proc.stderr)

    def exec(
        self, namespace: str, pod: str, *command: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-n", namespace, pod, "--", *command, timeout=timeout, check=check)

    def logs(self, namespace: str, pod: str, *args: str) -> str:
        return self.run("logs", "-n", namespace, pod, *args).stdout

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", namespace=namespace, selector=selector)[
            "items"
        ]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int) -> Iterator[int]:
        """``kubectl port-forward`` on 127.0.0.1; yields the local port."""
        proc = subprocess.Popen(
            [self.cluster.kubectl, "--kubeconfig", self.cluster.kubeconfig, "port-forward",
             "-n", namespace, target, f":{port}", "--address", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not found:
                err = proc.stderr.read() if proc.stderr else ""
                raise KubectlError(f"port-forward {target}: {line!r} {err}")
            yield int(found.group(1))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0,
             interval: float = 1.0, detail: Callable[[], str] | None = None) -> T:  # fmt: skip
    """Poll ``probe`` until it returns something truthy; fail with ``detail()`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (KubectlError, subprocess.TimeoutExpired) as exc:
            last = exc
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last}){extra}")
        time.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def pod_ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and condition(pod, "Ready").get(
        "status"
    ) == "True"
