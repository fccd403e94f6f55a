"""A real cluster for the end-to-end tests: the local control plane plus a real node
(``hack/node.sh``), or any cluster given by the environment (kind: ``hack/kind-up.sh images``).

No pytest import here; ``tests/cluster/conftest.py`` wraps it in a session fixture.

- Given ``RELEASED_E2E_IMAGE`` (and ``KUBECONFIG``), the tests use that cluster and those images
  unchanged: ``RELEASED_E2E_REDIS_IMAGE``, ``RELEASED_E2E_POSTGRES_IMAGE`` (defaults: the
  official ``redis:7.4-alpine`` and ``postgres:16-alpine``), ``RELEASED_E2E_PULL_POLICY``
  (default ``IfNotPresent``), ``RELEASED_E2E_KUBECTL`` (default: ``kubectl`` on PATH).
- Otherwise :func:`start_local_cluster` builds what is missing (``hack/node.sh build``: cached),
  starts a control plane and the node, and :meth:`LocalCluster.stop` takes both down and checks
  that the machine is as it was before (processes, mounts, network namespaces, links, routes,
  iptables chains, sysctls).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.k8s_control_plane import ControlPlane, kubectl_path, start_control_plane

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "hack" / "node.sh"
BUILD_TIMEOUT_S = 60 * 60
UP_TIMEOUT_S = 10 * 60
#: One node per machine (it owns the bridge, the kubelet's ports, the iptables chains): a
#: second test session waits for the first one's node to go (less than the tests' own timeout,
#: so that the error says who kept it).
LOCK_WAIT_S = 20 * 60

#: containerd's runtime directory of a running node (hack/node.sh; removed by `down`).
NODE_RUNTIME_DIR = "/run/released-containerd"

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
SYSTEM_PATHS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/run/netns",
    "/run/containerd",
    "/run/released-containerd",
    "/var/lib/cni",
    "/etc/cni",
)


@dataclass
class Cluster:
    """Where the end-to-end tests run: a kubeconfig, the images and a kubectl."""

    kubeconfig: str
    image: str
    redis_image: str
    postgres_image: str
    pull_policy: str
    kubectl: str
    #: True for the local node (its own addresses are reachable from this machine, nothing
    #: leaves it, NetworkPolicies are not enforced).
    local: bool

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}


def cluster_from_env() -> Cluster | None:
    """The cluster the environment names (``RELEASED_E2E_IMAGE`` set), or None."""
    image = os.environ.get("RELEASED_E2E_IMAGE")
    if not image:
        return None
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    kubectl = os.environ.get("RELEASED_E2E_KUBECTL") or shutil.which("kubectl") or kubectl_path()
    if not kubectl:
        raise RuntimeError("RELEASED_E2E_IMAGE is set but no kubectl was found")
    return Cluster(
        kubeconfig=kubeconfig,
        image=image,
        redis_image=os.environ.get("RELEASED_E2E_REDIS_IMAGE", "redis:7.4-alpine"),
        postgres_image=os.environ.get("RELEASED_E2E_POSTGRES_IMAGE", "postgres:16-alpine"),
        pull_policy=os.environ.get("RELEASED_E2E_PULL_POLICY", "IfNotPresent"),
        kubectl=kubectl,
        local=False,
    )


def unavailable_reason() -> str | None:
    """Why this machine cannot run the local node, or None when it can."""
    if os.geteuid() != 0:
        return "the local node needs root (containerd, network namespaces, iptables)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path(
        "/sys/fs/cgroup/cgroup.controllers"
    ).is_file():
        return "no cgroup filesystem at /sys/fs/cgroup"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (containerd's snapshotter)"
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        return "no containerd and no apt-get to install it"
    return None


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def build_node(timeout: float = BUILD_TIMEOUT_S) -> str:
    """``hack/node.sh build`` (apt packages, binaries, images; instant when cached); its log."""
    proc = _run(["bash", str(SCRIPT), "build"], dict(os.environ), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/node.sh build failed:\n{_tail(proc.stderr)}")
    return proc.stderr


# --- what the node changes on the machine, to check that `down` undid it --------------------


def _sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    return proc.stdout


def machine_snapshot(state_dirs: tuple[str, ...] = ()) -> dict[str, object]:
    """What the node may change: iptables chains and rules, links, routes, network namespaces,
    sysctls, system paths, mounts under ``state_dirs``, and the node's processes."""
    tables = {}
    for cmd in ("iptables-save", "ip6tables-save"):
        if shutil.which(cmd):
            lines = (re.sub(r"\[\d+:\d+\]", "", line) for line in _sh(cmd).splitlines())
            # A built-in chain that accepts and holds no rule is no change: on a fresh machine
            # the first iptables call loads the tables, and their chains appear so.
            tables[cmd] = sorted(
                line for line in lines if line[:1] == "-" or (line[:1] == ":" and not
                re.fullmatch(r":(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT\s*", line))
            )  # fmt: skip
    sysctls = {}
    for key in SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        with contextlib.suppress(OSError):
            sysctls[key] = path.read_text().strip()
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if any(line.split()[1].startswith(d) for d in state_dirs)
        or line.split()[1].startswith("/run/netns")
    ]
    pattern = "|".join(re.escape(p) for p in ("/run/released-containerd", *state_dirs))
    processes = sorted(_sh("pgrep", "-a", "-f", pattern).splitlines())
    return {
        "iptables": tables,
        "links": sorted(
            line.split(":")[1].strip().split("@")[0]
            for line in _sh("ip", "-o", "link").splitlines()
        ),
        "routes": sorted(_sh("ip", "route", "show", "table", "all").splitlines()),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "sysctls": sysctls,
        "paths": [p for p in SYSTEM_PATHS if os.path.exists(p)],
        "mounts": mounts,
        "processes": processes,
    }


