"""The kopf handlers: registration with kopf and translation of domain errors, nothing else.

Run with ``kopf run --standalone -m whatsapp_operator.handlers`` (or ``python -m
whatsapp_operator``, which also sets up JSON logs and the liveness endpoint). The work is done by
:mod:`whatsapp_operator.reconcile`:

- ``reconcile``            create/update/resume of an agent: :func:`.reconcile.pipeline.reconcile`.
- ``cleanup``              delete of an agent (finalizer ``whatsapp.released.io/cleanup``):
                           :func:`.reconcile.cleanup.cleanup`.
- ``agent_refs``           a kopf index: which agents reference which Secret/ConfigMap. The
                           referenced objects are labelled and watched per namespace with that
                           label as the selector (:mod:`.watching`); a change re-reconciles
                           exactly the agents whose inputs changed (:mod:`.reconcile.references`).
- (children)               the agents' children are listed and watched per namespace, selected
                           by the API server with the ``app.kubernetes.io/managed-by`` label
                           (:class:`.watching.ChildWatches`): a pass knows which exist and how
                           they were applied without reading them, and a Deployment's change
                           refreshes the agent's ``WorkloadsReady`` (``workloads_changed``).
- ``periodic``             a daemon per agent that wakes every ``RELEASED_TIMER_INTERVAL``
                           seconds and, only when something is due
                           (:mod:`.reconcile.schedule`), refreshes ``WorkloadsReady`` while a
                           rollout is under way, checks the outside world
                           (:mod:`.reconcile.checks`), counts held conversations, rotates
                           credentials.
- ``validate-agent``       the validating admission handler (see :mod:`.admission`).

A domain :class:`~whatsapp_operator.errors.TemporaryError` becomes ``kopf.TemporaryError`` with
its delay; a Kubernetes API error is retried with backoff. At most
``RELEASED_CONCURRENT_RECONCILES`` passes run at once (the others wait their turn), which bounds
the operator's memory and the load it puts on the API server when many agents appear at once
(or when it starts with many agents).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import kopf

from . import (
    FIELD_MANAGER,
    FINALIZER,
    GROUP,
    PLURAL,
    VERSION,
    http_clients,
    kube,
    metrics,
    namespaces,
)
from . import status as st
from .admission import configure_admission, register_admission_handler
from .config import get_operator_settings
from .errors import ReleasedError, TemporaryError
from .reconcile import checks, schedule
from .reconcile.cleanup import cleanup as cleanup_agent
from .reconcile.context import Agent, backoff
from .reconcile.inputs import referenced_names
from .reconcile.parts import workloads
from .reconcile.pipeline import reconcile
from .reconcile.references import release, request_reconcile, touch_referencing
from .reconcile.rotate import rotate_if_due
from .watching import ChildWatches, ReferenceWatches

logger = logging.getLogger("whatsapp_operator")

# The validating admission handler exists only with ``RELEASED_ADMISSION_WEBHOOK`` set.
register_admission_handler()
# With namespace patterns, follow the namespaces kopf lists too, not only those it is told of
# by watch events (see :mod:`.namespaces`).
namespaces.install()

#: Where kopf keeps its progress and last-handled configuration (annotations, not status).
KOPF_PREFIX = f"kopf.{GROUP}"

#: The per-agent timer; ``RELEASED_TIMER_INTERVAL`` (seconds) shortens it for tests and demos.
TIMER_INTERVAL = get_operator_settings().timer_interval
#: Deployment events of one agent arriving within this many seconds are handled once.
WORKLOAD_EVENTS_SETTLE = 0.5


class _State:
    """What the handlers share, set up at start: the referenced objects' watches, the
    ``agent_refs`` index and the limit on concurrent passes."""

    watches: ReferenceWatches | None = None
    children: ChildWatches | None = None
    refs: kopf.Index[Any, Any] | None = None
    passes: asyncio.Semaphore | None = None


_state = _State()


def _agent(body: Mapping[str, Any]) -> Agent:
    return Agent(
        body=body,
        kube=kube.shared(),
        settings=get_operator_settings(),
        events=st.KopfEvents(body),
        watches=_state.watches,
        children=_state.children,
    )


def _referenced(namespace: str, ignoring: str | None = None) -> set[tuple[str, str]]:
    """``(kind, name)`` of what the agents of ``namespace`` (but ``ignoring``) reference."""
    found: set[tuple[str, str]] = set()
    if _state.refs is None:
        return found
    key: tuple[str, str, str]
    agents: kopf.Store[Any]
    for key, agents in _state.refs.items():
        kind, ns, name = key
        if ns == namespace and any(str(agent) != ignoring for agent in agents):
            found.add((kind, name))
    return found


async def _release(namespace: str, ignoring: str | None = None) -> None:
    """Unlabel what the namespace's agents no longer reference (after a spec change or a
    deletion); errors are logged, nothing else depends on it."""
    if _state.watches is None:
        return
    try:
        await release(
            kube.shared(), _state.watches, namespace, lambda: _referenced(namespace, ignoring)
        )
    except kube.KubeError as exc:
        logger.warning("could not release the references of %s: %s", namespace, exc)


async def _on_reference_change(kind: str, namespace: str, name: str) -> None:
    """A labelled Secret/ConfigMap changed: re-reconcile the agents that reference it."""
    agents: list[str] = []
    if _state.refs is not None:
        agents = [str(agent) for agent in _state.refs.get((kind, namespace, name), [])]
    await touch_referencing(kube.shared(), namespace, agents)


async def _retry_with_kopf(work: Awaitable[None]) -> None:
    """Run ``work``; a retry it asks for (:class:`TemporaryError`) becomes kopf's retry."""
    try:
        await work
    except TemporaryError as exc:
        raise kopf.TemporaryError(exc.message, delay=exc.delay) from None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """kopf settings from :class:`~whatsapp_operator.config.OperatorSettings`; the watches of
    referenced objects (with the ``agent_refs`` index, which kopf fills from here on); metrics."""
    ours = get_operator_settings()
    _state.refs = kwargs["agent_refs"]
    _state.watches = ReferenceWatches(
        kube.shared(), _on_reference_change, server_timeout=ours.watch_server_timeout
    )
    _state.children = ChildWatches(
        kube.shared(), workloads_changed, server_timeout=ours.watch_server_timeout
    )
    _state.passes = asyncio.Semaphore(ours.concurrent_reconciles)
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Handler log lines stay logs; Events are posted explicitly (status.KopfEvents).
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


