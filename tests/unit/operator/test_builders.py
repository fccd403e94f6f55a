"""The builders: every child, its labels, owner, security, environment and checksum."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
from whatsapp_operator import credentials as keys
from whatsapp_operator.builders import (
    DEFAULT_RESOURCES,
    FAQS_PATH,
    NON_SETTING_ENV,
    AgentContext,
    absent_children,
    bot_env,
    build_children,
    build_credentials_secret,
    build_ingress,
    build_purge_cronjob,
    build_redis_deployment,
    build_service_monitor,
    build_web_pdb,
    compute_checksum,
    decode_secret_data,
    generate_credentials,
    owner_reference,
    secret_fingerprint,
)
from whatsapp_operator.builders.workloads import (
    REDIS_ACL_PERMISSIONS,
    REDIS_ACL_RELOAD_PROBE_SCRIPT,
    REDIS_ACL_RELOAD_SCRIPT,
    REDIS_READY_SCRIPT,
    REDIS_START_SCRIPT,
    WORKER_HEARTBEAT_FILE,
    WORKER_PROBE_SCRIPT,
    purge_schedule,
)
from whatsapp_operator.config import OperatorSettings

from bot.core.config import Settings
from released.agent.naming import (
    CONFIG_CHECKSUM_ANNOTATION,
    agent_labels,
    child_names,
    labels,
    selector_labels,
)
from released.agent.spec import AgentSpec, Faq
from tests.unit.operator.crd_helpers import EXAMPLES, documents

UID = "6778bb9c-77dd-4c69-9da5-a05489de8103"
SETTINGS = OperatorSettings(
    bot_image="registry.example/released:1.2.3",
    redis_image="redis:7.4-alpine",
    graph_url="http://meta.fake/v23.0",
    openai_base_url="http://openai.fake/v1",
)
#: Kubernetes versions whose schemas the manifests must satisfy (1.20 is checked live by the
#: control-plane tests; kubernetes-validate ships schemas from 1.25 on).
K8S_VERSIONS = ["1.25.0", "1.30.0", kubernetes_validate.utils.latest_version()]


def example_body(name: str = "acme") -> dict[str, Any]:
    docs = [
        d
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for d in documents(path)
        if d.get("kind") == "WhatsAppAgent" and d["metadata"]["name"] == name
    ]
    body = docs[0]
    body["metadata"].update(namespace="shop", uid=UID)
    return body


def make_ctx(**overrides: Any) -> AgentContext:
    values: dict[str, Any] = {"config_checksum": "c" * 64}
    values.update(overrides)
    return AgentContext.from_resource(example_body(), SETTINGS, **values)


def by_kind_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def deployments(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == "Deployment"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The workload's main container (Redis's pod has ``acl-reload`` besides)."""
    result: dict[str, Any] = pod_spec(workload)["containers"][0]
    return result


