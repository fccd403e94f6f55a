"""A real, local Kubernetes control plane for tests: etcd + kube-apiserver + controller-manager.

It drives ``hack/control-plane.sh`` (see DESIGN.md, "Real parts in tests"), so tests and people
start the very same thing. Each plane gets its own state directory; nothing listens beyond
127.0.0.1. No pytest import here: a session fixture wraps it, e.g.::

    @pytest.fixture(scope="session")
    def control_plane():
        plane = start_control_plane()
        yield plane
        plane.stop()

The first start on a machine builds the binaries (many minutes, once; then cached under
``${RELEASED_CACHE:-~/.cache/released}/k8s/bin``). ``binaries_ready()`` tells without building.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "hack" / "control-plane.sh"
K8S_VERSION = "v1.20.2"

# The first start may include the build (apt, source, go build on two cores).
BUILD_TIMEOUT_S = 60 * 60
START_TIMEOUT_S = 10 * 60


def cache_bin_dir() -> Path:
    root = os.environ.get("RELEASED_CACHE") or str(Path.home() / ".cache" / "released")
    return Path(root) / "k8s" / "bin"


def binaries_ready() -> bool:
    """True when start needs no build: KUBEBUILDER_ASSETS or the cache holds the binaries."""
    needed = ("etcd", "kube-apiserver", "kube-controller-manager")
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    cache = cache_bin_dir()
    stamp = cache / ".stamp"
    for name in needed:
        if assets and os.access(Path(assets) / name, os.X_OK):
            continue
        if not (os.access(cache / name, os.X_OK) and stamp.is_file()):
            return False
    return True


def kubectl_path() -> str | None:
    """The kubectl that matches the plane (1.20), if the build put one in the cache."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    for candidate in ([Path(assets) / "kubectl"] if assets else []) + [cache_bin_dir() / "kubectl"]:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _run_script(
    command: str, state_dir: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if state_dir is not None:
        env["RELEASED_K8S_STATE"] = state_dir
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_control_plane(timeout: float = BUILD_TIMEOUT_S) -> None:
    """Build (or find) the binaries; instant when already built."""
    proc = _run_script("build", None, timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/control-plane.sh build failed:\n{_tail(proc.stderr)}")


@dataclass
class ControlPlane:
    """A running control plane. ``kubeconfig`` holds admin (system:masters) credentials."""

    state_dir: str
    kubeconfig: str
    server: str
    admin_token: str
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, kopf) at this plane."""
        return {"KUBECONFIG": self.kubeconfig}

    @property
    def ca_file(self) -> str:
        return str(Path(self.state_dir) / "pki" / "ca.crt")

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this plane (needs the ``kubernetes`` package)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def log_path(self, component: str) -> Path:
        """Log file of ``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return Path(self.state_dir) / f"{component}.log"

    def stop(self) -> None:
        """Stop the processes and remove the state directory. Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        proc = _run_script("stop", self.state_dir, 120)
        if proc.returncode != 0:
            raise RuntimeError(f"hack/control-plane.sh stop failed:\n{_tail(proc.stderr)}")

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_control_plane(state_dir: str | None = None, timeout: float | None = None) -> ControlPlane:
    """Start a fresh control plane in its own state dir (a new temporary one by default).

    Builds the binaries first when needed. Raises ``RuntimeError`` with the tail of the script's
    log (which includes the tail of the failing component's log) when it does not come up.
    """
    if state_dir is None:
        state_dir = tempfile.mkdtemp(prefix="released-k8s-")
    if timeout is None:
        timeout = START_TIMEOUT_S if binaries_ready() else BUILD_TIMEOUT_S + START_TIMEOUT_S
    try:
        proc = _run_script("start", state_dir, timeout)
    except subprocess.TimeoutExpired as exc:
        _run_script("stop", state_dir, 120)
        raise RuntimeError(f"hack/control-plane.sh start timed out after {timeout}s") from exc
    lines = proc.stdout.strip().splitlines()
    prefix = "export KUBECONFIG="
    if proc.returncode != 0 or not lines or not lines[-1].startswith(prefix):
        _run_script("stop", state_dir, 120)
        raise RuntimeError(
            f"hack/control-plane.sh start failed (exit {proc.returncode}):\n"
            f"{_tail(proc.stderr)}\n{proc.stdout[-2000:]}"
        )
    kubeconfig = lines[-1][len(prefix) :]
    plane = ControlPlane(
        state_dir=state_dir,
        kubeconfig=kubeconfig,
        server=(Path(state_dir) / "server").read_text().strip(),
        admin_token=(Path(state_dir) / "admin.token").read_text().strip(),
    )
    # A safety net for sessions that end without running their teardown.
    atexit.register(_stop_quietly, plane)
    return plane


def _stop_quietly(plane: ControlPlane) -> None:
    # At interpreter exit there is nobody left to report a failure to.
    with contextlib.suppress(Exception):
        plane.stop()


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
