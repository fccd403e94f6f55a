"""The kopf entry points: what they hand to the reconcile package and how its errors reach kopf."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from whatsapp_operator import handlers, kube, metrics
from whatsapp_operator.errors import TemporaryError
from whatsapp_operator.reconcile.context import Agent

from .conftest import NS, World, agent_body
from .fake_kube import FakeKube


@pytest.fixture
def shared(world: World, monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    monkeypatch.setattr(kube, "_shared", world.kube)
    return world.kube


def count(outcome: str) -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "released_operator_reconciles_total", {"outcome": outcome}
    )
    return sample or 0.0


async def test_reconcile_gets_the_agent_and_its_retry(
    shared: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Agent, int, bool]] = []

    async def fake(agent: Agent, retry: int, *, resume: bool = False) -> None:
        seen.append((agent, retry, resume))

    monkeypatch.setattr(handlers, "reconcile", fake)
    body = agent_body()
    body["metadata"]["uid"] = "u1"
    await handlers.reconcile_agent(body=body, retry=3, reason="update")
    ((agent, retry, resume),) = seen
    assert (agent.namespace, agent.name, agent.uid, retry) == (NS, "acme", "u1", 3)
    assert agent.kube is shared and not resume
    # kopf's resume (the operator started) is passed on: a settled agent's pass is lighter.
    await handlers.reconcile_agent(body=body, retry=0, reason="resume")
    assert seen[-1][2] is True


async def test_a_retry_becomes_kopfs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def wants_retry(agent: Agent, retry: int, *, resume: bool = False) -> None:
        raise TemporaryError("OpenAI is down", delay=42.0)

    monkeypatch.setattr(handlers, "reconcile", wants_retry)
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers.reconcile_agent(body=agent_body(), retry=0)
    assert raised.value.delay == 42.0 and str(raised.value) == "OpenAI is down"


async def test_a_kubernetes_error_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def api_down(agent: Agent, retry: int, *, resume: bool = False) -> None:
        raise kube.KubeError(503, "ServiceUnavailable", "etcd is gone")

    monkeypatch.setattr(handlers, "reconcile", api_down)
    before = count("retry")
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers.reconcile_agent(body=agent_body(), retry=1)
    assert raised.value.delay == 10.0
    assert "Kubernetes API: 503 ServiceUnavailable" in str(raised.value)
    assert count("retry") == before + 1

    async def forbidden(agent: Agent, retry: int, *, resume: bool = False) -> None:
        raise kube.KubeError(403, "Forbidden")

    monkeypatch.setattr(handlers, "reconcile", forbidden)
    errors = count("error")
    with pytest.raises(kopf.TemporaryError):
        await handlers.reconcile_agent(body=agent_body(), retry=0)
    assert count("error") == errors + 1


async def test_a_bug_is_counted_and_left_to_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    async def bug(agent: Agent, retry: int, *, resume: bool = False) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(handlers, "reconcile", bug)
    errors = count("error")
    with pytest.raises(RuntimeError):
        await handlers.reconcile_agent(body=agent_body(), retry=0)
    assert count("error") == errors + 1


async def test_cleanup_retry_becomes_kopfs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(agent: Agent, retry: int, *, resume: bool = False) -> None:
        raise TemporaryError("OpenAI knowledge: down", delay=5.0)

    monkeypatch.setattr(handlers, "cleanup_agent", failing)
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers.cleanup(body=agent_body(), retry=0)
    assert raised.value.delay == 5.0


def test_the_index_of_references() -> None:
    spec = agent_body(faqsFrom={"configMapKeyRef": {"name": "faq", "key": "f"}}, faqs=None)["spec"]
    index = handlers.agent_refs(namespace=NS, name="acme", spec=spec)
    assert index[("Secret", NS, "openai")] == "acme"
    assert index[("ConfigMap", NS, "faq")] == "acme"


@pytest.fixture
def refs(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str, str], list[str]]:
    """The ``agent_refs`` index as the handlers see it (kopf's is a mapping of the same shape)."""
    index: dict[tuple[str, str, str], list[str]] = {}
    monkeypatch.setattr(handlers._state, "refs", index)
    return index


async def test_a_changed_reference_touches_the_agents_that_use_it(
    shared: FakeKube, refs: dict[tuple[str, str, str], list[str]]
) -> None:
    shared.put(agent_body())
    refs[("Secret", NS, "openai")] = ["acme"]
    await handlers._on_reference_change("ConfigMap", NS, "faq")  # nobody's
    assert shared.written() == []
    await handlers._on_reference_change("Secret", NS, "openai")
    assert shared.written() == [("patch", "WhatsAppAgent", "acme")]


def test_what_a_namespace_references(refs: dict[tuple[str, str, str], list[str]]) -> None:
    refs[("Secret", NS, "openai")] = ["acme", "beta"]
    refs[("Secret", NS, "meta")] = ["acme"]
    refs[("Secret", "elsewhere", "openai")] = ["gamma"]
    assert handlers._referenced(NS) == {("Secret", "openai"), ("Secret", "meta")}
    # An agent being deleted no longer counts.
    assert handlers._referenced(NS, ignoring="acme") == {("Secret", "openai")}


async def test_deployment_events_of_one_agent_are_coalesced(
    shared: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    refreshed: list[tuple[str, str]] = []

    async def refresh(
        kube_: Any, namespace: str, name: str, events_for: Any, children: Any = None
    ) -> None:
        refreshed.append((namespace, name))

    monkeypatch.setattr(handlers.workloads, "refresh", refresh)
    monkeypatch.setattr(handlers, "WORKLOAD_EVENTS_SETTLE", 0.05)
    await asyncio.gather(*(handlers.workloads_changed(NS, "acme") for _ in range(4)))
    assert refreshed == [(NS, "acme")]
    await handlers.workloads_changed(NS, "acme")  # a later change: refreshed again
    assert refreshed == [(NS, "acme"), (NS, "acme")]


async def test_a_tick_refreshes_and_rotates(
    shared: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def refresh(*args: Any, **kwargs: Any) -> None:
        calls.append("refresh")
        raise kube.KubeError(500, "InternalError")  # logged; rotation still runs

    async def rotate(agent: Agent) -> None:
        calls.append(f"rotate {agent.name}")

    async def check_outside(agent: Agent) -> None:
        calls.append(f"check {agent.name}")
        handlers.checks.mark_checked(agent.uid)

    monkeypatch.setattr(handlers.workloads, "refresh", refresh)
    monkeypatch.setattr(handlers, "rotate_if_due", rotate)
    monkeypatch.setattr(handlers.checks, "check_outside", check_outside)
    body = agent_body()
    body["metadata"]["uid"] = "uid-timer"
    await handlers.tick(body=body, namespace=NS, name="acme")  # no pass yet: nothing read
    body["status"] = {"observedGeneration": 1}
    handlers.checks.mark_checked("uid-timer", now=0.0)  # checked long ago
    await handlers.tick(body=body, namespace=NS, name="acme")
    # The outside world is checked once per check interval, not on every tick.
    await handlers.tick(body=body, namespace=NS, name="acme")
    # Rolled out: the Deployment events keep it so, the timer reads nothing.
    body["status"]["conditions"] = [{"type": "WorkloadsReady", "status": "True"}]
    await handlers.tick(body=body, namespace=NS, name="acme")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await handlers.tick(body=body, namespace=NS, name="acme")
    assert calls == [
        "rotate acme",
        "refresh",
        "check acme",
        "rotate acme",
        "refresh",
        "rotate acme",
        "rotate acme",
    ]
    handlers.checks.forget("uid-timer")


async def test_startup_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    ports: list[int] = []
    monkeypatch.setattr(metrics, "start_metrics_server", lambda port: bool(ports.append(port)))
    monkeypatch.setattr(handlers, "_state", handlers._State())
    settings = kopf.OperatorSettings()
    await handlers.configure(settings=settings, agent_refs={})
    assert ports == [8080]
    # The referenced objects and the children are watched by the operator's own label-selected
    # watches; kopf watches the agents only.
    assert handlers._state.watches is not None and handlers._state.children is not None
    assert handlers._state.refs == {}
    assert handlers._state.children.on_rollout is handlers.workloads_changed
    assert settings.persistence.finalizer == "whatsapp.released.io/cleanup"
    assert settings.posting.reporting_component == "released-operator"
    assert settings.watching.server_timeout == 300


class Stopped:
    """kopf's ``stopped`` flag of a daemon: set after ``wakes`` wake-ups; records the waits."""

    def __init__(self, wakes: int) -> None:
        self.wakes = wakes
        self.waits: list[float | None] = []

    def __bool__(self) -> bool:
        return len(self.waits) > self.wakes

    async def wait(self, timeout: float | None = None) -> Stopped:
        self.waits.append(timeout)
        return self


async def test_the_timer_ticks_only_when_something_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    due = iter([False, True, True, False])
    outcomes: list[Exception | None] = [TemporaryError("rotation step", delay=5.0), None]
    ticks: list[str] = []

    async def tick(body: Any, namespace: str | None, name: str) -> None:
        ticks.append(name)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(handlers, "tick", tick)
    monkeypatch.setattr(handlers.schedule, "work_due", lambda body, settings: next(due))
    stopped = Stopped(wakes=4)
    await handlers.periodic(stopped=stopped, body=agent_body(), namespace=NS, name="acme")
    # Four wake-ups, two of them with work due; the failed tick is retried after its delay.
    assert ticks == ["acme", "acme"]
    interval = handlers.TIMER_INTERVAL
    assert stopped.waits == [interval, interval, 5.0, interval, interval]
