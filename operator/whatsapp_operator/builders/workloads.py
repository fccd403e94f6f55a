"""The agent's workloads: Deployments (web, worker, Redis) and the purge CronJob.

Every bot pod (web, worker, purge) first runs ``released migrate`` as an init container, with
the purge's environment (the database only): the schema is at the image's revision before the
bot touches it, whoever starts first (concurrent runs wait on an advisory lock, and a run on a
current schema does nothing).

Web, worker and purge run the bot image with the environment of :func:`bot_env`, whose names are
fields of ``bot.core.config.Settings`` (a unit test keeps them so); Redis runs the operator's
Redis image with append-only persistence on the ``NAME-redis`` PersistentVolumeClaim. The worker
runs Celery's threads pool (one process, ``concurrency`` tasks at once) and proves it is alive
with a heartbeat file its probes check; the purge is a CronJob whose pods run ``released purge``
and exit, so nothing waits between runs, and which keeps running while the agent is suspended.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bot.serving import uvicorn_args
from released.agent.naming import (
    CONFIG_CHECKSUM_ANNOTATION,
    PURGE,
    REDIS,
    WEB,
    WORKER,
    child_names,
    labels,
    selector_labels,
)
from released.agent.resources import ACL_RELOAD_RESOURCES, effective_resources

from .. import credentials as keys
from .context import AgentContext, object_meta

WEB_PORT = 8000
#: Where each Celery worker serves its metrics (``WORKER_METRICS_PORT`` of the bot).
WORKER_METRICS_PORT = 9808
#: Worker pool processes write their samples here (an emptyDir: fresh in every pod).
WORKER_METRICS_DIR = "/tmp/prometheus"  # noqa: S108 - the pod's own emptyDir
REDIS_PORT = 6379
#: The bot's uid/gid (the image's non-root user) and Redis's (the official image's ``redis``).
BOT_UID = 10001
REDIS_UID = 999

FAQS_DIR = "/etc/released/faqs"
FAQS_FILE = "faqs.json"
FAQS_PATH = f"{FAQS_DIR}/{FAQS_FILE}"
REDIS_ACL_DIR = "/run/redis"
#: The container beside Redis that loads new passwords (:data:`REDIS_ACL_RELOAD_SCRIPT`).
REDIS_ACL_RELOAD = "acl-reload"
#: The worker's heartbeat (``WORKER_HEARTBEAT_FILE``), refreshed every 10 s, in its emptyDir.
WORKER_HEARTBEAT_FILE = "/tmp/worker-heartbeat"  # noqa: S108
#: The heartbeat's largest age (seconds) that its probes accept.
WORKER_HEARTBEAT_MAX_AGE = 60
#: How long a stopping web pod goes on serving before uvicorn gets SIGTERM (seconds).
WEB_DRAIN_SECONDS = 5
#: How long web and worker may take to start before their liveness probes count (seconds).
STARTUP_SECONDS = 180


def heartbeat_probe_script(path: str, max_age: int) -> str:
    """A probe's shell check: was ``path`` touched less than ``max_age`` seconds ago?"""
    return f"test $(( $(date +%s) - $(stat -c %Y {path}) )) -lt {max_age}"


#: The worker's liveness and readiness check: is the heartbeat younger than the largest age?
WORKER_PROBE_SCRIPT = heartbeat_probe_script(WORKER_HEARTBEAT_FILE, WORKER_HEARTBEAT_MAX_AGE)

#: The purge's run time limit, and how many times a failed run is tried again.
PURGE_DEADLINE_SECONDS = 600
PURGE_BACKOFF_LIMIT = 2
#: The variables the purge reads (``released purge``): the database and the retention only.
PURGE_ENV: frozenset[str] = frozenset(
    {"PHONE_NUMBER_ID", "DATABASE_URL", "RETENTION_DAYS", "LOG_FORMAT"}
)

#: Variables set on bot containers that are not ``Settings`` fields (used in ``$(...)``).
NON_SETTING_ENV: frozenset[str] = frozenset({"REDIS_PASSWORD", "PROMETHEUS_MULTIPROC_DIR"})