def bot_workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workloads that run the bot image: web, worker and the purge CronJob."""
    return [
        o
        for o in objs
        if o["kind"] in ("Deployment", "CronJob") and o["metadata"]["name"] != "acme-redis"
    ]


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}


# -- naming ----------------------------------------------------------------------------------


def test_child_names() -> None:
    names = child_names("acme")
    assert names.deployments == ("acme-web", "acme-worker", "acme-redis")
    assert names.purge_cronjob == "acme-purge"
    assert (names.web_service, names.redis_service, names.ingress) == (
        "acme-web",
        "acme-redis",
        "acme",
    )
    assert names.faqs_configmap == "acme-faqs"
    assert names.credentials_secret == "acme-credentials"
    assert names.service_account == "acme"
    assert names.redis_pvc == "acme-redis"


def test_labels() -> None:
    assert labels("acme", "web") == {
        "app.kubernetes.io/name": "released-agent",
        "app.kubernetes.io/instance": "acme",
        "app.kubernetes.io/component": "web",
        "app.kubernetes.io/managed-by": "released-operator",
        "app.kubernetes.io/part-of": "released",
    }
    assert selector_labels("acme", "web").items() <= labels("acme", "web").items()
    assert "managed-by" not in " ".join(selector_labels("acme", "web"))
    assert agent_labels("acme") == {
        "app.kubernetes.io/name": "released-agent",
        "app.kubernetes.io/instance": "acme",
    }
    assert agent_labels("acme").items() <= labels("acme", "redis").items()


# -- the set of children ---------------------------------------------------------------------


def test_every_child_is_built() -> None:
    objs = build_children(make_ctx(has_service_monitor_crd=True))
    assert set(by_kind_name(objs)) == {
        ("ServiceAccount", "acme"),
        ("ConfigMap", "acme-faqs"),
        ("PersistentVolumeClaim", "acme-redis"),
        ("Service", "acme-web"),
        ("Service", "acme-worker"),
        ("Service", "acme-redis"),
        ("NetworkPolicy", "acme-web"),
        ("NetworkPolicy", "acme-worker"),
        ("NetworkPolicy", "acme-purge"),
        ("NetworkPolicy", "acme-redis"),
        ("NetworkPolicy", "acme-egress"),
        ("Deployment", "acme-web"),
        ("Deployment", "acme-worker"),
        ("Deployment", "acme-redis"),
        ("CronJob", "acme-purge"),
        ("PodDisruptionBudget", "acme-web"),
        ("Ingress", "acme"),
        ("ServiceMonitor", "acme-web"),
    }
    assert len(objs) == 18
    # What earlier versions built (Celery beat) goes, but only when the agent controls it.
    assert absent_children(make_ctx(has_service_monitor_crd=True)) == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "acme-beat",
            "namespace": "shop",
            "controlledOnly": "true",
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "name": "acme-beat",
            "namespace": "shop",
            "controlledOnly": "true",
        },
    ]


def test_optional_children() -> None:
    ctx = make_ctx()
    assert build_service_monitor(ctx) is None
    body = example_body()
    del body["spec"]["ingress"]
    no_ingress = AgentContext.from_resource(body, SETTINGS)
    assert build_ingress(no_ingress) is None
    kinds = {o["kind"] for o in build_children(no_ingress)}
    assert not kinds & {"Ingress", "ServiceMonitor"}
    assert [(a["kind"], a["name"]) for a in absent_children(no_ingress)] == [
        ("Deployment", "acme-beat"),
        ("NetworkPolicy", "acme-beat"),
        ("Ingress", "acme"),
        ("ServiceMonitor", "acme-web"),
    ]


def test_labels_namespace_and_owner_on_every_child() -> None:
    objs = build_children(make_ctx(has_service_monitor_crd=True))
    objs.append(build_credentials_secret("acme", "shop", generate_credentials(), owner_uid=UID))
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "shop"
        assert meta["labels"]["app.kubernetes.io/name"] == "released-agent"
        assert meta["labels"]["app.kubernetes.io/instance"] == "acme"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "released-operator"
        assert meta["labels"]["app.kubernetes.io/component"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "whatsapp.released.io/v1alpha1",
                "kind": "WhatsAppAgent",
                "name": "acme",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    assert owner_reference("acme", UID) == objs[0]["metadata"]["ownerReferences"][0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    objs = build_children(make_ctx(has_service_monitor_crd=True))
    objs.append(build_credentials_secret("acme", "shop", generate_credentials(), owner_uid=UID))
    suspended = build_children(make_ctx(spec=make_ctx().spec.model_copy(update={"suspend": True})))
    checked = 0
    for obj in objs + suspended:
        if obj["kind"] == "ServiceMonitor":
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == 35


def test_pdb_api_version_for_1_20() -> None:
    pdb = build_web_pdb(make_ctx(pdb_api_version="policy/v1beta1"))
    assert pdb["apiVersion"] == "policy/v1beta1"
    assert build_web_pdb(make_ctx())["apiVersion"] == "policy/v1"


def test_purge_cronjob() -> None:
    cronjob = build_purge_cronjob(make_ctx())
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    # One run at a time, hourly, bounded in time and retries; history kept short.
    assert spec["concurrencyPolicy"] == "Forbid"
    minute, *rest = spec["schedule"].split()
    assert rest == ["*", "*", "*", "*"] and 0 <= int(minute) < 60
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 600 and job["backoffLimit"] == 2
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["successfulJobsHistoryLimit"] == 1 and spec["failedJobsHistoryLimit"] == 2
    assert job["template"]["metadata"]["labels"] == labels("acme", "purge")
    # Kubernetes 1.20 serves CronJobs as batch/v1beta1 only.
    old = build_purge_cronjob(make_ctx(cronjob_api_version="batch/v1beta1"))
    assert old["apiVersion"] == "batch/v1beta1" and old["spec"] == spec


def test_purge_minutes_are_spread_over_the_hour() -> None:
    """A thousand agents do not all purge the shared PostgreSQL at the same minute."""
    minutes = {
        purge_schedule(replace(make_ctx(), name=f"agent-{i}")).split()[0] for i in range(200)
    }
    assert len(minutes) > 40
    assert purge_schedule(make_ctx()) == purge_schedule(make_ctx())  # stable per agent


# -- pods ------------------------------------------------------------------------------------


def test_pod_security() -> None:
    for dep in [*deployments(build_children(make_ctx())), build_purge_cronjob(make_ctx())]:
        pod = pod_spec(dep)
        assert pod["serviceAccountName"] == "acme"
        assert pod["automountServiceAccountToken"] is False
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["fsGroup"] == sc["runAsUser"]
        expected_uid = 999 if dep["metadata"]["name"] == "acme-redis" else 10001
        assert sc["runAsUser"] == expected_uid
        for c in pod["containers"]:  # Redis's acl-reload too
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["capabilities"] == {"drop": ["ALL"]}
            assert csc["runAsNonRoot"] is True
            assert c["resources"]["requests"]["memory"]
            assert c["resources"]["limits"]["memory"]
        mounts = {m["mountPath"]: m["name"] for m in container(dep)["volumeMounts"]}
        assert "/tmp" in mounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        if dep["kind"] == "Deployment":
            assert dep["spec"]["selector"]["matchLabels"].items() <= (
                dep["spec"]["template"]["metadata"]["labels"].items()
            )


def test_default_and_custom_resources() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    web = container(objs[("Deployment", "acme-web")])
    assert web["resources"] == DEFAULT_RESOURCES["web"]
    assert web["resources"]["requests"] == {"cpu": "50m", "memory": "96Mi"}
    redis = container(objs[("Deployment", "acme-redis")])
    assert redis["resources"]["limits"] == {"memory": "128Mi"}
    worker = container(objs[("Deployment", "acme-worker")])
    # the example's own resources replace the defaults whole
    assert worker["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_commands_ports_and_probes() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    web = objs[("Deployment", "acme-web")]
    c = container(web)
    assert c["image"] == SETTINGS.bot_image
    assert c["command"][:2] == ["uvicorn", "bot.main:app"]
    assert "--proxy-headers" in c["command"]
    # The web tier's HTTP limits (issue 10): concurrency, keep-alive, header/body timeouts.
    flags = dict(zip(c["command"][2::2], c["command"][3::2], strict=False))
    assert flags["--http"] == "bot.api.protocol:HttpProtocol"
    assert int(flags["--limit-concurrency"]) > 0
    assert int(flags["--timeout-keep-alive"]) > 60
    assert c["command"][c["command"].index("--port") + 1] == "8000"
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A stopping pod serves on until the Service has dropped it, well within its grace period.
    (sleep, seconds) = c["lifecycle"]["preStop"]["exec"]["command"]
    grace = pod_spec(web)["terminationGracePeriodSeconds"]
    assert sleep == "sleep" and 0 < int(seconds) < grace / 2
    # A slow start (a busy node, imports) is not taken for a hang: liveness counts only after
    # the startup probe passed, which allows minutes.
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert web["spec"]["replicas"] == 2

    worker = container(objs[("Deployment", "acme-worker")])
    assert worker["command"] == [
        "released-worker", "--concurrency=4", "--loglevel=INFO", "--without-gossip",
        "--without-mingle",
    ]
    # The worker proves it is alive with a heartbeat file its consumer and loop refresh.
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["WORKER_HEARTBEAT_FILE"] == WORKER_HEARTBEAT_FILE == "/tmp/worker-heartbeat"
    for probe in (worker["startupProbe"], worker["livenessProbe"], worker["readinessProbe"]):
        assert probe["exec"]["command"] == ["sh", "-c", WORKER_PROBE_SCRIPT]
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert worker["livenessProbe"]["failureThreshold"] * worker["livenessProbe"][
        "periodSeconds"
    ] >= 60

    purge = container(objs[("CronJob", "acme-purge")])
    assert purge["command"] == ["released", "purge"]
    assert "livenessProbe" not in purge and "ports" not in purge


def test_redis_deployment() -> None:
    ctx = make_ctx()
    dep = build_redis_deployment(ctx)
    c = container(dep)
    assert c["image"] == "redis:7.4-alpine"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["replicas"] == 1
    assert "--appendonly yes" in REDIS_START_SCRIPT
    # Only named commands (tests/integration/test_redis_acl.py proves they suffice).
    assert REDIS_ACL_PERMISSIONS in REDIS_START_SCRIPT
    assert REDIS_ACL_PERMISSIONS.startswith("~* &* -@all +")
    assert "+@all" not in REDIS_ACL_PERMISSIONS
    for dangerous in ("config", "flushall", "keys", "module", "debug", "monitor", "acl"):
        assert f"+{dangerous}" not in REDIS_ACL_PERMISSIONS
    # The reloader's own user may only load the ACL file.
    assert "user reloader on >%s -@all +acl|load\\n" in REDIS_START_SCRIPT
    assert c["command"] == ["sh", "-c", REDIS_START_SCRIPT]
    # No password in the environment: the Redis keys of the Secret as files, which the kubelet
    # updates in place; the previous one is optional (it exists only during a rotation).
    assert "env" not in c
    pod = dep["spec"]["template"]["spec"]
    passwords = {v["name"]: v for v in pod["volumes"]}["passwords"]["projected"]
    assert passwords["sources"] == [
        {"secret": {"name": "acme-credentials",
                    "items": [{"key": "redisPassword", "path": "password"}]}},
        {"secret": {"name": "acme-credentials", "optional": True,
                    "items": [{"key": "redisPasswordPrevious", "path": "previous"}]}},
    ]  # fmt: skip
    reloader = pod["containers"][1]
    assert reloader["name"] == "acl-reload" and reloader["image"] == c["image"]
    assert reloader["command"] == ["sh", "-c", REDIS_ACL_RELOAD_SCRIPT]
    # Alive while its loop goes round (a heartbeat file in the in-memory ACL directory).
    for probe in ("livenessProbe", "readinessProbe"):
        assert reloader[probe]["exec"]["command"] == ["sh", "-c", REDIS_ACL_RELOAD_PROBE_SCRIPT]
    assert reloader["securityContext"] == c["securityContext"]
    for each in (c, reloader):
        assert {m["name"]: m["mountPath"] for m in each["volumeMounts"]}["passwords"] == (
            "/etc/released/redis"
        )
    # Readiness follows the Secret's current password, not the one Redis started with.
    assert c["readinessProbe"]["exec"]["command"] == ["sh", "-c", REDIS_READY_SCRIPT]
    assert "/etc/released/redis/password" in REDIS_READY_SCRIPT
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"] == {"claimName": "acme-redis"}
    pvc = by_kind_name(build_children(ctx))[("PersistentVolumeClaim", "acme-redis")]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_suspend_scales_every_deployment_to_zero() -> None:
    ctx = make_ctx()
    suspended = replace(ctx, spec=ctx.spec.model_copy(update={"suspend": True}))
    assert all(d["spec"]["replicas"] > 0 for d in deployments(build_children(ctx)))
    deps = deployments(build_children(suspended))
    assert len(deps) == 3
    assert all(d["spec"]["replicas"] == 0 for d in deps)
    # Retention runs while the agent is suspended: the purge is not.
    assert build_purge_cronjob(suspended)["spec"]["suspend"] is False
    assert "maxUnavailable" in build_web_pdb(suspended)["spec"]


def test_pdb_budget_follows_replicas() -> None:
    ctx = make_ctx()
    assert build_web_pdb(ctx)["spec"]["minAvailable"] == 1
    one = replace(ctx, spec=AgentSpec.from_resource({**ctx.spec.to_resource(), "web": {}}))
    assert build_web_pdb(one)["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels("acme", "web")},
    }


# -- environment -----------------------------------------------------------------------------


def test_env_names_are_bot_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    objs = build_children(make_ctx(vector_store_id="vs_123"))
    every: set[str] = set()
    for dep in bot_workloads(objs):
        names = [e["name"] for e in container(dep)["env"]]
        assert len(names) == len(set(names))
        unknown = set(names) - fields - NON_SETTING_ENV
        assert not unknown, f"{dep['metadata']['name']}: not Settings fields: {unknown}"
        every |= set(names)
    assert {
        "PHONE_NUMBER_ID",
        "META_ACCESS_TOKEN",
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "META_GRAPH_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_MODEL",
        "OPENAI_VECTOR_STORE_ID",
        "FAQS_PATH",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "RETENTION_DAYS",
        "OPENAI_RATE_LIMIT_PER_SECOND",
        "LOG_FORMAT",
    } <= every


def test_each_tier_gets_only_the_secrets_it_uses() -> None:
    """The internet-facing web tier cannot send as the business or spend the OpenAI key."""
    objs = by_kind_name(build_children(make_ctx()))

    workloads = {o["metadata"]["name"]: o for o in bot_workloads(list(objs.values()))}

    def secrets(name: str) -> set[str]:
        env = container(workloads[name])["env"]
        return {e["name"] for e in env if "valueFrom" in e}

    assert secrets("acme-web") == {
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "META_VERIFY_TOKEN_PREVIOUS",
        "ADMIN_TOKEN",
        "ADMIN_TOKEN_PREVIOUS",
        "DATABASE_URL",
        "REDIS_PASSWORD",
    }
    assert secrets("acme-worker") == {
        "META_ACCESS_TOKEN",
        "OPENAI_API_KEY",
        "SAFETY_IDENTIFIER_SALT",
        "HANDOVER_NOTIFY_SECRET",
        "DATABASE_URL",
        "REDIS_PASSWORD",
    }
    # The purge deletes from the database: nothing else.
    assert secrets("acme-purge") == {"DATABASE_URL"}
    assert {e["name"] for e in container(workloads["acme-purge"])["env"]} == {
        "PHONE_NUMBER_ID",
        "DATABASE_URL",
        "RETENTION_DAYS",
        "LOG_FORMAT",
    }
    # Nothing reaches a tier another way: no envFrom, no Secret volumes.
    assert set(workloads) == {"acme-web", "acme-worker", "acme-purge"}
    for name, workload in workloads.items():
        assert "envFrom" not in container(workload), name
        assert not [v for v in pod_spec(workload)["volumes"] if "secret" in v]


def test_reasoning_effort_and_verbosity_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    body = example_body()
    body["spec"]["assistant"].update(reasoningEffort="high", verbosity="medium")
    ctx = AgentContext.from_resource(body, SETTINGS, config_checksum="c" * 64)
    env = {item["name"]: item.get("value") for item in bot_env(ctx, "worker")}
    assert (env["OPENAI_REASONING_EFFORT"], env["OPENAI_VERBOSITY"]) == ("high", "medium")
    monkeypatch.setenv("OPENAI_REASONING_EFFORT", env["OPENAI_REASONING_EFFORT"] or "")
    monkeypatch.setenv("OPENAI_VERBOSITY", env["OPENAI_VERBOSITY"] or "")
    settings = Settings()
    assert (settings.openai_reasoning_effort, settings.openai_verbosity) == ("high", "medium")
    # Unset in the spec: not in the environment, so the bot's own default applies.
    del body["spec"]["assistant"]["reasoningEffort"], body["spec"]["assistant"]["verbosity"]
    ctx = AgentContext.from_resource(body, SETTINGS, config_checksum="c" * 64)
    names = {item["name"] for item in bot_env(ctx, "worker")}
    assert not names & {"OPENAI_REASONING_EFFORT", "OPENAI_VERBOSITY"}


def test_env_values_parse_as_bot_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = bot_env(make_ctx(vector_store_id="vs_123"), "worker")
    for item in env:
        value = item.get("value")
        if value is None:
            value = f"from-{item['valueFrom']['secretKeyRef']['key']}"
        monkeypatch.setenv(item["name"], value.replace("$(REDIS_PASSWORD)", "pw"))
    settings = Settings()
    assert settings.phone_number_id == "106540352242922"
    assert settings.openai_model == "gpt-6-luna"
    assert settings.openai_max_output_tokens == 400
    assert settings.openai_rate_limit_per_second == 1.0
    assert settings.openai_vector_store_id == "vs_123"
    assert settings.language == "de"
    assert settings.retention_days == 30
    assert settings.log_format == "json"
    assert str(settings.faqs_path) == FAQS_PATH
    assert settings.meta_graph_url == "http://meta.fake/v23.0"
    assert settings.openai_base_url == "http://openai.fake/v1"
    assert settings.redis_url == "redis://:pw@acme-redis:6379/0"
    assert settings.broker_url == "redis://:pw@acme-redis:6379/0"


def test_env_secret_references() -> None:
    env = {e["name"]: e for tier in ("web", "worker") for e in bot_env(make_ctx(), tier)}

    def ref(name: str) -> dict[str, Any]:
        result: dict[str, Any] = env[name]["valueFrom"]["secretKeyRef"]
        return result

    assert ref("META_ACCESS_TOKEN") == {"name": "acme-meta", "key": "accessToken"}
    assert ref("META_APP_SECRET") == {"name": "acme-meta", "key": "appSecret"}
    assert ref("OPENAI_API_KEY") == {"name": "acme-openai", "key": "apiKey"}
    assert ref("META_VERIFY_TOKEN") == {"name": "acme-credentials", "key": "verifyToken"}
    assert ref("META_VERIFY_TOKEN_PREVIOUS") == {
        "name": "acme-credentials",
        "key": "verifyTokenPrevious",
        "optional": True,
    }
    assert ref("DATABASE_URL") == {"name": "acme-postgres", "key": "url"}
    assert ref("REDIS_PASSWORD") == {"name": "acme-credentials", "key": "redisPassword"}
    names = [e["name"] for e in bot_env(make_ctx(), "web")]
    # $(REDIS_PASSWORD) is only expanded when defined earlier in the list
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
    assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@acme-redis:6379/0"
    assert "OPENAI_VECTOR_STORE_ID" not in env


def test_env_for_provisioned_database_and_openai_base_url() -> None:
    body = example_body()
    del body["spec"]["database"]
    ctx = AgentContext.from_resource(body, SETTINGS, openai_base_url="http://llm.local/v1")
    env = {e["name"]: e for e in bot_env(ctx, "worker")}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "acme-credentials",
        "key": "databaseUrl",
    }
    assert env["OPENAI_BASE_URL"]["value"] == "http://llm.local/v1"


def test_context_reads_vector_store_from_status() -> None:
    body = example_body()
    body["status"] = {"knowledge": {"vectorStoreId": "vs_abc", "faqHash": "x"}}
    ctx = AgentContext.from_resource(body, SETTINGS)
    assert ctx.vector_store_id == "vs_abc"
    env = {e["name"]: e for e in bot_env(ctx, "worker")}
    assert env["OPENAI_VECTOR_STORE_ID"]["value"] == "vs_abc"


# -- FAQs and checksums ----------------------------------------------------------------------


def test_faqs_configmap_holds_the_resolved_faqs() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    data = objs[("ConfigMap", "acme-faqs")]["data"]
    assert list(data) == ["faqs.json"]
    faqs = json.loads(data["faqs.json"])
    assert faqs[0]["q"] == "What are your opening hours?"
    assert FAQS_PATH == "/etc/released/faqs/faqs.json"

    globex = AgentContext.from_resource(
        example_body("globex"), SETTINGS, faqs=(Faq(q="From the ConfigMap?", a="Yes."),)
    )
    cm = by_kind_name(build_children(globex))[("ConfigMap", "globex-faqs")]
    assert json.loads(cm["data"]["faqs.json"]) == [{"q": "From the ConfigMap?", "a": "Yes."}]


def test_checksum_changes_with_faqs_and_secrets_only() -> None:
    faqs = [Faq(q="Hours?", a="9 to 5.")]
    secrets = {"acme-meta": secret_fingerprint({"accessToken": "a", "appSecret": "b"})}
    base = compute_checksum(faqs, secrets)
    assert len(base) == 64
    assert compute_checksum(list(faqs), dict(secrets)) == base
    assert compute_checksum([Faq(q="Hours?", a="9 to 6.")], secrets) != base
    assert compute_checksum([*faqs, Faq(q="More?", a="Yes.")], secrets) != base
    changed = {"acme-meta": secret_fingerprint({"accessToken": "new", "appSecret": "b"})}
    assert compute_checksum(faqs, changed) != base
    assert compute_checksum(faqs, {**secrets, "acme-db": secret_fingerprint(None)}) != base


def test_checksum_annotation_on_pod_templates() -> None:
    ctx = make_ctx()
    for dep in deployments(build_children(ctx)):
        annotations = dep["spec"]["template"]["metadata"].get("annotations")
        if dep["metadata"]["name"] == "acme-redis":  # a rotation must not restart Redis
            assert annotations is None
        else:
            assert annotations == {CONFIG_CHECKSUM_ANNOTATION: ctx.config_checksum}
    assert CONFIG_CHECKSUM_ANNOTATION == "whatsapp.released.io/config-checksum"


def test_pod_templates_change_with_faqs_not_with_replicas() -> None:
    ctx = make_ctx()
    faqs = list(ctx.resolved_faqs)

    def templates(c: AgentContext) -> dict[str, Any]:
        checksum = compute_checksum(list(c.resolved_faqs), {})
        c = replace(c, config_checksum=checksum)
        return {
            d["metadata"]["name"]: d["spec"]["template"] for d in deployments(build_children(c))
        }

    before = templates(ctx)
    scaled = ctx.spec.model_copy(update={"web": ctx.spec.web.model_copy(update={"replicas": 5})})
    assert templates(replace(ctx, spec=scaled)) == before
    edited = replace(ctx, faqs=(*faqs[:-1], Faq(q=faqs[-1].q, a="A new answer.")))
    after = templates(edited)
    for name in ("acme-web", "acme-worker"):
        assert after[name] != before[name]
    assert after["acme-redis"] == before["acme-redis"]


def test_a_rotation_rolls_web_and_worker_but_not_redis() -> None:
    """The credentials Secret's fingerprint is in the web and worker checksum; Redis's pod
    template does not depend on the Secret at all (its ``acl-reload`` loads new passwords)."""
    creds = generate_credentials()
    rotated = {**creds, keys.REDIS_PASSWORD: "new", keys.REDIS_PASSWORD_PREVIOUS: "old"}

    def templates(data: dict[str, str]) -> dict[str, Any]:
        checksum = compute_checksum([], {"acme-credentials": secret_fingerprint(data)})
        ctx = make_ctx(config_checksum=checksum)
        return {
            d["metadata"]["name"]: d["spec"]["template"] for d in deployments(build_children(ctx))
        }

    before, after = templates(creds), templates(rotated)
    assert after["acme-redis"] == before["acme-redis"]
    for name in ("acme-web", "acme-worker"):
        assert after[name] != before[name]


# -- credentials -----------------------------------------------------------------------------


def test_generate_credentials() -> None:
    first, second = generate_credentials(), generate_credentials()
    assert set(first) == {
        keys.REDIS_PASSWORD,
        keys.VERIFY_TOKEN,
        keys.ADMIN_TOKEN,
        keys.SAFETY_IDENTIFIER_SALT,
    }
    for key in first:
        assert first[key] != second[key]
    assert len(set(first.values())) == len(first)
    for value in first.values():
        assert len(value) >= 32
        assert value.replace("-", "").replace("_", "").isalnum()


def test_credentials_secret() -> None:
    values = {keys.REDIS_PASSWORD: "pw", keys.VERIFY_TOKEN: "vt"}
    secret = build_credentials_secret("acme", "shop", values)
    assert secret["metadata"]["name"] == "acme-credentials"
    assert secret["metadata"]["namespace"] == "shop"
    assert "ownerReferences" not in secret["metadata"]
    assert secret["type"] == "Opaque"
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["redisPassword"]) == b"pw"
    assert decode_secret_data(secret["data"]) == values
    owned = build_credentials_secret("acme", "shop", values, owner_uid=UID)
    assert owned["metadata"]["ownerReferences"] == [owner_reference("acme", UID)]


# -- networking ------------------------------------------------------------------------------


def test_ingress() -> None:
    ingress = build_ingress(make_ctx())
    assert ingress is not None
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["acme.bots.example.com"], "secretName": "acme-bots-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "acme.bots.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhook"
    assert path["pathType"] == "Prefix"
    assert path["backend"] == {"service": {"name": "acme-web", "port": {"name": "http"}}}


def _admitted_namespaces(rule: dict[str, Any]) -> list[str]:
    (peer,) = rule["from"]
    (expr,) = peer["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "In"
    return list(expr["values"])


def test_network_policies_admit_only_what_each_tier_serves() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    redis = objs[("NetworkPolicy", "acme-redis")]["spec"]
    assert redis["podSelector"]["matchLabels"] == selector_labels("acme", "redis")
    (rule,) = redis["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "acme"
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert expr["values"] == ["web", "worker"]  # not the purge: it needs only the database
    assert redis["policyTypes"] == ["Ingress", "Egress"] and redis["egress"] == []

    web = objs[("NetworkPolicy", "acme-web")]["spec"]
    assert web["podSelector"]["matchLabels"] == selector_labels("acme", "web")
    (rule,) = web["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert _admitted_namespaces(rule) == ["ingress-nginx", "monitoring"]
    assert web["policyTypes"] == ["Ingress"]

    worker = objs[("NetworkPolicy", "acme-worker")]["spec"]
    (rule,) = worker["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9808}]
    assert _admitted_namespaces(rule) == ["monitoring"]
    purge = objs[("NetworkPolicy", "acme-purge")]["spec"]
    assert purge["podSelector"]["matchLabels"] == selector_labels("acme", "purge")
    assert purge["ingress"] == [] and purge["policyTypes"] == ["Ingress", "Egress"]
    dns, database = purge["egress"]  # DNS and PostgreSQL; no Redis, no internet
    assert {p["port"] for p in dns["ports"]} == {53}
    assert database["ports"] == [{"protocol": "TCP", "port": 5432}]


def test_web_admits_the_namespaces_the_platform_names() -> None:
    settings = SETTINGS.model_copy(
        update={"ingress_controller_namespaces": ["edge"], "monitoring_namespaces": []}
    )
    ctx = AgentContext.from_resource(example_body(), settings)
    web = by_kind_name(build_children(ctx))[("NetworkPolicy", "acme-web")]["spec"]
    (rule,) = web["ingress"]
    assert _admitted_namespaces(rule) == ["edge"]
    nobody = settings.model_copy(update={"ingress_controller_namespaces": []})
    ctx = AgentContext.from_resource(example_body(), nobody)
    assert by_kind_name(build_children(ctx))[("NetworkPolicy", "acme-web")]["spec"]["ingress"] == []


def test_bot_pods_egress_is_dns_redis_database_and_public_https() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    egress = objs[("NetworkPolicy", "acme-egress")]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    (expr,) = egress["podSelector"]["matchExpressions"]
    assert expr["values"] == ["web", "worker"]
    dns, redis, database, https = egress["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert redis["to"] == [{"podSelector": {"matchLabels": selector_labels("acme", "redis")}}]
    assert database["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    v4, v6 = (peer["ipBlock"] for peer in https["to"])
    assert v4["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
    assert v6 == {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}


def test_egress_peers_and_extra_rules_come_from_the_settings() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}}}
    extra = {"to": [{"ipBlock": {"cidr": "10.8.0.0/16"}}], "ports": [{"port": 8443}]}
    settings = SETTINGS.model_copy(
        update={
            "database_egress_to": [peer],
            "database_egress_ports": [5432, 6432],
            "dns_egress_to": [{"namespaceSelector": {}}],
            "extra_egress": [extra],
        }
    )
    ctx = AgentContext.from_resource(example_body(), settings)
    rules = by_kind_name(build_children(ctx))[("NetworkPolicy", "acme-egress")]["spec"]["egress"]
    dns, _redis, database, _https, added = rules
    assert dns["to"] == [{"namespaceSelector": {}}]
    assert database == {
        "to": [peer],
        "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 6432}],
    }
    assert added == extra


def test_services_select_their_pods() -> None:
    objs = by_kind_name(build_children(make_ctx()))
    web = objs[("Service", "acme-web")]["spec"]
    assert web["selector"] == selector_labels("acme", "web")
    assert web["ports"][0]["port"] == 8000
    redis = objs[("Service", "acme-redis")]["spec"]
    assert redis["selector"] == selector_labels("acme", "redis")
    assert redis["ports"][0]["port"] == 6379
    sa = objs[("ServiceAccount", "acme")]
    assert sa["automountServiceAccountToken"] is False


def test_service_monitor() -> None:
    monitor = build_service_monitor(make_ctx(has_service_monitor_crd=True))
    assert monitor is not None
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "released-agent",
        "app.kubernetes.io/instance": "acme",
    }
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s"},
        {"port": "metrics", "path": "/metrics", "interval": "30s"},
    ]


def test_prometheus_scrapes_web_and_workers() -> None:
    objs = by_kind_name(build_children(make_ctx(has_service_monitor_crd=True)))
    monitor = objs[("ServiceMonitor", "acme-web")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service_name, port_name in (("acme-web", "http"), ("acme-worker", "metrics")):
        service = objs[("Service", service_name)]
        assert selector.items() <= service["metadata"]["labels"].items()
        assert port_name in ports
        assert [p["name"] for p in service["spec"]["ports"]] == [port_name]
    worker = objs[("Deployment", "acme-worker")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["WORKER_METRICS_PORT"] == "9808"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9808, "protocol": "TCP"}]


def test_worker_memory_follows_its_concurrency() -> None:
    def worker_resources(concurrency: int) -> dict[str, Any]:
        spec = make_ctx().spec
        spec = spec.model_copy(
            update={
                "worker": spec.worker.model_copy(
                    update={"concurrency": concurrency, "resources": None}
                )
            }
        )
        objs = by_kind_name(build_children(make_ctx(spec=spec)))
        container = objs[("Deployment", "acme-worker")]["spec"]["template"]["spec"]["containers"][0]
        resources: dict[str, Any] = container["resources"]
        return resources

    # Measured (tests/bench/README.md, footprint): one process, RSS 102 MiB at concurrency 2
    # and about 1 MiB more per extra slot (threads pool).
    assert worker_resources(2)["requests"]["memory"] == "128Mi"
    assert worker_resources(2)["limits"]["memory"] == "256Mi"
    assert worker_resources(8)["requests"]["memory"] == "152Mi"
    assert worker_resources(64)["limits"]["memory"] == "504Mi"


def test_ingress_gets_the_platforms_default_class_when_the_spec_names_none() -> None:
    body = example_body()
    body["spec"]["ingress"].pop("className", None)
    settings = SETTINGS.model_copy(update={"ingress_default_class": "public"})
    ingress = build_ingress(AgentContext.from_resource(body, settings))
    assert ingress is not None and ingress["spec"]["ingressClassName"] == "public"
    body["spec"]["ingress"]["className"] = "other"
    ingress = build_ingress(AgentContext.from_resource(body, settings))
    assert ingress is not None and ingress["spec"]["ingressClassName"] == "other"
    body["spec"]["ingress"].pop("className")
    ingress = build_ingress(AgentContext.from_resource(body, SETTINGS))
    assert ingress is not None and "ingressClassName" not in ingress["spec"]


def test_the_redis_acl_names_every_command_the_bot_sends() -> None:
    """A new Redis call in bot/ must be granted (and proven by tests/integration/
    test_redis_acl.py), or the bot's pods are refused it in production."""
    import re
    from pathlib import Path

    import redis.asyncio
    from whatsapp_operator.builders.workloads import REDIS_ACL_COMMANDS

    methods = {"delete": "del", "script_load": "script|load", "script_exists": "script|exists"}
    receivers = r"(?:redis|self\.redis|self\._redis|pipe|pipeline|rt\.redis|broker_redis|client)"
    source = "\n".join(p.read_text() for p in Path("bot").rglob("*.py"))
    called = {
        methods.get(name, name)
        for name in re.findall(rf"\b{receivers}\.(\w+)\(", source)
        if hasattr(redis.asyncio.Redis, name)
        and name not in {"pipeline", "register_script", "aclose", "close", "from_url", "execute"}
    }
    called |= {c.lower() for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", source)}
    assert called, "found no Redis call in bot/: the pattern is out of date"
    assert called - set(REDIS_ACL_COMMANDS) == set()


def test_every_bot_pod_migrates_the_database_before_it_starts() -> None:
    """No pod of the bot touches the database before ``released migrate`` brought its schema to
    the image's revision (a provisioned database starts empty: found by tests/cluster)."""
    ctx = make_ctx()
    objects = {(o["kind"], o["metadata"]["name"]): o for o in build_children(ctx)}
    pods = {
        "web": objects[("Deployment", "acme-web")]["spec"]["template"]["spec"],
        "worker": objects[("Deployment", "acme-worker")]["spec"]["template"]["spec"],
        "purge": build_purge_cronjob(ctx)["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }
    for component, pod in pods.items():
        (init,) = pod["initContainers"]
        (main,) = pod["containers"]
        assert init["command"] == ["released", "migrate"], component
        assert init["image"] == main["image"]
        assert init["securityContext"] == main["securityContext"]
        # The database and nothing else: no Meta, OpenAI or Redis secret.
        secrets = {e["name"] for e in init["env"] if "valueFrom" in e}
        assert secrets == {"DATABASE_URL"}, (component, secrets)
        assert init["resources"]["limits"]["memory"]
        assert init["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    redis = objects[("Deployment", "acme-redis")]["spec"]["template"]["spec"]
    assert "initContainers" not in redis