def snapshot_diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Human-readable differences between two :func:`machine_snapshot` results."""
    problems = []
    for key in before:
        if before[key] != after[key]:
            problems.append(f"{key}: before {before[key]!r}\n  after {after[key]!r}")
    return problems


# --- the local cluster -------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """The control plane and the node started by :func:`start_local_cluster`."""

    cluster: Cluster
    plane: ControlPlane
    node_state: str
    before: dict[str, object]
    up_log: str
    _lock: IO[str] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RELEASED_K8S_STATE": self.plane.state_dir,
            "RELEASED_NODE_STATE": self.node_state,
        }

    def cost(self, seconds: int = 10) -> str:
        """``hack/node.sh cost``: memory and CPU of every process of the cluster."""
        proc = _run(["bash", str(SCRIPT), "cost", str(seconds)], self._env(), seconds + 60)
        return proc.stdout + proc.stderr

    def stop(self) -> list[str]:
        """Take the node and the plane down; return what differs from before (empty: clean)."""
        if self._stopped:
            return []
        self._stopped = True
        try:
            proc = _run(["bash", str(SCRIPT), "down"], self._env(), 300)
            problems = [] if proc.returncode == 0 else [f"node.sh down: {_tail(proc.stderr)}"]
            self.plane.stop()
            problems += snapshot_diff(
                self.before, machine_snapshot((self.node_state, self.plane.state_dir))
            )
            return problems
        finally:
            if self._lock is not None:
                _record_owner(self._lock, {})
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()


def _lock_machine() -> IO[str]:
    """Take the machine's node lock (waiting for another session's node, or one started by
    hand, to go down). The lock file records its owner (:func:`_record_owner`), so a node
    whose test session died without taking it down is taken down here instead of waited for."""
    cache = Path(os.environ.get("RELEASED_CACHE") or Path.home() / ".cache" / "released")
    (cache / "node").mkdir(parents=True, exist_ok=True)
    # "a+", not "w": opening must not erase the record of the session that holds the lock.
    handle = (cache / "node" / ".machine.lock").open("a+")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A node started by hand (hack/node.sh up) holds no lock: wait for its `down`.
            if not os.path.exists(NODE_RUNTIME_DIR) or _take_down_orphan(handle):
                return handle
            fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            pass
        if time.monotonic() > deadline:
            owner = _read_owner(handle) or "a node started by hand (hack/node.sh up)"
            handle.close()
            raise RuntimeError(f"another node kept the machine for {LOCK_WAIT_S}s: {owner}")
        time.sleep(2)


def _read_owner(handle: IO[str]) -> dict[str, str]:
    handle.seek(0)
    lines = [line.split("=", 1) for line in handle.read().splitlines() if "=" in line]
    return {key: value for key, value in lines}


def _record_owner(handle: IO[str], owner: dict[str, str]) -> None:
    """Write who holds the node (``pid``, ``node_state``, ``k8s_state``; empty: nobody)."""
    handle.seek(0)
    handle.truncate()
    handle.write("".join(f"{key}={value}\n" for key, value in owner.items()))
    handle.flush()


def _take_down_orphan(handle: IO[str]) -> bool:
    """With the lock held and a node running: if the lock's record names a test session that
    is gone and its node's state, take that node and its control plane down. Returns whether
    the machine is free now (False: the node is someone else's, such as one started by hand)."""
    owner = _read_owner(handle)
    pid, node_state = owner.get("pid", ""), owner.get("node_state", "")
    if not pid.isdigit() or not node_state or not os.path.isdir(node_state):
        return False
    try:
        os.kill(int(pid), 0)
        return False  # alive (it holds no lock, though: leave it alone)
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    env = {**os.environ, "RELEASED_NODE_STATE": node_state,
           "RELEASED_K8S_STATE": owner.get("k8s_state", "")}  # fmt: skip
    _run(["bash", str(SCRIPT), "down"], env, 300)
    if owner.get("k8s_state"):
        _run(["bash", str(REPO_ROOT / "hack" / "control-plane.sh"), "stop"], env, 120)
    _record_owner(handle, {})
    return not os.path.exists(NODE_RUNTIME_DIR)


def start_local_cluster() -> LocalCluster:
    """Build what is missing, then start a control plane and the node (one per machine: a
    second session waits for the first). Raises RuntimeError with the logs' tails on failure."""
    build_node()
    lock = _lock_machine()
    plane: ControlPlane | None = None
    node_state = tempfile.mkdtemp(prefix="released-node-")
    try:
        before = machine_snapshot((node_state,))
        plane = start_control_plane()
        _record_owner(lock, {"pid": str(os.getpid()), "node_state": node_state,
                             "k8s_state": plane.state_dir})  # fmt: skip
        env = {**os.environ, "RELEASED_K8S_STATE": plane.state_dir,
               "RELEASED_NODE_STATE": node_state}  # fmt: skip
        t0 = time.monotonic()
        proc = _run(["bash", str(SCRIPT), "up"], env, UP_TIMEOUT_S)
        if proc.returncode != 0:
            _run(["bash", str(SCRIPT), "down"], env, 300)
            raise RuntimeError(f"hack/node.sh up failed:\n{_tail(proc.stderr)}")
        exports = dict(
            re.findall(r"^export ([A-Z_0-9]+)=(.*)$", proc.stdout, flags=re.MULTILINE)
        )
        kubectl = kubectl_path()
        assert kubectl is not None
        cluster = Cluster(
            kubeconfig=exports["KUBECONFIG"],
            image=exports["RELEASED_E2E_IMAGE"],
            redis_image=exports["RELEASED_E2E_REDIS_IMAGE"],
            postgres_image=exports["RELEASED_E2E_POSTGRES_IMAGE"],
            pull_policy=exports["RELEASED_E2E_PULL_POLICY"],
            kubectl=kubectl,
            local=True,
        )
        return LocalCluster(
            cluster=cluster,
            plane=plane,
            node_state=node_state,
            before=before,
            up_log=f"node up in {time.monotonic() - t0:.0f}s\n{proc.stderr}",
            _lock=lock,
        )
    except BaseException:
        if plane is not None:
            with contextlib.suppress(Exception):
                plane.stop()
        _record_owner(lock, {})
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        raise
