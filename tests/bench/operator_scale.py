"""Operator benchmark: ``python -m tests.bench.operator_scale [--agents 50,200] [--quick]``.

On the test control plane (etcd + kube-apiserver 1.20.2 + kube-controller-manager from
``hack/control-plane.sh``), for each N:

Each phase runs on a fresh control plane. N is limited by the plane's Service range,
10.0.0.0/24 (``hack/control-plane.sh``): 84 agents with three Services each (web, worker,
Redis), 126 with two.

1. **baseline**: in namespace ``bench-base-N``, N ``WhatsAppAgent`` objects are created (so the
   children have a real owner) and then every child the operator would make (the operator's own
   builders, ``whatsapp_operator.builders.build_children`` and the credentials Secret) is
   created directly, one object after another, with one API client (the dynamic client);
2. **operator**: the operator (``python -m whatsapp_operator``, restricted to
   ``bench-op-N`` with ``RELEASED_NAMESPACES``, production timer interval) is started and the N
   agents are applied to ``bench-op-N``.

Both phases time (a) until every child exists and (b) until every Deployment is available (the
baseline) or every agent is ``Ready=True`` (the operator). A fake kubelet
(``tests.kubelet.FakeKubelet``) binds and readies the pods in both. The operator phase also
reports the operator's peak RSS (``VmHWM``), its PSS at rest, and its CPU seconds over
``--idle`` seconds of rest with N agents.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
T = TypeVar("T")


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


class Cluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.api = plane.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.dyn = DynamicClient(self.api)

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

    def count(self, ns: str, kinds: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        found = {}
        for api_version, kind in kinds:
            res = self.dyn.resources.get(api_version=api_version, kind=kind)
            items = res.get(namespace=ns).items
            found[(api_version, kind)] = sum(
                1 for i in items
                if (i.metadata.labels or {}).get("app.kubernetes.io/managed-by")
                == "released-operator")
        return found

    def deployments_available(self, ns: str, expected: int) -> bool:
        deps = client.AppsV1Api(self.api).list_namespaced_deployment(ns).items
        ok = [d for d in deps if (d.status.available_replicas or 0) >= (d.spec.replicas or 0)
              and (d.status.observed_generation or 0) >= d.metadata.generation]
        return len(ok) >= expected

    def agents_ready(self, ns: str, expected: int) -> bool:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        ready = 0
        for item in items:
            conds = (item.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                ready += 1
        return ready >= expected


def children_of(ns: str, name: str, uid: str) -> list[dict[str, Any]]:
    """What the operator would create for one agent, from its own builders."""
    sys.path.insert(0, str(REPO / "operator"))
    from whatsapp_operator import builders
    from whatsapp_operator.config import OperatorSettings

    body = {"metadata": {"name": name, "namespace": ns, "uid": uid}, **agent_manifest(name)}
    body["metadata"] = {"name": name, "namespace": ns, "uid": uid}
    ctx = builders.AgentContext.from_resource(
        body, OperatorSettings(), config_checksum="c" * 64, redis_checksum="r" * 64,
        pdb_api_version="policy/v1beta1",
    )
    objs = builders.build_children(ctx)
    objs.append(builders.build_credentials_secret(
        name, ns, builders.generate_credentials(), owner_uid=uid))
    return objs


def expected_kinds(n: int) -> dict[tuple[str, str], int]:
    kinds = Counter((o["apiVersion"], o["kind"]) for o in children_of("x", "x", "u"))
    return {k: v * n for k, v in kinds.items()}


def run_baseline(cluster: Cluster, n: int, timeout: float) -> dict[str, Any]:
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
        wait_for("baseline children", lambda: cluster.count(ns, kinds) == kinds, timeout, 1.0)
        exist = time.monotonic() - start
        deps = kinds.get(("apps/v1", "Deployment"), 0)
        wait_for("baseline deployments available",
                 lambda: cluster.deployments_available(ns, deps), timeout, 1.0)
        ready = time.monotonic() - start
    return {"phase": "baseline", "n": n, "objects": sum(kinds.values()) + n,
            "created_s": round(created, 1), "children_exist_s": round(exist, 1),
            "ready_s": round(ready, 1)}


def run_operator(cluster: Cluster, n: int, timeout: float, idle: float,
                 fakes: tuple[FakeMeta, FakeOpenAI], workdir: Path,
                 memory_probe: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from tests.integration.operator.conftest import OperatorProcess

    ns = f"bench-op-{n}"
    cluster.namespace(ns)
    kinds = expected_kinds(n)
    meta, oai = fakes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASED_")}
    env.update({
        "KUBECONFIG": cluster.plane.kubeconfig,
        "PYTHONPATH": os.pathsep.join(
            ([str(Path(__file__).with_name("memprobe"))] if memory_probe else [])
            + [str(REPO / "operator"), str(REPO)]),
        "RELEASED_GRAPH_URL": meta.url,
        "RELEASED_OPENAI_BASE_URL": oai.url,
        "RELEASED_LOG_FORMAT": "json",
        "RELEASED_NAMESPACES": ns,
        "RELEASED_INGRESS_HOST_SUFFIXES": '["bots.example.com"]',
    })
    if memory_probe is not None:
        env["BENCH_TRACEMALLOC_OUT"] = str(memory_probe)
    env.update(extra_env or {})
    op = OperatorProcess(env, workdir).start()
    assert op.proc is not None
    pid = op.proc.pid
    if memory_probe is not None:
        os.kill(pid, signal.SIGUSR2)  # trace from here: what N agents add
        time.sleep(1.0)
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
            created = time.monotonic() - start

            def exist() -> bool:
                sample()
                return cluster.count(ns, kinds) == kinds

            wait_for("operator children", exist, timeout, 1.0)
            exist_s = time.monotonic() - start

            def ready() -> bool:
                sample()
                return cluster.agents_ready(ns, n)

            wait_for("agents Ready", ready, timeout, 1.0)
            ready_s = time.monotonic() - start
            cpu_busy = cpu_seconds(pid) - cpu0
            time.sleep(5.0)  # let the last status patches and events settle
            idle0 = cpu_seconds(pid)
            end = time.monotonic() + idle
            while time.monotonic() < end:
                sample()
                time.sleep(1.0)
            idle_cpu = cpu_seconds(pid) - idle0
            if memory_probe is not None:
                memory_probe.unlink(missing_ok=True)
                os.kill(pid, signal.SIGUSR1)
                wait_for("the tracemalloc report", memory_probe.exists, 300, 1.0)
        mem = memory_kib(pid)
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    finally:
        op.stop()
    return {
        "phase": "operator", "n": n, "objects": sum(kinds.values()) + n,
        "created_s": round(created, 1), "children_exist_s": round(exist_s, 1),
        "ready_s": round(ready_s, 1), "cpu_s_until_ready": round(cpu_busy, 1),
        "rss_start_mib": mib(rss_before["rss"]), "rss_peak_mib": mib(max(hwm, *samples)),
        "pss_idle_mib": mib(mem["pss"]), "rss_idle_mib": mib(mem["rss"]),
        "idle_seconds": idle, "idle_cpu_s": round(idle_cpu, 2),
        "idle_cpu_pct": round(100 * idle_cpu / idle, 2),
    }


#: hack/control-plane.sh serves Services from 10.0.0.0/24: 253 ClusterIPs for every agent's
#: Services (and the ``kubernetes`` one).
SERVICE_IPS = 253


def max_agents_per_plane() -> int:
    per_agent = expected_kinds(1).get(("v1", "Service"), 1)
    return (SERVICE_IPS - 1) // per_agent


def bench(agent_counts: list[int], timeout: float, idle: float,
          memory_probe: Path | None = None, extra_env: dict[str, str] | None = None,
          baseline: bool = True) -> dict[str, Any]:
    """Each phase on a fresh control plane (same empty etcd; and the /24 Service range)."""
    limit = max_agents_per_plane()
    too_many = [n for n in agent_counts if n > limit]
    if too_many:
        raise SystemExit(
            f"N={too_many}: the test control plane's Service range (10.0.0.0/24 in "
            f"hack/control-plane.sh) holds the Services of at most {limit} agents"
        )
    report: dict[str, Any] = {"machine": machine(), "results": []}
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-operator-"))
    meta = FakeMeta.spawn()
    oai = FakeOpenAI.spawn()

    def on_fresh_plane(phase: Callable[[Cluster], dict[str, Any]]) -> dict[str, Any]:
        plane = start_control_plane()
        try:
            cluster = Cluster(plane)
            cluster.install_crd()
            return phase(cluster)
        finally:
            plane.stop()

    try:
        for n in agent_counts:
            base = None
            if baseline and memory_probe is None:  # the probe measures memory only
                base = on_fresh_plane(lambda c, n=n: run_baseline(c, n, timeout))
                print(json.dumps(base), flush=True)
                report["results"].append(base)
            op = on_fresh_plane(lambda c, n=n: run_operator(
                c, n, timeout, idle, (meta, oai), workdir, memory_probe, extra_env))
            if base is not None:
                op["ratio_ready_vs_baseline"] = round(op["ready_s"] / base["ready_s"], 2)
                op["ratio_exist_vs_baseline"] = round(
                    op["children_exist_s"] / base["children_exist_s"], 2)
            print(json.dumps(op), flush=True)
            report["results"].append(op)
    finally:
        meta.stop()
        oai.stop()
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]))
    print(f"{'phase':9} {'N':>4} {'objects':>7} {'created s':>9} {'exist s':>8} {'ready s':>8} "
          f"{'x base':>6} {'peak MiB':>8} {'idle PSS':>8} {'idle CPU %':>10}")
    for r in report["results"]:
        print(f"{r['phase']:9} {r['n']:>4} {r['objects']:>7} {r['created_s']:>9.1f} "
              f"{r['children_exist_s']:>8.1f} {r['ready_s']:>8.1f} "
              f"{r.get('ratio_ready_vs_baseline', ''):>6} {r.get('rss_peak_mib', ''):>8} "
              f"{r.get('pss_idle_mib', ''):>8} {r.get('idle_cpu_pct', ''):>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Operator benchmark (see the module doc).")
    parser.add_argument("--agents", default="50,80")
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds")
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--quick", action="store_true", help="N=10, 10 s idle")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-probe", type=Path,
                        help="run the operator under tracemalloc and write its top allocation "
                        "sites here at rest (slow; the timings are then not comparable)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the operator (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--no-baseline", action="store_true", help="the operator phase only")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.agents.split(",")]
    idle = args.idle
    if args.quick:
        counts, idle = [10], 10.0
    extra = dict(item.split("=", 1) for item in args.operator_env)
    report = bench(counts, args.timeout, idle, args.memory_probe, extra, not args.no_baseline)
    report["operator_env"] = extra
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
