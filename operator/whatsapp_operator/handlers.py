"""The kopf handlers: thin glue that delegates to the domain modules.

Run with ``kopf run --standalone -m whatsapp_operator.handlers`` (or ``python -m
whatsapp_operator``, which also sets up JSON logs and the liveness endpoint).

- ``reconcile``            create/update/resume of an agent: validate, credentials, database,
                           FAQs, children (server-side apply), knowledge, webhook, status.
- ``cleanup``              delete of an agent (finalizer ``whatsapp.released.io/cleanup``): the
                           OpenAI store, Meta's callback override and a provisioned database;
                           retried with backoff, released after ``cleanup_max_attempts``.
- ``agent_refs``           a kopf index: which agents reference which Secret/ConfigMap, so that
                           ``referenced_secret``/``referenced_configmap`` re-reconcile exactly
                           the agents whose inputs changed (by bumping an annotation).
- ``workloads_changed``    Deployment events of agents' children: refresh ``WorkloadsReady``.
- ``periodic``             a timer per agent: refresh ``WorkloadsReady`` and rotate credentials.
- ``validate-agent``       the validating admission handler (see :mod:`.admission`).

Status is written by this module only (the status subresource; kopf keeps its own progress in
annotations), with optimistic locking so that concurrent writers never lose a condition.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from released.agent import naming
from released.agent.spec import AgentSpec, Faq, parse_faqs_document
from released.agent.validation import InvalidSpec, parse_spec, validate_faqs

from . import FIELD_MANAGER, FINALIZER, GROUP, KIND, PLURAL, VERSION, kube, metrics
from . import credentials as keys
from . import status as st
from .admission import configure_admission, register_admission_handler
from .config import OperatorSettings, get_operator_settings
from .errors import PermanentError, ReleasedError, TemporaryError, redact

logger = logging.getLogger("whatsapp_operator")

#: The validating admission handler exists only with ``RELEASED_ADMISSION_WEBHOOK`` set.
ADMISSION_ENABLED = register_admission_handler()

#: Annotation bumped when a referenced Secret or ConfigMap changes; its change is an update.
REFS_ANNOTATION = f"{GROUP}/refs-checksum"
#: Where kopf keeps its progress and last-handled configuration (annotations, not status).
KOPF_PREFIX = f"kopf.{GROUP}"

#: ``Ready=False`` reasons under which the parts are not meaningful (no refresh overrides them).
BLOCKER_REASONS = frozenset(
    {"InvalidSpec", "DatabaseNotConfigured", "SecretNotFound", "FaqsNotFound", "InvalidFaqs"}
)

#: The per-agent timer; ``RELEASED_TIMER_INTERVAL`` (seconds) shortens it for tests and demos.
TIMER_INTERVAL = get_operator_settings().timer_interval
TIMER_IDLE = min(15.0, TIMER_INTERVAL / 2)
MAX_BACKOFF = 300.0


def backoff(retry: int, base: float = 5.0) -> float:
    """Exponential backoff for kopf retries: 5, 10, 20, ... seconds, at most 5 minutes."""
    return float(min(MAX_BACKOFF, base * (2 ** max(0, retry))))


def agent_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _b64decode(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _b64encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# ---------------------------------------------------------------------------------------------
# startup


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings from :class:`OperatorSettings`; the metrics server."""
    ours = get_operator_settings()
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Handler log lines stay logs; Events are posted explicitly (status.info / status.warn).
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = FIELD_MANAGER
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.execution.max_workers = 16
    if configure_admission(settings):
        logger.info("admission webhook enabled")
    if metrics.start_metrics_server(ours.metrics_port):
        logger.info("metrics on port %d", ours.metrics_port)


# ---------------------------------------------------------------------------------------------
# status writing


async def update_status(
    namespace: str,
    name: str,
    mutate: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None],
    *,
    attempts: int = 5,
) -> dict[str, Any] | None:
    """Read the agent, let ``mutate(body, status)`` return the new status, write it.

    The write carries the read ``resourceVersion``, so a concurrent writer makes it fail with
    409 and it is redone on fresh data. ``mutate`` returning ``None`` writes nothing.
    """
    for _attempt in range(attempts):
        body = await kube.get_agent(namespace, name)
        if body is None:
            return None
        current = dict(body.get("status") or {})
        new = mutate(body, current)
        if new is None:
            return current
        if new == current:
            # Nothing to write, but the gauge must count this agent too (after a restart the
            # operator's first look at an unchanged agent lands here).
            metrics.set_agent_ready(namespace, name, _ready_status(current))
            return current
        # A merge patch keeps keys it does not mention: removed ones are sent as null.
        removed = {key: None for key in current if key not in new}
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": {**new, **removed},
        }
        try:
            await kube.merge_patch(
                kube.AGENT_API_VERSION, KIND, namespace, name, patch, subresource="status"
            )
        except kube.KubeError as exc:
            if exc.conflict:
                continue
            if exc.not_found:
                return None
            raise
        metrics.set_agent_ready(namespace, name, _ready_status(new))
        return new
    raise kopf.TemporaryError("status kept changing under us; retrying", delay=2)


