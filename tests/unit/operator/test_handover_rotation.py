"""The admin API's token rotates with the agent's other credentials, and no admin call fails
across a rotation: a client that presents :func:`admin_token_for_clients` of the Secret is
accepted by every web pod that may be running at each step (pods not rolled yet and pods rolled
onto the current Secret), each pod's settings made from the Deployment the operator applied and
checked by the web tier's own token check."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from whatsapp_operator import credentials as keys
from whatsapp_operator import rotation as rot

from bot.api.admin import _token_ok
from bot.core.config import Settings

from .conftest import NS
from .test_rotation import CREATED, INTERVAL, Run, settle, start, tick


def web_pod(run: Run) -> Settings:
    """The settings a web pod starting now gets: the ``ADMIN_TOKEN*`` variables of the
    ``NAME-web`` Deployment the operator applied, resolved against the Secret as the kubelet
    would (an optional key that is absent leaves the variable unset)."""
    dep = run.world.kube.obj("Deployment", NS, "acme-web")
    assert dep is not None
    data = run.secret()
    values: dict[str, Any] = {}
    for var in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
        if not var["name"].startswith("ADMIN_TOKEN"):
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "acme-credentials"
        if ref["key"] in data:
            values[var["name"].lower()] = SecretStr(data[ref["key"]])
        else:
            assert ref.get("optional"), var
    return Settings(**values)


def accepted(pod: Settings) -> set[str]:
    tokens = (pod.admin_token, pod.admin_token_previous)
    return {t.get_secret_value() for t in tokens if t is not None}


class Pods:
    """The web pods that may be running: those rolled onto an earlier Secret, and those that
    start from the current one. A token is admitted when the web tier's own check
    (``bot.api.admin``) accepts it in every one of them."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rolled = web_pod(run)

    def roll(self) -> None:
        self.rolled = web_pod(self.run)

    def running(self) -> list[Settings]:
        return [self.rolled, web_pod(self.run)]

    def admits(self, token: str | None) -> bool:
        return token is not None and all(_token_ok(pod, token) for pod in self.running())


async def test_no_admin_call_fails_across_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    run = start(monkeypatch)
    await settle(run)
    pods = Pods(run)
    first = run.secret()[keys.ADMIN_TOKEN]
    client = keys.admin_token_for_clients
    assert client(run.secret()) == first and pods.admits(first)

    due = CREATED + INTERVAL
    await tick(run, due, roll=False)  # Started: the Secret has the new token, pods not rolled
    rotated = run.secret()
    assert rotated[keys.ADMIN_TOKEN] != first
    assert rotated[keys.ADMIN_TOKEN_PREVIOUS] == first
    assert pods.admits(client(rotated))
    # The naive choice (the new token) would be refused by the pods that have not rolled yet.
    assert not pods.admits(rotated[keys.ADMIN_TOKEN])

    await tick(run, due + timedelta(minutes=1), roll=False)  # still waiting for the pods
    assert pods.admits(client(run.secret()))

    await settle(run)  # the pods roll onto the rotated Secret (both tokens)
    pods.roll()
    assert pods.admits(client(run.secret()))
    await tick(run, due + timedelta(minutes=2), roll=False)  # Finishing -> Idle: previous gone
    final = run.secret()
    assert keys.ADMIN_TOKEN_PREVIOUS not in final
    assert final[keys.ADMIN_TOKEN] == rotated[keys.ADMIN_TOKEN]
    assert pods.admits(client(final))
    assert run.status()["rotation"]["phase"] == "Idle"

    await settle(run)  # the pods roll off the previous token
    pods.roll()
    assert [accepted(pod) for pod in pods.running()] == [{final[keys.ADMIN_TOKEN]}] * 2
    assert not pods.admits(first)  # the old token no longer works anywhere


async def test_the_safety_identifier_salt_never_rotates(monkeypatch: pytest.MonkeyPatch) -> None:
    run = start(monkeypatch)
    await settle(run)
    salt = run.secret()[keys.SAFETY_IDENTIFIER_SALT]
    due = CREATED + INTERVAL
    await tick(run, due, roll=False)
    assert run.secret()[keys.SAFETY_IDENTIFIER_SALT] == salt
    assert not any(k.startswith(keys.SAFETY_IDENTIFIER_SALT) and k != keys.SAFETY_IDENTIFIER_SALT
                   for k in run.secret())  # fmt: skip
    await tick(run, due + timedelta(minutes=2), roll=True)
    assert run.secret()[keys.SAFETY_IDENTIFIER_SALT] == salt
    assert rot.generate_rotated_secret_data(run.secret(), "r9")[keys.SAFETY_IDENTIFIER_SALT] == salt