#: The only Redis commands the bot's pods may run: what redis-py, kombu/Celery and the bot's
#: Lua scripts use (read from bot/, kombu's Redis transport and redis-py's locks, and checked
#: with INFO commandstats over tests/integration/test_redis_acl.py), proven against a real
#: redis-server by that test, which fails when the bot or the worker is refused one. No CONFIG,
#: MODULE, DEBUG, FLUSHALL, KEYS, MONITOR, MIGRATE, REPLICAOF, ACL or SHUTDOWN: a compromised pod
#: can use its queue, not own the server. Since the queue carries no message text (the inbox),
#: nothing needs EVAL (scripts run by EVALSHA after SCRIPT LOAD), HGETALL, HSETNX, HINCRBY,
#: HLEN, ZCARD, TTL/PTTL, SUBSCRIBE (kombu subscribes to patterns) or CLIENT SETNAME/GETNAME/ID.
#: tests/unit/operator/test_builders.py fails when bot/ calls a command this list does not name.
#: (redis-py's optional CLIENT SETINFO is refused and ignored; naming it would stop Redis 7.0,
#: which validates subcommands, from loading the file.)
REDIS_ACL_COMMANDS: tuple[str, ...] = (
    # connections: redis-py (HELLO), the readiness probe's redis-cli (AUTH, PING), a URL's db
    "auth", "hello", "ping", "select",
    # keys: dedupe claims (MGET: whether their messages are finished), locks (SET NX PX),
    # kombu's bookkeeping, the account flags
    "get", "mget", "set", "del", "exists", "expire", "pexpire",
    # lists: Celery's queues (kombu restores a lost task with RPUSH), the bot's claim-and-push,
    # queue depth
    "lpush", "rpush", "rpop", "brpop", "llen",
    # hashes: kombu's unacknowledged tasks, the bot's rate-limit buckets, flags, held messages
    "hget", "hset", "hdel", "hmget",
    # sets and sorted sets: kombu's bindings, deadlines and unacked index; held messages
    "sadd", "srem", "smembers", "zadd", "zrem", "zrange", "zrangebyscore",
    # Lua: the bot's and kombu's scripts, redis-py's locks (TIME is called inside them); every
    # command a script calls is checked against this list too
    "evalsha", "script|load", "script|exists", "time",
    # transactions: kombu restores unacknowledged tasks with WATCH/MULTI/EXEC
    "multi", "exec", "discard", "watch", "unwatch",
    # pub/sub: Celery's remote control (pidbox, pattern subscriptions)
    "publish", "psubscribe", "punsubscribe",
)  # fmt: skip
#: The permissions of the bot's Redis user: every key and channel, only those commands.
REDIS_ACL_PERMISSIONS = "~* &* -@all " + " ".join(f"+{c}" for c in REDIS_ACL_COMMANDS)

#: The Redis pod reads its passwords from files: the ``NAME-credentials`` Secret's Redis keys,
#: mounted read-only here, which the kubelet updates in place when the Secret changes.
REDIS_CREDENTIALS_DIR = "/etc/released/redis"
#: The files of that mount: Secret key -> file name (``previous`` exists during a rotation).
REDIS_PASSWORD_FILES: dict[str, str] = {
    keys.REDIS_PASSWORD: "password",
    keys.REDIS_PASSWORD_PREVIOUS: "previous",
}
#: How often (seconds) the ``acl-reload`` container compares those files with the loaded ACL.
REDIS_ACL_RELOAD_SECONDS = 5

# Prints the ACL file for the passwords in the mounted files. Two passwords are valid while
# ``redisPasswordPrevious`` exists (during a rotation), so pods that still hold the old one keep
# working until they have rolled. Generated passwords are URL-safe tokens: no spaces, no '>'.
# The ``reloader`` user may run ACL LOAD and nothing else; its password is the pod's own, made
# at each start in the in-memory ACL directory.
_REDIS_RENDER_ACL = f"""render() {{
  if [ ! -s {REDIS_CREDENTIALS_DIR}/password ]; then
    echo "no Redis password in the Secret" >&2
    return 1
  fi
  rule="user default on >$(cat {REDIS_CREDENTIALS_DIR}/password)"
  if [ -s {REDIS_CREDENTIALS_DIR}/previous ]; then
    rule="$rule >$(cat {REDIS_CREDENTIALS_DIR}/previous)"
  fi
  printf '%s {REDIS_ACL_PERMISSIONS}\\n' "$rule"
  printf 'user reloader on >%s -@all +acl|load\\n' "$(cat {REDIS_ACL_DIR}/reloader)"
}}
"""

