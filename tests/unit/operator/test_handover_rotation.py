"""The admin API's token rotates with the agent's other credentials, and no admin call fails
across a rotation: a client that presents :func:`admin_token_for_clients` of the Secret is
accepted by every web pod that may be running at each step (pods not rolled yet and pods rolled
onto the current Secret)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from whatsapp_operator import credentials as keys
from whatsapp_operator import rotation as rot

from .test_rotation import CREATED, INTERVAL, Run, settle, start, tick


def accepted(data: dict[str, str]) -> set[str]:
    """The tokens a web pod started from this Secret accepts (``ADMIN_TOKEN`` and, while a
    rotation is under way, ``ADMIN_TOKEN_PREVIOUS``)."""
    return {t for t in (data.get(keys.ADMIN_TOKEN), data.get(keys.ADMIN_TOKEN_PREVIOUS)) if t}


class Pods:
    """The web pods that may be running: those rolled onto an earlier Secret, and those that
    start from the current one."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rolled = run.secret()

    def roll(self) -> None:
        self.rolled = self.run.secret()

    def running(self) -> list[set[str]]:
        return [accepted(self.rolled), accepted(self.run.secret())]

    def admits(self, token: str | None) -> bool:
        return token is not None and all(token in pod for pod in self.running())


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
    assert pods.running() == [{final[keys.ADMIN_TOKEN]}] * 2
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
