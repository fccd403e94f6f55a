"""Operator benchmark: ``python -m tests.bench.operator_scale [--agents 50,200,1000]``.

For each N, each phase on a fresh test control plane (etcd + kube-apiserver 1.20.2 +
kube-controller-manager from ``hack/control-plane.sh``, the controller-manager's API rate raised
to ``--kcm-qps`` so that thousands of pods can be made) with a fake kubelet
(``tests.kubelet.FakeKubelet``) binding and readying the pods:

1. **baseline**: in namespace ``bench-base-N``, N ``WhatsAppAgent`` objects are created (so the
   children have a real owner) and then every child the operator would make (the operator's own
   builders, ``whatsapp_operator.builders.build_children`` and the credentials Secret) is
   created directly, one object after another, with one plain API client (the dynamic client);
2. **operator**: the operator (``python -m whatsapp_operator``, restricted to ``bench-op-N``
   with ``RELEASED_NAMESPACES``, production timer interval) is started and the N agents are
   applied to ``bench-op-N``; then, after ``--idle`` seconds at rest,
3. **restart**: the operator is stopped and started again with the N agents unchanged.

Reported per N: the time until every child exists (both phases; the ratio operator/baseline
and seconds per agent, to see whether it grows linearly), until every agent is ``Ready=True``
(or every Deployment available, for the baseline), the operator's peak RSS (``VmHWM``), its
RSS and PSS at rest, its CPU over ``--idle`` seconds at rest (% of one core); for the restart,
the time until a resume pass succeeded for every agent (the operator's
``released_operator_reconciles_total{outcome="success"}``) and how many agents and children
were written meanwhile (their ``resourceVersion`` before and after), and the restarted
operator's peak RSS.

``--operator-src DIR`` runs the operator (and builds the baseline's children) from another
checkout of the repository, for before/after comparisons with the same benchmark.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN, DEFAULT_APP_SECRET
from released.fakes.openai import DEFAULT_API_KEY
from tests.bench._common import REPO, cpu_seconds, machine, memory_kib, mib
from tests.k8s_control_plane import ControlPlane, start_control_plane
from tests.kubelet import FakeKubelet

GROUP, VERSION, PLURAL = "whatsapp.released.io", "v1alpha1", "whatsappagents"
CRD_FILE = REPO / "crds" / "whatsappagent.yaml"
MANAGED = "app.kubernetes.io/managed-by=released-operator"
#: The field managers of Kubernetes' own controllers (their writes are not the operator's).
CONTROLLER_MANAGERS = frozenset({"kube-controller-manager"})
T = TypeVar("T")

#: kind -> plural, for the raw list calls.
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "NetworkPolicy": "networkpolicies",
    "Deployment": "deployments",
    "CronJob": "cronjobs",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Ingress": "ingresses",
    "ServiceMonitor": "servicemonitors",
    "WhatsAppAgent": PLURAL,
}

#: Where the operator's source is (``--operator-src``); this checkout by default.
SOURCE = REPO


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except ApiException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def agent_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WhatsAppAgent",
        "metadata": {"name": name},
        "spec": {
            "phoneNumberId": str(10**9 + abs(hash(name)) % 10**9),
            "faqs": [
                {"q": "What are your opening hours?", "a": "9 to 5, Monday to Friday."},
                {"q": "Where are you?", "a": "Main Street 1."},
            ],
            "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
            "database": {"secretRef": {"name": "db", "key": "url"}},
            "ingress": {"host": f"{name}.bots.example.com"},
        },
    }


def collection_path(api_version: str, kind: str, ns: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{ns}/{PLURALS[kind]}"


class Cluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.api = plane.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.dyn = DynamicClient(self.api)
        config = self.api.configuration
        self.http = httpx.Client(
            base_url=config.host, verify=config.ssl_ca_cert or True, timeout=120,
            headers={"Authorization": f"Bearer {plane.admin_token}"})

    def install_crd(self) -> None:
        ext = client.ApiextensionsV1Api(self.api)
        crd = yaml.safe_load(CRD_FILE.read_text())
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise

        def established() -> bool:
            obj = ext.read_custom_resource_definition(crd["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True"
                       for c in obj.status.conditions or [])

        wait_for("the CRD to be established", established, 60)

    def namespace(self, name: str) -> None:
        self.core.create_namespace({"metadata": {"name": name}})
        wait_for(f"service account default in {name}",
                 lambda: self.core.read_namespaced_service_account("default", name).secrets, 60)
        secrets = {
            "meta": {"accessToken": DEFAULT_ACCESS_TOKEN, "appSecret": DEFAULT_APP_SECRET},
            "openai": {"apiKey": DEFAULT_API_KEY},
            "db": {"url": "postgresql://bot:pw@postgres.example:5432/bot"},
        }
        for secret, data in secrets.items():
            self.core.create_namespaced_secret(name, {
                "metadata": {"name": secret},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            })

    def create_agents(self, ns: str, names: list[str]) -> dict[str, str]:
        uids = {}
        for name in names:
            obj = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, agent_manifest(name))
            uids[name] = obj["metadata"]["uid"]
        return uids

    def items(self, api_version: str, kind: str, ns: str,
              selector: str | None = MANAGED) -> list[dict[str, Any]]:
        """Objects of one kind (raw JSON, from the API server's watch cache)."""
        params = {"resourceVersion": "0"}
        if selector:
            params["labelSelector"] = selector
        resp = self.http.get(collection_path(api_version, kind, ns), params=params)
        resp.raise_for_status()
        return list(resp.json()["items"])

    def count_until(self, ns: str, kinds: dict[tuple[str, str], int],
                    done: set[tuple[str, str]]) -> bool:
        """Whether every kind has its expected count; kinds found complete are not listed
        again (children are not deleted)."""
        for (api_version, kind), expected in kinds.items():
            if (api_version, kind) in done:
                continue
            if len(self.items(api_version, kind, ns)) < expected:
                return False
            done.add((api_version, kind))
        return True

    def deployments_available(self, ns: str, expected: int) -> bool:
        ok = 0
        for d in self.items("apps/v1", "Deployment", ns):
            status, spec = d.get("status") or {}, d.get("spec") or {}
            if (status.get("availableReplicas") or 0) >= spec.get("replicas", 1) and (
                    status.get("observedGeneration") or 0) >= d["metadata"]["generation"]:
                ok += 1
        return ok >= expected

    def agents_ready(self, ns: str, expected: int) -> bool:
        ready = 0
        for item in self.items(f"{GROUP}/{VERSION}", "WhatsAppAgent", ns, selector=None):
            conds = (item.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                ready += 1
        return ready >= expected

    def versions(self, ns: str, kinds: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """``Kind/name`` -> (resourceVersion, the writes of everyone but Kubernetes'
        controllers) of the agents and every child. The second part is the ``managedFields``
        entries (manager, operation, time) of the other managers: it changes when the operator
        (or a person) writes, not when the CronJob controller records a run or the Deployment
        controller a rollout."""
        found: dict[str, tuple[str, str]] = {}
        for api_version, kind in [(f"{GROUP}/{VERSION}", "WhatsAppAgent"), *kinds]:
            selector = None if kind == "WhatsAppAgent" else MANAGED
            for obj in self.items(api_version, kind, ns, selector=selector):
                meta = obj["metadata"]
                writes = sorted(
                    f"{m.get('manager')} {m.get('operation')} {m.get('time')}"
                    for m in meta.get("managedFields") or []
                    if m.get("manager") not in CONTROLLER_MANAGERS
                )
                found[f"{kind}/{meta['name']}"] = (meta["resourceVersion"], "|".join(writes))
        return found


def children_of(ns: str, name: str, uid: str) -> list[dict[str, Any]]:
    """What the operator would create for one agent, from its own builders."""
    sys.path.insert(0, str(SOURCE / "operator"))
    from whatsapp_operator import builders
    from whatsapp_operator.config import OperatorSettings

    body = {"metadata": {"name": name, "namespace": ns, "uid": uid}, **agent_manifest(name)}
    body["metadata"] = {"name": name, "namespace": ns, "uid": uid}
    checksums: dict[str, str] = {"config_checksum": "c" * 64}
    if "redis_checksum" in builders.AgentContext.__dataclass_fields__:  # an older --operator-src
        checksums["redis_checksum"] = "r" * 64
    ctx = builders.AgentContext.from_resource(
        body, OperatorSettings(ingress_host_suffixes=["bots.example.com"]),
        pdb_api_version="policy/v1beta1", cronjob_api_version="batch/v1beta1", **checksums,
    )
    objs = builders.build_children(ctx)
    objs.append(builders.build_credentials_secret(
        name, ns, builders.generate_credentials(), owner_uid=uid))
    return objs


def expected_kinds(n: int) -> dict[tuple[str, str], int]:
    kinds = Counter((o["apiVersion"], o["kind"]) for o in children_of("x", "x", "u"))
    return {k: v * n for k, v in kinds.items()}


def run_baseline(cluster: Cluster, n: int, timeout: float, ready: bool) -> dict[str, Any]:
    ns = f"bench-base-{n}"
    cluster.namespace(ns)
    kinds = expected_kinds(n)
    with FakeKubelet(cluster.api, ns, interval=0.5):
        start = time.monotonic()
        uids = cluster.create_agents(ns, [f"agent-{i:04d}" for i in range(n)])
        for name, uid in uids.items():
            for obj in children_of(ns, name, uid):
                res = cluster.dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                res.create(body=obj, namespace=ns)
        created = time.monotonic() - start
        done: set[tuple[str, str]] = set()
        wait_for("baseline children", lambda: cluster.count_until(ns, kinds, done), timeout, 1.0)
        exist = time.monotonic() - start
        ready_s = None
        if ready:
            deps = kinds.get(("apps/v1", "Deployment"), 0)
            wait_for("baseline deployments available",
                     lambda: cluster.deployments_available(ns, deps), timeout, 2.0)
            ready_s = round(time.monotonic() - start, 1)
    return {"phase": "baseline", "n": n, "objects": sum(kinds.values()) + n,
            "created_s": round(created, 1), "children_exist_s": round(exist, 1),
            "ready_s": ready_s}


def successes(port: int) -> float:
    """``released_operator_reconciles_total{outcome="success"}`` of a running operator."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith('released_operator_reconciles_total{outcome="success"}'):
            return float(line.split()[-1])
    return 0.0


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_operator(cluster: Cluster, n: int, timeout: float, idle: float,
                 fakes: tuple[FakeMeta, FakeOpenAI], workdir: Path, ready: bool,
                 restart: bool, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from tests.integration.operator.conftest import OperatorProcess

    ns = f"bench-op-{n}"
    cluster.namespace(ns)
    kinds = expected_kinds(n)
    meta, oai = fakes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASED_")}
    env.update({
        "KUBECONFIG": cluster.plane.kubeconfig,
        "PYTHONPATH": os.pathsep.join([str(SOURCE / "operator"), str(SOURCE)]),
        "RELEASED_GRAPH_URL": meta.url,
        "RELEASED_OPENAI_BASE_URL": oai.url,
        "RELEASED_LOG_FORMAT": "json",
        "RELEASED_NAMESPACES": ns,
        "RELEASED_INGRESS_HOST_SUFFIXES": '["bots.example.com"]',
    })
    env.update(extra_env or {})
    result: dict[str, Any] = {"phase": "operator", "n": n, "objects": sum(kinds.values()) + n}
    op = OperatorProcess(env, workdir).start()
    assert op.proc is not None
    pid = op.proc.pid
    try:
        rss_before = memory_kib(pid)
        samples: list[int] = []

        def sample() -> None:
            samples.append(memory_kib(pid)["rss"])

        with FakeKubelet(cluster.api, ns, interval=0.5):
            cpu0 = cpu_seconds(pid)
            start = time.monotonic()
            for i in range(n):
                cluster.custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, agent_manifest(f"agent-{i:04d}"))
            result["created_s"] = round(time.monotonic() - start, 1)
            done: set[tuple[str, str]] = set()

            def exist() -> bool:
                sample()
                return cluster.count_until(ns, kinds, done)

            wait_for("operator children", exist, timeout, 1.0)
            result["children_exist_s"] = round(time.monotonic() - start, 1)
            result["cpu_s_until_exist"] = round(cpu_seconds(pid) - cpu0, 1)
            result["ready_s"] = None
            if ready:
                def all_ready() -> bool:
                    sample()
                    return cluster.agents_ready(ns, n)

                wait_for("agents Ready", all_ready, timeout, 2.0)
                result["ready_s"] = round(time.monotonic() - start, 1)
            result["cpu_s_until_settled"] = round(cpu_seconds(pid) - cpu0, 1)
            time.sleep(10.0)  # let the last status patches and events settle
            idle0 = cpu_seconds(pid)
            end = time.monotonic() + idle
            while time.monotonic() < end:
                sample()
                time.sleep(1.0)
            idle_cpu = cpu_seconds(pid) - idle0
            mem = memory_kib(pid)
            result.update({
                "rss_start_mib": mib(rss_before["rss"]),
                "rss_peak_mib": mib(max(peak_kib(pid), *samples)),
                "rss_idle_mib": mib(mem["rss"]), "pss_idle_mib": mib(mem["pss"]),
                "idle_seconds": idle, "idle_cpu_s": round(idle_cpu, 2),
                "idle_cpu_pct": round(100 * idle_cpu / idle, 2),
            })
            if restart:
                result["restart"] = restart_operator(cluster, op, ns, n, kinds, timeout)
    finally:
        op.stop()
    return result


def restart_operator(cluster: Cluster, op: Any, ns: str, n: int,
                     kinds: dict[tuple[str, str], int], timeout: float) -> dict[str, Any]:
    """Stop the operator, start it again, and see what it writes to unchanged agents."""
    child_kinds = list(kinds)
    before = cluster.versions(ns, child_kinds)
    op.stop()
    start = time.monotonic()
    op.start()
    pid = op.proc.pid
    cpu0 = cpu_seconds(pid)
    wait_for("a resume pass of every agent", lambda: successes(op.metrics_port) >= n,
             timeout, 0.5)
    converged = time.monotonic() - start
    cpu = cpu_seconds(pid) - cpu0
    time.sleep(5.0)  # whatever the passes wrote has landed
    after = cluster.versions(ns, child_kinds)
    written = sorted(k for k, v in before.items() if after.get(k, ("", ""))[1] != v[1])
    changed = sorted(k for k, v in before.items() if after.get(k, ("", ""))[0] != v[0])
    by_kind = Counter(k.split("/", 1)[0] for k in written)
    return {
        "converged_s": round(converged, 1), "cpu_s": round(cpu, 1),
        "objects_compared": len(before), "objects_written": len(written),
        "agents_written": by_kind.get("WhatsAppAgent", 0),
        "written_by_kind": dict(by_kind),
        # Any change, Kubernetes' controllers' included (a CronJob's run, a rollout's status).
        "objects_changed_by_anyone": len(changed),
        "changed_by_kind": dict(Counter(k.split("/", 1)[0] for k in changed)),
        "rss_peak_mib": mib(peak_kib(pid)),
    }


def bench(agent_counts: list[int], timeout: float, idle: float,
          extra_env: dict[str, str] | None = None, baseline: bool = True,
          ready_max: int = 200, restart: bool = True, kcm_qps: int = 200) -> dict[str, Any]:
    """Each phase on a fresh control plane (same empty etcd)."""
    report: dict[str, Any] = {"machine": machine(), "source": str(SOURCE), "results": [],
                              "kcm_qps": kcm_qps}
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-operator-"))
    meta = FakeMeta.spawn()
    oai = FakeOpenAI.spawn()
    os.environ["RELEASED_KCM_API_QPS"] = str(kcm_qps)

    def on_fresh_plane(phase: Callable[[Cluster], dict[str, Any]]) -> dict[str, Any]:
        plane = start_control_plane()
        try:
            cluster = Cluster(plane)
            try:
                cluster.install_crd()
                return phase(cluster)
            finally:
                cluster.http.close()
        finally:
            plane.stop()

    try:
        for n in agent_counts:
            ready = n <= ready_max
            base = None
            if baseline:
                base = on_fresh_plane(lambda c, n=n, r=ready: run_baseline(c, n, timeout, r))
                base["loadavg"] = os.getloadavg()[0]
                print(json.dumps(base), flush=True)
                report["results"].append(base)
            load = os.getloadavg()[0]
            op = on_fresh_plane(lambda c, n=n, r=ready: run_operator(
                c, n, timeout, idle, (meta, oai), workdir, r, restart, extra_env))
            op["loadavg_at_start"] = load
            op["loadavg"] = os.getloadavg()[0]
            op["exist_s_per_agent"] = round(op["children_exist_s"] / n, 3)
            if base is not None:
                op["ratio_exist_vs_baseline"] = round(
                    op["children_exist_s"] / base["children_exist_s"], 2)
                if op.get("ready_s") and base.get("ready_s"):
                    op["ratio_ready_vs_baseline"] = round(op["ready_s"] / base["ready_s"], 2)
            print(json.dumps(op), flush=True)
            report["results"].append(op)
    finally:
        meta.stop()
        oai.stop()
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]), "source:", report.get("source"))
    print(f"{'phase':9} {'N':>5} {'exist s':>8} {'x base':>6} {'s/agent':>7} {'ready s':>8} "
          f"{'peak MiB':>8} {'idle RSS':>8} {'idle CPU%':>9} {'restart s':>9} {'writes':>6} "
          f"{'load':>5}")
    for r in report["results"]:
        rs = r.get("restart") or {}
        print(f"{r['phase']:9} {r['n']:>5} {r['children_exist_s']:>8.1f} "
              f"{r.get('ratio_exist_vs_baseline', ''):>6} {r.get('exist_s_per_agent', ''):>7} "
              f"{r.get('ready_s') or '':>8} {r.get('rss_peak_mib', ''):>8} "
              f"{r.get('rss_idle_mib', ''):>8} {r.get('idle_cpu_pct', ''):>9} "
              f"{rs.get('converged_s', ''):>9} {rs.get('objects_written', ''):>6} "
              f"{r.get('loadavg', ''):>5}")


def main(argv: list[str] | None = None) -> int:
    global SOURCE
    parser = argparse.ArgumentParser(description="Operator benchmark (see the module doc).")
    parser.add_argument("--agents", default="50,200,1000")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per wait, seconds")
    parser.add_argument("--idle", type=float, default=60.0, help="idle CPU window, seconds")
    parser.add_argument("--ready-max", type=int, default=1000,
                        help="wait for Ready only up to this N (larger N: children only)")
    parser.add_argument("--kcm-qps", type=int, default=200,
                        help="the controller-manager's API rate (its default is 20)")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart phase")
    parser.add_argument("--quick", action="store_true", help="N=10, 10 s idle")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the operator (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--operator-src", type=Path,
                        help="a checkout whose operator/ runs instead of this one's")
    parser.add_argument("--no-baseline", action="store_true", help="the operator phase only")
    args = parser.parse_args(argv)
    if args.operator_src is not None:
        SOURCE = args.operator_src.resolve()
    counts = [int(x) for x in args.agents.split(",")]
    idle = args.idle
    if args.quick:
        counts, idle = [10], 10.0
    extra = dict(item.split("=", 1) for item in args.operator_env)
    report = bench(counts, args.timeout, idle, extra, not args.no_baseline, args.ready_max,
                   not args.no_restart, args.kcm_qps)
    report["operator_env"] = extra
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