#: The Redis container: renders the ACL file from the mounted passwords and starts Redis.
REDIS_START_SCRIPT = f"""set -eu
umask 077
{_REDIS_RENDER_ACL}head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {REDIS_ACL_DIR}/reloader
render > {REDIS_ACL_DIR}/users.acl
exec redis-server --port {REDIS_PORT} --dir /data --appendonly yes \\
  --aclfile {REDIS_ACL_DIR}/users.acl
"""

#: The ``acl-reload`` container beside Redis: when the mounted passwords change (a rotation
#: starts or finishes), it renders the ACL file again and has Redis load it (ACL LOAD), so
#: Redis learns a new password without a restart, and connections stay open. Until Redis has
#: loaded it, pods that use the new password are not ready and the old ones keep serving.
REDIS_ACL_RELOAD_SCRIPT = f"""set -u
umask 077
trap 'exit 0' TERM INT
{_REDIS_RENDER_ACL}loaded=""
while :; do
  if [ -s {REDIS_ACL_DIR}/reloader ] && want=$(render); then
    if [ "$want" != "$loaded" ]; then
      printf '%s\\n' "$want" > {REDIS_ACL_DIR}/users.next
      mv {REDIS_ACL_DIR}/users.next {REDIS_ACL_DIR}/users.acl
      reply=$(REDISCLI_AUTH="$(cat {REDIS_ACL_DIR}/reloader)" \\
        redis-cli -p {REDIS_PORT} --no-auth-warning --user reloader acl load 2>&1)
      # (not the reply itself: an ACL error may quote the file)
      if [ "$reply" = OK ]; then loaded=$want; echo "ACL loaded"; else echo "ACL LOAD failed"; fi
    fi
  fi
  touch {REDIS_ACL_DIR}/reload.alive
  sleep {REDIS_ACL_RELOAD_SECONDS} & wait $!
done
"""
#: ``acl-reload``'s liveness and readiness: its loop went round within the last minute.
REDIS_ACL_RELOAD_PROBE_SCRIPT = heartbeat_probe_script(f"{REDIS_ACL_DIR}/reload.alive", 60)

#: Redis's readiness: it answers the current password of the Secret.
REDIS_READY_SCRIPT = (
    f'[ "$(REDISCLI_AUTH="$(cat {REDIS_CREDENTIALS_DIR}/password)" '
    f'redis-cli -p {REDIS_PORT} --no-auth-warning ping)" = PONG ]'
)