def _ready_status(status: Mapping[str, Any]) -> str:
    cond = st.get_condition(status, st.READY)
    return str(cond.get("status", "Unknown")) if cond else "Unknown"


def _merged_status(
    current: Mapping[str, Any],
    *,
    generation: int | None,
    conditions: list[st.Condition],
    blocker: st.Condition | None = None,
    fields: Mapping[str, Any] | None = None,
    observed: bool = True,
) -> dict[str, Any]:
    new = dict(current)
    new["conditions"] = st.apply_conditions(
        list(current.get("conditions") or []), conditions, generation, blocker=blocker
    )
    if observed and generation is not None:
        new["observedGeneration"] = generation
    for key, value in (fields or {}).items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new


async def write_blocked(
    body: Mapping[str, Any], reason: str, message: str, *, event: bool = True
) -> None:
    """``Ready=False`` with ``reason`` (nothing else is touched) and a Warning Event."""
    meta = body["metadata"]
    generation = meta.get("generation")
    blocker = st.Condition.false(st.READY, reason, message)

    def mutate(_body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        return _merged_status(current, generation=generation, conditions=[], blocker=blocker)

    await update_status(meta["namespace"], meta["name"], mutate)
    if event:
        old = None  # one Event per change of reason is enough; the condition keeps the rest
        ready = st.get_condition(body.get("status"), st.READY)
        if ready is not None:
            old = (ready.get("reason"), ready.get("message"))
        if old != (reason, redact(message)[: st.MAX_MESSAGE]):
            st.warn(body, reason, message)


# ---------------------------------------------------------------------------------------------
# inputs: Secrets and FAQs


class MissingInput(Exception):
    """A Secret, a key or a ConfigMap that the agent references does not exist (yet)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def read_secret_key(
    namespace: str, name: str, key: str, *, optional: bool = False
) -> str | None:
    data = await kube.read_secret(namespace, name)
    if data is None:
        raise MissingInput(
            "SecretNotFound", f"Secret {name!r} does not exist in namespace {namespace!r}"
        )
    value = _b64decode(data.get(key))
    if value is None and not optional:
        raise MissingInput("SecretNotFound", f"Secret {name!r} has no key {key!r}")
    return value


async def resolve_faqs(namespace: str, spec: AgentSpec) -> list[Faq]:
    """The agent's FAQs: inline, or parsed from the referenced ConfigMap key."""
    if spec.faqs:
        return list(spec.faqs)
    if spec.faqs_from is None:
        raise InvalidSpec(["no FAQs: set spec.faqs or spec.faqsFrom"])
    ref = spec.faqs_from.config_map_key_ref
    data = await kube.read_configmap(namespace, ref.name)
    if data is None:
        raise MissingInput("FaqsNotFound", f"ConfigMap {ref.name!r} (spec.faqsFrom) does not exist")
    if ref.key not in data:
        raise MissingInput("FaqsNotFound", f"ConfigMap {ref.name!r} has no key {ref.key!r}")
    try:
        faqs = parse_faqs_document(data[ref.key])
    except ValueError as exc:
        raise InvalidSpec(
            [f"ConfigMap {ref.name!r} key {ref.key!r}: {exc}"], reason="InvalidFaqs"
        ) from None
    where = f"configmap {ref.name}/{ref.key}"
    problems = validate_faqs(faqs, where)
    if problems:
        raise InvalidSpec(problems, reason="InvalidFaqs")
    return faqs


def referenced_names(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(kind, name)`` of every Secret and ConfigMap that a raw spec references."""
    refs: list[tuple[str, str]] = []
    secrets = spec.get("secrets") or {}
    for part in ("meta", "openai"):
        name = (secrets.get(part) or {}).get("name")
        if name:
            refs.append(("Secret", str(name)))
    db_ref = ((spec.get("database") or {}).get("secretRef") or {}).get("name")
    if db_ref:
        refs.append(("Secret", str(db_ref)))
    cm_ref = ((spec.get("faqsFrom") or {}).get("configMapKeyRef") or {}).get("name")
    if cm_ref:
        refs.append(("ConfigMap", str(cm_ref)))
    tls = (spec.get("ingress") or {}).get("tlsSecretName")
    if tls:
        refs.append(("Secret", str(tls)))
    return refs


# ---------------------------------------------------------------------------------------------
# the index of references, and re-reconciling on their changes


@kopf.index(GROUP, VERSION, PLURAL, id="agent_refs")
def agent_refs(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str, str], str]:
    """``(kind, namespace, name) -> agent`` for every Secret/ConfigMap an agent references."""
    return {(kind, namespace or "", ref): name for kind, ref in referenced_names(spec)}


async def refs_checksum(namespace: str, spec: Mapping[str, Any]) -> str:
    """A hash over the versions of everything the agent references (missing ones count too).

    Built from ``uid`` and ``resourceVersion`` only, so the annotation carries nothing derived
    from secret values.
    """
    digest = hashlib.sha256()
    for kind, ref in sorted(set(referenced_names(spec))):
        obj = await kube.get("v1", kind, namespace, ref)
        meta = (obj or {}).get("metadata") or {}
        digest.update(
            json.dumps([kind, ref, meta.get("uid"), meta.get("resourceVersion")]).encode()
        )
    return digest.hexdigest()[:32]


async def touch_agent(namespace: str, name: str) -> bool:
    """Bump the agent's refs annotation when its inputs changed (an update follows)."""
    body = await kube.get_agent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return False
    checksum = await refs_checksum(namespace, body.get("spec") or {})
    annotations = body["metadata"].get("annotations") or {}
    if annotations.get(REFS_ANNOTATION) == checksum:
        return False
    await kube.annotate_agent(namespace, name, {REFS_ANNOTATION: checksum})
    logger.info("inputs of %s/%s changed: reconciling", namespace, name)
    return True


async def _touch_referencing(
    kind: str, namespace: str, name: str, index: kopf.Index[Any, Any]
) -> None:
    for agent in sorted(set(index.get((kind, namespace, name), []))):
        try:
            await touch_agent(namespace, str(agent))
        except kube.KubeError as exc:
            logger.warning("could not mark %s/%s for reconciliation: %s", namespace, agent, exc)


def _is_referenced(
    type: str, resource: kopf.Resource, namespace: str | None, name: str, **kwargs: Any
) -> bool:
    """Only events of Secrets/ConfigMaps that some agent references reach the handlers."""
    kind = "Secret" if resource.plural == "secrets" else "ConfigMap"
    return bool(type) and (kind, namespace or "", name) in kwargs["agent_refs"]


@kopf.on.event("", "v1", "secrets", id="referenced-secret", when=_is_referenced)
async def referenced_secret(
    type: str,  # kopf's name; None (falsy) for the initial listing
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    """A Secret changed: re-reconcile the agents that reference it."""
    if not type or not namespace:  # the initial listing: resume handlers cover it
        return
    await _touch_referencing("Secret", namespace, name, kwargs["agent_refs"])


@kopf.on.event("", "v1", "configmaps", id="referenced-configmap", when=_is_referenced)
async def referenced_configmap(
    type: str,  # kopf's name; None (falsy) for the initial listing
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    """A ConfigMap changed: re-reconcile the agents that take their FAQs from it."""
    if not type or not namespace:
        return
    await _touch_referencing("ConfigMap", namespace, name, kwargs["agent_refs"])


# ---------------------------------------------------------------------------------------------
# workloads


def workloads_condition(rollouts: list[kube.RolloutState], *, suspended: bool) -> st.Condition:
    """``WorkloadsReady`` from the Deployments' rollout states."""
    if suspended:
        return st.Condition.false(
            st.WORKLOADS_READY, "Suspended", "spec.suspend is true: every workload is scaled to 0"
        )
    pending = [r for r in rollouts if not r.complete]
    if not pending:
        return st.Condition.true(
            st.WORKLOADS_READY, "RolledOut", "all Deployments run the current template"
        )
    return st.Condition.false(
        st.WORKLOADS_READY,
        "RolloutInProgress",
        "; ".join(r.describe() for r in pending),
    )


async def read_workloads(namespace: str, name: str, *, suspended: bool) -> st.Condition:
    rollouts = await kube.deployment_rollouts(
        namespace, list(naming.child_names(name).deployments), selector=naming.agent_selector(name)
    )
    return workloads_condition(rollouts, suspended=suspended)


_refresh_pending: set[tuple[str, str]] = set()


async def refresh_workloads(namespace: str, name: str) -> None:
    """Recompute ``WorkloadsReady`` (and ``Ready``) of one agent from its Deployments."""
    body = await kube.get_agent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    if st.ready_reason(body.get("status")) in BLOCKER_REASONS:
        return
    suspended = bool((body.get("spec") or {}).get("suspend"))
    cond = await read_workloads(namespace, name, suspended=suspended)

    def mutate(fresh: dict[str, Any], current: dict[str, Any]) -> dict[str, Any] | None:
        if st.ready_reason(current) in BLOCKER_REASONS:
            return None
        # The Deployments show the spec last reconciled: that generation is the one observed.
        observed = current.get("observedGeneration")
        return _merged_status(current, generation=observed, conditions=[cond], observed=False)

    new = await update_status(namespace, name, mutate)
    was = st.get_condition(body.get("status"), st.WORKLOADS_READY)
    if new is not None and cond.status == "True" and (was is None or was.get("status") != "True"):
        st.info(body, "WorkloadsReady", "all Deployments run the current template")
        # The webhook waits for the web tier: register it now that the pods are up.
        webhook = ((body.get("spec") or {}).get("ingress") or {}).get("webhook") or {}
        registered = st.get_condition(new, st.WEBHOOK_REGISTERED)
        if webhook.get("register") and (registered is None or registered.get("status") != "True"):
            await touch_agent_generation(namespace, name)


async def touch_agent_generation(namespace: str, name: str) -> None:
    """Ask for a reconciliation without a spec change (an annotation with the time)."""
    await kube.annotate_agent(namespace, name, {f"{GROUP}/reconcile-requested": st.now_iso()})


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    id="workloads",
    labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_NAME: naming.APP_NAME},
)
async def workloads_changed(
    namespace: str | None,
    labels: Mapping[str, str],
    **_: Any,
) -> None:
    """A Deployment of an agent changed: refresh the agent's ``WorkloadsReady`` (coalesced)."""
    agent = labels.get(naming.LABEL_INSTANCE)
    if not agent or not namespace:
        return
    key = (namespace, agent)
    if key in _refresh_pending:
        return
    _refresh_pending.add(key)
    try:
        await asyncio.sleep(0.5)  # let a burst of events (one per replica) settle
    finally:
        _refresh_pending.discard(key)
    try:
        await refresh_workloads(namespace, agent)
    except (kube.KubeError, kopf.TemporaryError) as exc:
        logger.warning("could not refresh workloads of %s/%s: %s", namespace, agent, exc)


# ---------------------------------------------------------------------------------------------
# OpenAI and Meta parameters of an agent


async def openai_params(namespace: str, spec: AgentSpec, settings: OperatorSettings) -> Any:
    """:class:`knowledge.OpenAIParams` from the agent's OpenAI Secret (``baseUrl`` optional)."""
    from pydantic import SecretStr

    from .knowledge import OpenAIParams

    name = spec.secrets.openai.name
    api_key = await read_secret_key(namespace, name, "apiKey")
    base_url = await read_secret_key(namespace, name, "baseUrl", optional=True)
    return OpenAIParams(
        api_key=SecretStr(api_key or ""), base_url=base_url or settings.openai_base_url
    )


async def meta_access_token(namespace: str, spec: AgentSpec) -> str:
    token = await read_secret_key(namespace, spec.secrets.meta.name, "accessToken")
    return token or ""


def webhook_url(spec: AgentSpec) -> str | None:
    host = spec.ingress_host
    return f"https://{host}/webhook" if host else None


def webhook_requested(spec: AgentSpec) -> bool:
    return bool(
        spec.ingress is not None and spec.ingress.webhook.register_override and spec.ingress_host
    )


def _released_error_condition(type_: str, exc: ReleasedError) -> st.Condition:
    return st.Condition.false(type_, exc.reason or "Error", exc.message)


# ---------------------------------------------------------------------------------------------
# deletion


@kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup")
async def cleanup(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    retry: int,
    **_: Any,
) -> None:
    """Remove what lives outside the cluster; children go with the owner references.

    Each part is tried on every attempt until it succeeds (all are idempotent). After
    ``cleanup_max_attempts`` failed attempts the finalizer is released anyway, with a Warning
    Event that says what may have been left behind.
    """
    settings = get_operator_settings()
    namespace = namespace or ""
    key = agent_key(namespace, name)
    failures: list[str] = []

    async def attempt(what: str, action: Callable[[], Awaitable[Any]]) -> None:
        try:
            await action()
        except (ReleasedError, MissingInput, kube.KubeError) as exc:
            failures.append(f"{what}: {getattr(exc, 'message', None) or exc}")
        except Exception as exc:
            logger.exception("cleanup of %s: %s failed", key, what)
            failures.append(f"{what}: {type(exc).__name__}")

    try:
        parsed: AgentSpec | None = parse_spec(spec, check=False)
    except InvalidSpec:
        parsed = None

    if parsed is not None:
        agent_spec = parsed

        async def delete_store() -> None:
            from .knowledge import KnowledgeState, delete_knowledge

            params = await openai_params(namespace, agent_spec, settings)
            state = KnowledgeState.from_status(status.get("knowledge"))
            await delete_knowledge(params, state, agent_key=key)

        await attempt("OpenAI knowledge", delete_store)

        if status.get("webhookUrl") or webhook_requested(agent_spec):

            async def unregister() -> None:
                from .meta_webhook import unregister_callback

                token = await meta_access_token(namespace, agent_spec)
                await unregister_callback(settings.graph_url, agent_spec.phone_number_id, token)

            await attempt("Meta webhook override", unregister)

        admin_url = settings.postgres_admin_url
        if agent_spec.database_secret_ref is None and admin_url is not None:
            if settings.keep_databases:
                st.info(body, "DatabaseKept", "keepDatabases is set: the database stays")
            else:

                async def drop() -> None:
                    from .database import drop_database

                    await drop_database(admin_url.get_secret_value(), key)

                await attempt("PostgreSQL database", drop)

    if not failures:
        st.info(body, "CleanedUp", "external resources removed")
        metrics.set_agent_ready(namespace, name, None)
        return
    message = "; ".join(failures)
    if retry + 1 >= settings.cleanup_max_attempts:
        text = (
            f"giving up cleanup after {retry + 1} attempts, releasing the finalizer; "
            f"may be left behind: {message}"
        )
        st.warn(body, "CleanupFailed", text)
        with contextlib.suppress(kube.KubeError, kopf.TemporaryError):
            await write_blocked(body, "CleanupFailed", text, event=False)
        metrics.set_agent_ready(namespace, name, None)
        return
    st.warn(body, "CleanupRetrying", f"attempt {retry + 1}: {message}")
    raise kopf.TemporaryError(message, delay=backoff(retry))


# ---------------------------------------------------------------------------------------------
# reconciliation


class Outcome:
    """What one reconciliation found, collected into the status at the end."""

    def __init__(self) -> None:
        self.conditions: list[st.Condition] = []
        self.fields: dict[str, Any] = {}
        self.retry: TemporaryError | ReleasedError | None = None

    def set(self, cond: st.Condition) -> None:
        self.conditions.append(cond)

    def fail(self, type_: str, exc: ReleasedError) -> None:
        self.set(_released_error_condition(type_, exc))
        if self.retry is None or isinstance(exc, TemporaryError):
            self.retry = exc


async def ensure_credentials(
    body: Mapping[str, Any], spec: AgentSpec, settings: OperatorSettings
) -> dict[str, str]:
    """The ``NAME-credentials`` Secret: created once with generated values, never overwritten.

    Returns its decoded values. For a provisioned database the role and URL are added on the
    first reconciliation and re-asserted on the server (``ensure_database``) on every one.
    """
    from . import builders

    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    manifest = builders.build_credentials_secret(
        name, namespace, builders.generate_credentials(), owner_uid=uid
    )
    data, created = await kube.ensure_secret(manifest)
    values = builders.decode_secret_data(data)
    if created and len(data) == len(manifest["data"]):
        st.info(body, "CredentialsCreated", "generated the agent's credentials Secret")
    admin_url = settings.postgres_admin_url
    if spec.database_secret_ref is None and admin_url is not None:
        from .database import DatabaseCredentials, ensure_database

        current = None
        if values.get(keys.DATABASE_URL):
            try:
                current = DatabaseCredentials.from_url(values[keys.DATABASE_URL])
            except ValueError:
                current = None
        db = await ensure_database(
            admin_url.get_secret_value(),
            agent_key(namespace, name),
            host_for_pods=settings.postgres_host_for_pods,
            current=current,
        )
        wanted = {keys.DATABASE_URL: db.url, keys.DATABASE_ROLE: db.role}
        if any(values.get(k) != v for k, v in wanted.items()):
            secret_name = naming.child_names(name).credentials_secret
            await kube.replace_secret_data(
                namespace, secret_name, {k: _b64encode(v) for k, v in wanted.items()}
            )
            values.update(wanted)
    return values


def provisioned_database_status(
    namespace: str, name: str, spec: AgentSpec, credentials: Mapping[str, str]
) -> dict[str, str] | None:
    """``status.database`` (name and active role) when the operator provisioned it, else None."""
    role = credentials.get(keys.DATABASE_ROLE)
    if spec.database_secret_ref is not None or not role:
        return None
    from .database import database_name

    return {"name": database_name(agent_key(namespace, name)), "role": role}


async def secret_fingerprints(
    namespace: str, spec: AgentSpec, credentials_name: str, credentials: Mapping[str, str]
) -> dict[str, str]:
    """Fingerprints of every Secret the bot pods read (missing user Secrets raise)."""
    from .builders import secret_fingerprint

    prints = {credentials_name: secret_fingerprint(credentials)}
    names = [spec.secrets.meta.name, spec.secrets.openai.name]
    if spec.database_secret_ref is not None:
        names.append(spec.database_secret_ref.name)
    for secret in names:
        data = await kube.read_secret(namespace, secret)
        if data is None:
            raise MissingInput(
                "SecretNotFound", f"Secret {secret!r} does not exist in namespace {namespace!r}"
            )
        prints[secret] = secret_fingerprint(data)
    if spec.database_secret_ref is not None:
        ref = spec.database_secret_ref
        data = await kube.read_secret(namespace, ref.name) or {}
        if ref.key not in data:
            raise MissingInput("SecretNotFound", f"Secret {ref.name!r} has no key {ref.key!r}")
    meta_data = await kube.read_secret(namespace, spec.secrets.meta.name) or {}
    for key in ("accessToken", "appSecret"):
        if key not in meta_data:
            raise MissingInput(
                "SecretNotFound", f"Secret {spec.secrets.meta.name!r} has no key {key!r}"
            )
    openai_data = await kube.read_secret(namespace, spec.secrets.openai.name) or {}
    if "apiKey" not in openai_data:
        raise MissingInput(
            "SecretNotFound", f"Secret {spec.secrets.openai.name!r} has no key 'apiKey'"
        )
    return prints


async def apply_children(
    body: Mapping[str, Any],
    spec: AgentSpec,
    settings: OperatorSettings,
    faqs: list[Faq],
    credentials: Mapping[str, str],
    prints: Mapping[str, str],
    vector_store_id: str | None,
) -> tuple[str, list[dict[str, Any]]]:
    """Build every child, apply them (server-side), prune the unwanted; returns the checksum."""
    from . import builders

    meta = body["metadata"]
    namespace = meta["namespace"]
    has_monitor = await kube.servicemonitor_crd_exists()
    pdb_version = await kube.pdb_api_version()
    openai_base = (
        _b64decode(
            (await kube.read_secret(namespace, spec.secrets.openai.name) or {}).get("baseUrl")
        )
        or None
    )
    checksum = builders.compute_checksum(faqs, prints)
    ctx = builders.AgentContext.from_resource(
        body,
        settings,
        spec=spec,
        faqs=tuple(faqs),
        config_checksum=checksum,
        redis_checksum=builders.compute_redis_checksum(credentials),
        openai_base_url=openai_base,
        has_service_monitor_crd=has_monitor,
        pdb_api_version=pdb_version,
        vector_store_id=vector_store_id,
    )
    manifests = builders.build_children(ctx)
    applied = await kube.apply_all(manifests, namespace=namespace)
    removed = []
    for gone in builders.absent_children(ctx):
        try:
            if await kube.delete(gone["apiVersion"], gone["kind"], gone["namespace"], gone["name"]):
                removed.append(f"{gone['kind']}/{gone['name']}")
        except kube.KubeError as exc:
            if exc.status != 404:  # 404 also when the kind itself is not served
                raise
    if removed:
        st.info(body, "Pruned", "deleted children no longer wanted: " + ", ".join(removed))
    return checksum, applied


async def ensure_knowledge_part(
    body: Mapping[str, Any],
    spec: AgentSpec,
    settings: OperatorSettings,
    faqs: list[Faq],
    outcome: Outcome,
) -> None:
    from .knowledge import KnowledgeState, ensure_knowledge

    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    current = KnowledgeState.from_status((body.get("status") or {}).get("knowledge"))
    try:
        params = await openai_params(namespace, spec, settings)
        state = await ensure_knowledge(
            params,
            agent_key(namespace, name),
            [{"q": f.q, "a": f.a} for f in faqs],
            current,
        )
    except ReleasedError as exc:
        outcome.fail(st.KNOWLEDGE_READY, exc)
        return
    outcome.fields["knowledge"] = state.to_status()
    outcome.set(
        st.Condition.true(st.KNOWLEDGE_READY, "Synced", f"vector store holds {len(faqs)} FAQs")
    )
    if current is None or current.faq_hash != state.faq_hash:
        st.info(body, "KnowledgeSynced", f"uploaded {len(faqs)} FAQs to the vector store")


async def ensure_webhook_part(
    body: Mapping[str, Any],
    spec: AgentSpec,
    settings: OperatorSettings,
    credentials: Mapping[str, str],
    workloads: st.Condition,
    outcome: Outcome,
) -> None:
    from .meta_webhook import register_callback, unregister_callback

    meta = body["metadata"]
    namespace = meta["namespace"]
    current = body.get("status") or {}
    url = webhook_url(spec)
    if not webhook_requested(spec) or url is None:
        if current.get("webhookUrl"):
            try:
                token = await meta_access_token(namespace, spec)
                await unregister_callback(settings.graph_url, spec.phone_number_id, token)
            except ReleasedError as exc:
                outcome.fail(st.WEBHOOK_REGISTERED, exc)
                return
            st.info(body, "WebhookUnregistered", "removed Meta's callback URL override")
        outcome.fields["webhookUrl"] = None
        outcome.set(
            st.Condition.true(
                st.WEBHOOK_REGISTERED, "NotRequested", "spec.ingress.webhook.register is false"
            )
        )
        return
    if workloads.status != "True":
        outcome.set(
            st.Condition.false(
                st.WEBHOOK_REGISTERED,
                "WaitingForWorkloads",
                "Meta verifies the callback at once: waiting for the web tier to be ready",
            )
        )
        return
    try:
        token = await meta_access_token(namespace, spec)
        await register_callback(
            settings.graph_url,
            spec.phone_number_id,
            token,
            url,
            credentials.get(keys.VERIFY_TOKEN, ""),
        )
    except ReleasedError as exc:
        outcome.fail(st.WEBHOOK_REGISTERED, exc)
        return
    if current.get("webhookUrl") != url:
        st.info(body, "WebhookRegistered", f"Meta now calls {url}")
    outcome.fields["webhookUrl"] = url
    outcome.set(st.Condition.true(st.WEBHOOK_REGISTERED, "Registered", f"Meta calls {url}"))


def rotation_fields(
    body: Mapping[str, Any], spec: AgentSpec
) -> tuple[dict[str, Any], st.Condition]:
    """``nextRotation`` and ``CredentialsRotated`` for the status (the timer does the rest)."""
    from .rotation import RotationPhase, RotationState, format_time

    current = body.get("status") or {}
    interval = spec.rotation.interval_timedelta
    state = RotationState.from_status(current, interval)
    if state.phase is not RotationPhase.IDLE:
        return {}, st.Condition.false(
            st.CREDENTIALS_ROTATED,
            "RotationInProgress",
            f"rotation {state.rotation_id} in progress ({state.phase.value})",
        )
    due = state.due_at()
    if due is None:
        created = _parse_time(body["metadata"].get("creationTimestamp"))
        due = (created or dt.datetime.now(dt.UTC)) + interval
    when = format_time(due)
    last = f"last rotation at {format_time(state.last_rotation)}; " if state.last_rotation else ""
    reason = "Rotated" if state.last_rotation else "UpToDate"
    return {"nextRotation": when}, st.Condition.true(
        st.CREDENTIALS_ROTATED, reason, f"{last}next rotation at {when}"
    )


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


async def reconcile(body: Mapping[str, Any], retry: int) -> None:
    """Drive one agent to its spec; raises ``kopf.TemporaryError`` to be retried later."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    generation = meta.get("generation")
    settings = get_operator_settings()

    try:
        spec = parse_spec(body.get("spec") or {}, name=name)
    except InvalidSpec as exc:
        await write_blocked(body, exc.reason, exc.message)
        metrics.count_reconcile("invalid")
        return
    if spec.database_secret_ref is None and settings.postgres_admin_url is None:
        await write_blocked(
            body,
            "DatabaseNotConfigured",
            "spec.database.secretRef is not set and the operator has no shared PostgreSQL "
            "(postgresAdminUrl in its Helm values): set one of the two",
        )
        metrics.count_reconcile("invalid")
        return

    try:
        faqs = await resolve_faqs(namespace, spec)
        credentials = await ensure_credentials(body, spec, settings)
        names = naming.child_names(name)
        prints = await secret_fingerprints(namespace, spec, names.credentials_secret, credentials)
    except InvalidSpec as exc:
        await write_blocked(body, exc.reason, exc.message)
        metrics.count_reconcile("invalid")
        return
    except MissingInput as exc:
        await write_blocked(body, exc.reason, exc.message)
        metrics.count_reconcile("retry")
        # Retried with backoff (5 s, 10 s, ...): while this creation/update is pending, kopf
        # holds back the update that the Secret/ConfigMap watchers cause when it appears.
        raise kopf.TemporaryError(exc.message, delay=backoff(retry)) from None
    except PermanentError as exc:  # the database: a conflict a person must resolve
        await write_blocked(body, exc.reason, exc.message)
        metrics.count_reconcile("error")
        raise kopf.TemporaryError(exc.message, delay=MAX_BACKOFF) from None
    except TemporaryError as exc:
        await write_blocked(body, exc.reason, exc.message)
        metrics.count_reconcile("retry")
        raise kopf.TemporaryError(exc.message, delay=max(exc.delay, backoff(retry))) from None

    outcome = Outcome()
    # Knowledge first: the pods get the vector store's id, so a first rollout is the only one.
    await ensure_knowledge_part(body, spec, settings, faqs, outcome)
    knowledge = outcome.fields.get("knowledge") or (body.get("status") or {}).get("knowledge")
    store_id = (knowledge or {}).get("vectorStoreId") or None
    checksum, _applied = await apply_children(
        body, spec, settings, faqs, credentials, prints, store_id
    )
    workloads = await read_workloads(namespace, name, suspended=spec.suspend)
    outcome.set(workloads)
    await ensure_webhook_part(body, spec, settings, credentials, workloads, outcome)
    outcome.fields["configChecksum"] = checksum
    outcome.fields["appliedRotationId"] = credentials.get(keys.ROTATION_ID)
    outcome.fields["database"] = provisioned_database_status(namespace, name, spec, credentials)

    def mutate(fresh: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        # Rotation state from the fresh status: the timer may have moved it meanwhile.
        rot_fields, rot_cond = rotation_fields(fresh, spec)
        # The blocker (if any) is lifted: recompute Ready from the parts.
        return _merged_status(
            current,
            generation=generation,
            conditions=[*outcome.conditions, rot_cond],
            fields={**outcome.fields, **rot_fields},
        )

    new = await update_status(namespace, name, mutate)
    old_ready = st.get_condition(body.get("status"), st.READY)
    if (
        new is not None
        and st.is_ready(new)
        and not (old_ready and old_ready.get("status") == "True")
    ):
        st.info(body, "Ready", "the agent is ready")
    if outcome.retry is not None:
        delay = outcome.retry.delay if isinstance(outcome.retry, TemporaryError) else 60.0
        metrics.count_reconcile("retry")
        raise kopf.TemporaryError(outcome.retry.message, delay=max(delay, backoff(retry)))
    metrics.count_reconcile("success")


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile_agent(body: kopf.Body, retry: int, **_: Any) -> None:
    """create/update/resume: reconcile (timed and counted)."""
    with metrics.reconcile_timer():
        try:
            await reconcile(body, retry)
        except kopf.TemporaryError:
            raise
        except kube.KubeError as exc:
            metrics.count_reconcile("retry" if exc.retryable else "error")
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=backoff(retry)) from None
        except Exception:
            metrics.count_reconcile("error")
            raise


# ---------------------------------------------------------------------------------------------
# the periodic timer: workloads and rotation


@kopf.timer(GROUP, VERSION, PLURAL, id="periodic", interval=TIMER_INTERVAL, idle=TIMER_IDLE)
async def periodic(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    """Refresh ``WorkloadsReady`` from the Deployments; rotate credentials when due."""
    if body["metadata"].get("deletionTimestamp") or not namespace:
        return
    try:
        await refresh_workloads(namespace, name)
    except kube.KubeError as exc:
        logger.warning("could not refresh workloads of %s/%s: %s", namespace, name, exc)
    await rotate_if_due(body)


async def rotate_if_due(body: Mapping[str, Any]) -> None:
    """One step of credential rotation when due (see :mod:`.rotation` for the state machine).

    The Secret is written with its ``resourceVersion`` (so a concurrent writer makes the step
    fail and it is planned again on the next tick); each write is followed by a reconciliation
    request, which rolls the pods onto the new values (their checksum covers the Secret).
    """
    from . import rotation as rot
    from .builders import decode_secret_data

    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    current = body.get("status") or {}
    if st.ready_reason(current) in BLOCKER_REASONS:
        return
    try:
        spec = parse_spec(body.get("spec") or {}, check=False)
    except InvalidSpec:
        return
    state = rot.RotationState.from_status(current, spec.rotation.interval_timedelta)
    now = dt.datetime.now(dt.UTC)
    if state.phase is rot.RotationPhase.IDLE and not rot.is_due(state, now):
        return
    secret_name = naming.child_names(name).credentials_secret
    secret = await kube.get("v1", "Secret", namespace, secret_name)
    if secret is None:
        return  # reconciliation creates it first
    data = decode_secret_data(secret.get("data"))
    rolled = await pods_rolled(namespace, name, current, data.get(keys.ROTATION_ID), spec.suspend)
    step = rot.plan_rotation_step(state, now, rolled, secret_rotation_id=data.get(keys.ROTATION_ID))
    settings = get_operator_settings()
    admin_url = (
        settings.postgres_admin_url.get_secret_value()
        if settings.postgres_admin_url is not None and spec.database_secret_ref is None
        else None
    )

    async def record(
        state_after: rot.RotationState, cond: st.Condition, extra: Mapping[str, Any] | None = None
    ) -> None:
        fields = {**state_after.to_status(), **(extra or {})}

        def mutate(_fresh: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
            gen = cur.get("observedGeneration")
            return _merged_status(
                cur, generation=gen, conditions=[cond], fields=fields, observed=False
            )

        await update_status(namespace, name, mutate)

    in_progress = st.Condition.false(
        st.CREDENTIALS_ROTATED, "RotationInProgress", step.message or "rotating credentials"
    )
    try:
        if step.before is not None:
            await record(step.before, in_progress)
            if step.before.phase is rot.RotationPhase.STARTED:
                st.info(body, "RotationStarted", "rotating the agent's credentials")
        if step.action is rot.RotationAction.ROTATE:
            rotation_id = (step.before or step.after).rotation_id
            new = rot.generate_rotated_secret_data(data, rotation_id)
            if new != data:
                await write_credentials(namespace, secret_name, secret, data, new)
            await rot.apply_rotated_credentials(new, postgres_admin_url=admin_url)
            await record(step.after, in_progress)
            if new != data:
                await touch_agent_generation(namespace, name)
        elif step.action is rot.RotationAction.REVOKE:
            registration = None
            url = webhook_url(spec)
            if webhook_requested(spec) and url is not None:
                registration = rot.MetaRegistration(
                    graph_url=settings.graph_url,
                    phone_number_id=spec.phone_number_id,
                    access_token=await meta_access_token(namespace, spec),
                    callback_url=url,
                )
            await rot.revoke_previous_credentials(
                data, postgres_admin_url=admin_url, meta=registration
            )
            final = rot.finalize_secret_data(data)
            if final != data:
                await write_credentials(namespace, secret_name, secret, data, final)
            done = st.Condition.true(
                st.CREDENTIALS_ROTATED,
                "Rotated",
                f"rotated at {st.now_iso(now)}; next rotation at "
                f"{rot.format_time(step.after.next_rotation or now)}",
            )
            await record(step.after, done)
            if final != data:  # roll the pods off the previous values (after the record)
                await touch_agent_generation(namespace, name)
            st.info(body, "CredentialsRotated", "credentials rotated; previous ones revoked")
        elif step.after != state:
            await record(step.after, rotation_fields({**body, "status": current}, spec)[1])
    except (ReleasedError, MissingInput) as exc:
        message = getattr(exc, "message", str(exc))
        st.warn(body, "RotationFailed", message)
        failed = st.Condition.false(st.CREDENTIALS_ROTATED, "RotationInProgress", message)
        with contextlib.suppress(kube.KubeError, kopf.TemporaryError):
            await record(step.before or state, failed)


async def write_credentials(
    namespace: str,
    secret_name: str,
    secret: Mapping[str, Any],
    old: Mapping[str, str],
    new: Mapping[str, str],
) -> None:
    """Write ``new`` over ``old`` (removed keys become ``None``), guarded by resourceVersion."""
    patch: dict[str, str | None] = {k: _b64encode(v) for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    await kube.replace_secret_data(
        namespace,
        secret_name,
        patch,
        resource_version=(secret.get("metadata") or {}).get("resourceVersion"),
    )


async def pods_rolled(
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    rotation_id: str | None,
    suspended: bool,
) -> bool:
    """Whether the pods run the Secret of ``rotation_id``: reconciled onto it and rolled out."""
    if rotation_id is None or status.get("appliedRotationId") != rotation_id:
        return False
    if suspended:
        return True
    cond = await read_workloads(namespace, name, suspended=False)
    return cond.status == "True"