@kopf.on.cleanup()
async def close_client(**_: Any) -> None:
    """Stop the watches and close the connections to Kubernetes, Meta and OpenAI when the
    operator stops."""
    for watches in (_state.watches, _state.children):
        if watches is not None:
            await watches.close()
    await kube.shared().close()
    await http_clients.aclose()


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile_agent(body: kopf.Body, retry: int, reason: str | None = None, **_: Any) -> None:
    """create/update/resume: one reconciliation pass (timed and counted; at most
    ``concurrent_reconciles`` at once). After an update, what the agent no longer references
    is unlabelled."""
    if _state.passes is None:  # not started by kopf (tests)
        _state.passes = asyncio.Semaphore(get_operator_settings().concurrent_reconciles)
    async with _state.passes:
        await _reconcile(body, retry, resume=reason == "resume")
    if reason == "update":
        await _release(str(body["metadata"]["namespace"]))


async def _reconcile(body: kopf.Body, retry: int, *, resume: bool = False) -> None:
    with metrics.reconcile_timer():
        try:
            await _retry_with_kopf(reconcile(_agent(body), retry, resume=resume))
        except kopf.TemporaryError:
            raise
        except kube.KubeError as exc:
            metrics.count_reconcile("retry" if exc.retryable else "error")
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=backoff(retry)) from None
        except Exception:
            metrics.count_reconcile("error")
            raise


@kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup")
async def cleanup(body: kopf.Body, retry: int, **_: Any) -> None:
    """delete: remove what lives outside the cluster, then let the finalizer go."""
    agent = _agent(body)
    await _retry_with_kopf(cleanup_agent(agent, retry))
    checks.forget(agent.uid)
    await _release(agent.namespace, ignoring=agent.name)


@kopf.index(GROUP, VERSION, PLURAL, id="agent_refs")
def agent_refs(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str, str], str]:
    """``(kind, namespace, name) -> agent`` for every Secret/ConfigMap an agent references."""
    return {(kind, namespace or "", ref): name for kind, ref in referenced_names(spec)}


_refresh_pending: set[tuple[str, str]] = set()


async def workloads_changed(namespace: str, agent: str) -> None:
    """A Deployment of ``agent`` changed (reported by :class:`.watching.ChildWatches`): refresh
    the agent's ``WorkloadsReady``, once for a burst of changes."""
    key = (namespace, agent)
    if key in _refresh_pending:
        return
    _refresh_pending.add(key)
    try:
        await asyncio.sleep(WORKLOAD_EVENTS_SETTLE)  # let a burst (one per replica) settle
    finally:
        _refresh_pending.discard(key)
    try:
        await workloads.refresh(
            kube.shared(), namespace, agent, st.KopfEvents, children=_state.children
        )
    except (kube.KubeError, TemporaryError) as exc:
        logger.warning("could not refresh workloads of %s/%s: %s", namespace, agent, exc)


@kopf.daemon(GROUP, VERSION, PLURAL, id="periodic", cancellation_timeout=10.0)
async def periodic(
    stopped: kopf.DaemonStopped, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    """The agent's timer: wake every ``RELEASED_TIMER_INTERVAL`` seconds and run :func:`tick`
    when :func:`.reconcile.schedule.work_due` says there is something to do (the body is kopf's
    live view of the agent). An agent with nothing due costs a wake-up: no kopf handler run, no
    request. A tick that asks for a retry (:class:`TemporaryError`) is run again after its
    delay."""
    settings = get_operator_settings()
    delay = TIMER_INTERVAL
    while not stopped:
        await stopped.wait(delay)
        delay = TIMER_INTERVAL
        if stopped or not schedule.work_due(body, settings):
            continue
        try:
            await tick(body=body, namespace=namespace, name=name)
        except TemporaryError as exc:
            logger.warning("timer of %s/%s: %s", namespace, name, exc.message)
            delay = exc.delay
        except (kube.KubeError, ReleasedError) as exc:
            logger.warning("timer of %s/%s: %s", namespace, name, exc)


async def tick(body: Mapping[str, Any], namespace: str | None, name: str) -> None:
    """Refresh ``WorkloadsReady`` from the Deployments while it is not ``True`` after a first
    pass (a rollout under way; Deployment events refresh it too); check the outside world
    (model, Meta account, WABA subscription, vector store) when due; count held conversations
    when due; rotate credentials when due. Raises :class:`TemporaryError` when a rotation step
    asks to be retried."""
    if body["metadata"].get("deletionTimestamp") or not namespace:
        return
    if schedule.rollout_pending(body):
        try:
            await workloads.refresh(
                kube.shared(), namespace, name, st.KopfEvents, children=_state.children
            )
        except (kube.KubeError, TemporaryError) as exc:
            logger.warning("could not refresh workloads of %s/%s: %s", namespace, name, exc)
    elif workloads.webhook_stalled(body):
        await request_reconcile(kube.shared(), namespace, name)
    agent = _agent(body)
    if checks.due(agent.uid, agent.settings.check_interval):
        try:
            await checks.check_outside(agent)
        except (kube.KubeError, TemporaryError) as exc:
            logger.warning("could not check %s/%s: %s", namespace, name, exc)
    if checks.held_due(agent.uid, checks.held_interval(body, agent.settings)):
        try:
            await checks.count_held(agent)
        except (kube.KubeError, TemporaryError) as exc:
            logger.warning("could not count held conversations of %s/%s: %s", namespace, name, exc)
    await rotate_if_due(agent)