def _value(name: str, value: str | int | float) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _secret(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def redis_url(agent: AgentContext, db: int = 0) -> str:
    """The Redis URL of the bot pods; ``$(REDIS_PASSWORD)`` is expanded by the kubelet."""
    return f"redis://:$(REDIS_PASSWORD)@{child_names(agent.name).redis_service}:{REDIS_PORT}/{db}"


#: The secret environment variables each tier gets, and no other: the internet-facing web tier
#: checks signatures and the handshake and serves the admin API (its token) but never sends as
#: the business nor calls OpenAI; the worker answers (Graph API token, OpenAI key, the salt of
#: the identifiers OpenAI sees) and signs handover notifications but never sees the app secret
#: nor the admin token; the purge only deletes from the database. Web and worker reach their
#: Redis and the database.
TIER_SECRETS: dict[str, frozenset[str]] = {
    WEB: frozenset(
        {
            "META_APP_SECRET",
            "META_VERIFY_TOKEN",
            "META_VERIFY_TOKEN_PREVIOUS",
            "ADMIN_TOKEN",
            "ADMIN_TOKEN_PREVIOUS",
            "DATABASE_URL",
            "REDIS_PASSWORD",
        }
    ),
    WORKER: frozenset(
        {
            "META_ACCESS_TOKEN",
            "OPENAI_API_KEY",
            "SAFETY_IDENTIFIER_SALT",
            "HANDOVER_NOTIFY_SECRET",
            "DATABASE_URL",
            "REDIS_PASSWORD",
        }
    ),
    PURGE: frozenset({"DATABASE_URL"}),
}

#: Plain variables that only some tiers get (every other plain variable goes to web and
#: worker): only the worker calls the handover notification URL.
TIER_ONLY_VALUES: dict[str, frozenset[str]] = {"HANDOVER_NOTIFY_URL": frozenset({WORKER})}


def bot_env(agent: AgentContext, component: str) -> list[dict[str, Any]]:
    """The environment of ``component`` (web, worker or purge): ``Settings`` names, and by
    reference only the secrets of :data:`TIER_SECRETS` for that tier (the purge gets only
    :data:`PURGE_ENV`)."""
    allowed = TIER_SECRETS[component]
    env = [
        i
        for i in _all_bot_env(agent)
        if ("valueFrom" in i and i["name"] in allowed)
        or ("valueFrom" not in i and component in TIER_ONLY_VALUES.get(i["name"], {component}))
    ]
    if component == PURGE:
        env = [i for i in env if i["name"] in PURGE_ENV]
    return env


def _all_bot_env(agent: AgentContext) -> list[dict[str, Any]]:
    spec = agent.spec
    names = child_names(agent.name)
    creds = names.credentials_secret
    meta, openai = spec.secrets.meta.name, spec.secrets.openai.name
    assistant = spec.assistant

    env: list[dict[str, Any]] = [
        _value("PHONE_NUMBER_ID", spec.phone_number_id),
        _secret("META_ACCESS_TOKEN", meta, "accessToken"),
        _secret("META_APP_SECRET", meta, "appSecret"),
        _secret("META_VERIFY_TOKEN", creds, keys.VERIFY_TOKEN),
        _secret("META_VERIFY_TOKEN_PREVIOUS", creds, keys.VERIFY_TOKEN_PREVIOUS, optional=True),
        _value("META_GRAPH_URL", agent.settings.graph_url),
        _secret("OPENAI_API_KEY", openai, "apiKey"),
        _value("OPENAI_BASE_URL", agent.openai_base_url or agent.settings.openai_base_url),
        _value("OPENAI_MODEL", assistant.model),
        _value("OPENAI_MAX_OUTPUT_TOKENS", assistant.max_output_tokens),
        _value("OPENAI_RATE_LIMIT_PER_SECOND", assistant.rate_limit_per_second),
    ]
    if assistant.reasoning_effort is not None:
        env.append(_value("OPENAI_REASONING_EFFORT", assistant.reasoning_effort))
    if assistant.verbosity is not None:
        env.append(_value("OPENAI_VERBOSITY", assistant.verbosity))
    if assistant.instructions is not None:
        env.append(_value("OPENAI_INSTRUCTIONS", assistant.instructions))
    if agent.vector_store_id:
        env.append(_value("OPENAI_VECTOR_STORE_ID", agent.vector_store_id))
    if assistant.fallback_message is not None:
        env.append(_value("FALLBACK_MESSAGE", assistant.fallback_message))
    env.append(_value("LANGUAGE", assistant.language))
    env.append(_value("FAQS_PATH", FAQS_PATH))
    env.append(_secret("SAFETY_IDENTIFIER_SALT", creds, keys.SAFETY_IDENTIFIER_SALT))
    env.append(_secret("ADMIN_TOKEN", creds, keys.ADMIN_TOKEN))
    env.append(_secret("ADMIN_TOKEN_PREVIOUS", creds, keys.ADMIN_TOKEN_PREVIOUS, optional=True))
    env += _handover_env(agent)

    database = spec.database_secret_ref
    if database is not None:
        env.append(_secret("DATABASE_URL", database.name, database.key))
    else:
        env.append(_secret("DATABASE_URL", creds, keys.DATABASE_URL))

    env += [
        _secret("REDIS_PASSWORD", creds, keys.REDIS_PASSWORD),
        _value("REDIS_URL", redis_url(agent)),
        _value("CELERY_BROKER_URL", redis_url(agent)),
        _value("RETENTION_DAYS", spec.retention.days),
        _value("LOG_FORMAT", "json"),
    ]
    return env


def _handover_env(agent: AgentContext) -> list[dict[str, Any]]:
    """``HANDOVER_*``: ``HANDOVER_ENABLED`` always; the rest only with ``spec.handover`` and
    only what it sets (the bot's defaults apply to the others). The notification's HMAC key is
    a reference to the tenant's Secret, never a copy."""
    handover = agent.spec.handover
    if handover is None:
        return [_value("HANDOVER_ENABLED", "false")]
    env = [
        _value("HANDOVER_ENABLED", "true"),
        _value("HANDOVER_HOLD_SECONDS", int(handover.hold_timedelta.total_seconds())),
        _value("HANDOVER_AFTER_FALLBACKS", handover.after_fallbacks),
        _value("HANDOVER_ON_ORDER", "true" if handover.on_order else "false"),
    ]
    if handover.message is not None:
        env.append(_value("HANDOVER_MESSAGE", handover.message))
    if handover.phrases is not None:
        phrases = json.dumps(handover.phrases, ensure_ascii=False, sort_keys=True)
        env.append(_value("HANDOVER_PHRASES", phrases))
    if handover.notify is not None:
        env.append(_value("HANDOVER_NOTIFY_URL", handover.notify.url))
        ref = handover.notify.secret_ref
        env.append(_secret("HANDOVER_NOTIFY_SECRET", ref.name, ref.key))
    return env


def container_security_context(uid: int) -> dict[str, Any]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(uid: int) -> dict[str, Any]:
    """The pod-level security context (``fsGroup`` makes volumes writable for ``uid``)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_template(
    agent: AgentContext,
    component: str,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    *,
    uid: int,
    checksum: str | None = None,
    grace_seconds: int = 30,
) -> dict[str, Any]:
    """A pod template; ``checksum`` (of what the pods read but the template does not show)
    goes in an annotation, so that a change of it rolls the pods."""
    metadata: dict[str, Any] = {"labels": labels(agent.name, component)}
    if checksum is not None:
        metadata["annotations"] = {CONFIG_CHECKSUM_ANNOTATION: checksum}
    return {
        "metadata": metadata,
        "spec": {
            "serviceAccountName": child_names(agent.name).service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": pod_security_context(uid),
            "terminationGracePeriodSeconds": grace_seconds,
            "containers": containers,
            "volumes": volumes,
        },
    }


def _deployment(
    agent: AgentContext,
    name: str,
    component: str,
    replicas: int,
    template: dict[str, Any],
    strategy: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(agent, name, component),
        "spec": {
            "replicas": 0 if agent.suspended else replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(agent.name, component)},
            "strategy": strategy,
            "template": template,
        },
    }


def _bot_volumes(agent: AgentContext) -> list[dict[str, Any]]:
    return [
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "faqs",
            "configMap": {
                "name": child_names(agent.name).faqs_configmap,
                "items": [{"key": FAQS_FILE, "path": FAQS_FILE}],
            },
        },
    ]


_BOT_MOUNTS: list[dict[str, Any]] = [
    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
    {"name": "faqs", "mountPath": FAQS_DIR, "readOnly": True},
]


def _bot_container(agent: AgentContext, component: str, command: list[str]) -> dict[str, Any]:
    return {
        "name": component,
        "image": agent.settings.bot_image,
        "imagePullPolicy": agent.settings.image_pull_policy,
        "command": command,
        "env": bot_env(agent, component),
        "resources": effective_resources(agent.spec, component),
        "securityContext": container_security_context(BOT_UID),
        "volumeMounts": [dict(m) for m in _BOT_MOUNTS],
    }


#: The init container of every bot pod: the database schema at the image's revision.
MIGRATE = "migrate"


def _migrate_container(agent: AgentContext) -> dict[str, Any]:
    """``released migrate`` with the purge's environment and bounds (the database only)."""
    container = _bot_container(agent, PURGE, ["released", "migrate"])
    container["name"] = MIGRATE
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    return container


def build_web_deployment(agent: AgentContext) -> dict[str, Any]:
    """``NAME-web``: uvicorn serving ``bot.main:app`` on port 8000 behind the Ingress, with the
    web tier's HTTP limits (concurrency, keep-alive, header and body timeouts: ``bot.serving``)."""
    container = _bot_container(
        agent,
        WEB,
        # A pod listens on its own address.
        ["uvicorn", *uvicorn_args("0.0.0.0", WEB_PORT)],  # noqa: S104
    )
    container["ports"] = [{"name": "http", "containerPort": WEB_PORT, "protocol": "TCP"}]
    # A pod that is stopping (a rollout, a rotation) keeps accepting for a few seconds: the
    # Service's endpoints and kube-proxy's rules drop it meanwhile. Without this, uvicorn stops
    # listening at SIGTERM while deliveries are still routed to it, and they fail.
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(WEB_DRAIN_SECONDS)]}}}
    # Liveness starts once the app has answered (a slow start on a busy node is no hang): the
    # startup probe gives it STARTUP_SECONDS.
    container["startupProbe"] = {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 2,
        "failureThreshold": STARTUP_SECONDS // 2,
    }
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    container["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    template = _pod_template(
        agent, WEB, [container], _bot_volumes(agent), uid=BOT_UID, checksum=agent.config_checksum
    )
    template["spec"]["initContainers"] = [_migrate_container(agent)]
    # Never drop below the desired count while rolling: Meta retries, but not forever.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    names = child_names(agent.name)
    return _deployment(
        agent, names.web_deployment, WEB, agent.spec.web.replicas, template, strategy
    )


def build_worker_deployment(agent: AgentContext) -> dict[str, Any]:
    """``NAME-worker``: Celery workers that answer messages (tasks are acknowledged late), each
    one process running ``concurrency`` tasks at once (threads pool), alive while its heartbeat
    file is fresh."""
    worker = agent.spec.worker
    container = _bot_container(
        agent,
        WORKER,
        # bot.worker: the Celery worker of bot.tasks (threads pool) without Celery's command
        # line, which would load ~13 MiB of subcommands it never runs. No gossip or mingle: the
        # bot uses no worker-to-worker state (remote control still works).
        ["released-worker", f"--concurrency={worker.concurrency}", "--loglevel=INFO",
         "--without-gossip", "--without-mingle"],
    )
    container["env"] += [
        {"name": "WORKER_METRICS_PORT", "value": str(WORKER_METRICS_PORT)},
        {"name": "PROMETHEUS_MULTIPROC_DIR", "value": WORKER_METRICS_DIR},
        {"name": "WORKER_HEARTBEAT_FILE", "value": WORKER_HEARTBEAT_FILE},
    ]
    container["ports"] = [
        {"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}
    ]
    probe = {"exec": {"command": ["sh", "-c", WORKER_PROBE_SCRIPT]}, "timeoutSeconds": 5}
    # The heartbeat starts once the worker has connected to Redis (a fresh pod during a
    # rotation waits for Redis to load its password): liveness only after that.
    container["startupProbe"] = {
        **probe,
        "periodSeconds": 5,
        "failureThreshold": STARTUP_SECONDS // 5,
    }
    container["livenessProbe"] = {
        **probe,
        "periodSeconds": 30,
        "failureThreshold": 3,
    }
    container["readinessProbe"] = {**probe, "periodSeconds": 10, "failureThreshold": 3}
    template = _pod_template(
        agent,
        WORKER,
        [container],
        _bot_volumes(agent),
        uid=BOT_UID,
        checksum=agent.config_checksum,
        grace_seconds=60,
    )
    template["spec"]["initContainers"] = [_migrate_container(agent)]
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    names = child_names(agent.name)
    return _deployment(agent, names.worker_deployment, WORKER, worker.replicas, template, strategy)


def purge_schedule(agent: AgentContext) -> str:
    """Hourly, at a minute of the hour that depends on the agent (so that a thousand agents do
    not all purge the shared PostgreSQL at the same minute)."""
    digest = hashlib.sha256(f"{agent.namespace}/{agent.name}".encode()).digest()
    return f"{int.from_bytes(digest[:4], 'big') % 60} * * * *"


def build_purge_cronjob(agent: AgentContext) -> dict[str, Any]:
    """``NAME-purge``: ``released purge`` every hour, one run at a time, bounded in time and
    retries; never suspended, so retention holds while the agent is (its Deployments at zero).
    Its pods get only the database's Secret and exit when done: nothing waits between runs."""
    container = _bot_container(agent, PURGE, ["released", "purge"])
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    pod = _pod_template(
        agent,
        PURGE,
        [container],
        [{"name": "tmp", "emptyDir": {}}],
        uid=BOT_UID,
        checksum=agent.config_checksum,
    )
    pod["spec"]["restartPolicy"] = "Never"
    pod["spec"]["initContainers"] = [_migrate_container(agent)]
    names = child_names(agent.name)
    return {
        "apiVersion": agent.cronjob_api_version,
        "kind": "CronJob",
        "metadata": object_meta(agent, names.purge_cronjob, PURGE),
        "spec": {
            "schedule": purge_schedule(agent),
            "concurrencyPolicy": "Forbid",
            # A run missed by more than this (controller down) waits for the next hour.
            "startingDeadlineSeconds": 1800,
            "suspend": False,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 2,
            "jobTemplate": {
                "metadata": {"labels": labels(agent.name, PURGE)},
                "spec": {
                    "backoffLimit": PURGE_BACKOFF_LIMIT,
                    "activeDeadlineSeconds": PURGE_DEADLINE_SECONDS,
                    "template": pod,
                },
            },
        },
    }


def build_redis_deployment(agent: AgentContext) -> dict[str, Any]:
    """``NAME-redis``: Redis with an append-only file on ``NAME-redis`` and ACL passwords, and
    beside it ``acl-reload``, which has Redis load new passwords when a rotation changes them
    (so a rotation never restarts Redis; the pod template does not change with the Secret)."""
    names = child_names(agent.name)
    mounts = [
        {"name": "acl", "mountPath": REDIS_ACL_DIR},
        {"name": "passwords", "mountPath": REDIS_CREDENTIALS_DIR, "readOnly": True},
    ]
    container = {
        "name": REDIS,
        "image": agent.settings.redis_image,
        "imagePullPolicy": agent.settings.image_pull_policy,
        "command": ["sh", "-c", REDIS_START_SCRIPT],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "tcpSocket": {"port": "redis"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", REDIS_READY_SCRIPT]},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "resources": effective_resources(agent.spec, REDIS),
        "securityContext": container_security_context(REDIS_UID),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            *mounts,
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
    }
    reload_probe = {
        "exec": {"command": ["sh", "-c", REDIS_ACL_RELOAD_PROBE_SCRIPT]},
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    reloader = {
        "name": REDIS_ACL_RELOAD,
        "image": agent.settings.redis_image,
        "imagePullPolicy": agent.settings.image_pull_policy,
        "command": ["sh", "-c", REDIS_ACL_RELOAD_SCRIPT],
        "livenessProbe": {**reload_probe, "initialDelaySeconds": 30, "periodSeconds": 30},
        "readinessProbe": {**reload_probe, "periodSeconds": 10},
        "resources": ACL_RELOAD_RESOURCES,
        "securityContext": container_security_context(REDIS_UID),
        "volumeMounts": mounts,
    }
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": names.redis_pvc}},
        # The ACL file holds the passwords in clear: keep it in memory, never on a disk.
        {"name": "acl", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": "passwords",
            # Only the Redis keys: the password (the pod waits for it) and, only during a
            # rotation, the previous one (an optional source: its absence is no error).
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "secret": {
                            "name": names.credentials_secret,
                            "items": [{"key": key, "path": REDIS_PASSWORD_FILES[key]}],
                            **({"optional": True} if key == keys.REDIS_PASSWORD_PREVIOUS else {}),
                        }
                    }
                    for key in (keys.REDIS_PASSWORD, keys.REDIS_PASSWORD_PREVIOUS)
                ],
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    template = _pod_template(agent, REDIS, [container, reloader], volumes, uid=REDIS_UID)
    # The volume is ReadWriteOnce: the old pod must be gone before the new one starts.
    return _deployment(agent, names.redis_deployment, REDIS, 1, template, {"type": "Recreate"})
