"""The agent's Redis as the operator starts it: its ACL lets the bot work and nothing more.

The Redis container's own start script (``REDIS_START_SCRIPT``, paths moved to a temporary
directory, port to a free one) runs Debian's ``redis-server``; the bot runs against it as real
processes (``LocalStack``: uvicorn, a Celery worker, the fakes), authenticated as
the pods are. Proven here:

- the bot answers a signed webhook, a worker killed mid-task loses nothing (kombu's restore of
  unacknowledged tasks: locks, WATCH/MULTI/EXEC), a worker stopped and started again the
  ordinary way (SIGTERM: remote control unsubscribes) answers again, ``/readyz`` and
  ``/metrics`` read Redis, and Redis's ACL log shows no command of theirs refused (only
  redis-py's optional CLIENT SETINFO, which it ignores). The worker runs as the operator runs
  it (``released-worker`` with the flags of its Deployment). Drop a command the bot needs from
  ``REDIS_ACL_COMMANDS`` (RPUSH, EVALSHA, HMGET...) and this test fails;
- the same user is refused what would let a compromised pod own the server or read others'
  traffic: CONFIG, MODULE, DEBUG, FLUSHALL, KEYS, MONITOR, MIGRATE, REPLICAOF, ACL, SHUTDOWN,
  and KEYS or FLUSHALL called from inside a Lua script (EVAL and EVALSHA alike).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from whatsapp_operator.builders.workloads import (
    REDIS_ACL_DIR,
    REDIS_PORT,
    REDIS_START_SCRIPT,
    build_worker_deployment,
)

from bot.devstack import LocalStack, StackError
from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload
from released.fakes import FakeMeta, FakeOpenAI
from tests.servers import free_port

pytestmark = pytest.mark.e2e

OBSERVER = "observer"
OBSERVER_PASSWORD = secrets.token_urlsafe(16)
#: redis-py sends CLIENT SETINFO on connect and ignores a refusal; nothing else may be refused.
IGNORED_DENIALS = {"client", "client|setinfo"}


def acl_script(workdir: Path, port: int) -> str:
    """The container's start script, on ``workdir`` and ``port``, with an observer user added
    (the test reads Redis's ACL log with it; the pods' user is unchanged)."""
    acl_dir, data = workdir / "acl", workdir / "data"
    acl_dir.mkdir(parents=True)
    data.mkdir()
    script = REDIS_START_SCRIPT.replace(REDIS_ACL_DIR, str(acl_dir))
    script = script.replace("--dir /data", f"--dir {data}")
    script = script.replace(f"--port {REDIS_PORT}", f"--port {port} --bind 127.0.0.1 --save ''")
    observer = (
        f"printf 'user {OBSERVER} on >{OBSERVER_PASSWORD} ~* &* +@all\\n' >> {acl_dir}/users.acl\n"
    )
    return script.replace("exec redis-server", observer + "exec redis-server", 1)


class AclStack(LocalStack):
    """``released run``'s processes, with Redis started by the operator's script."""

    password: str = ""

    def _start_redis(self) -> None:
        port = free_port()
        self.password = secrets.token_urlsafe(32)
        env = {**os.environ, "REDIS_PASSWORD": self.password}
        self._spawn("redis", ["sh", "-c", acl_script(self.workdir / "redis", port)], env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.processes["redis"].poll() is not None:
                raise StackError(f"redis did not start: {self.log_text('redis')[-2000:]}")
            time.sleep(0.05)
        self.urls["redis"] = f"redis://:{self.password}@127.0.0.1:{port}/0"
        self.urls["redis_port"] = str(port)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclStack]:
    local = AclStack(
        workdir=tmp_path_factory.mktemp("acl-stack"),
        web_port=0,
        with_purge=False,  # the purge needs only the database
        worker_concurrency=2,
        extra_env={"CELERY_VISIBILITY_TIMEOUT": "6", "LOG_FORMAT": "json"},
    )
    local.start()
    yield local
    local.stop()


def pod_client(stack: AclStack) -> redis.Redis:
    return redis.Redis.from_url(stack.urls["redis"], socket_timeout=10)


def observer(stack: AclStack) -> redis.Redis:
    port = int(stack.urls["redis_port"])
    return redis.Redis(host="127.0.0.1", port=port, username=OBSERVER, password=OBSERVER_PASSWORD)


def denials(stack: AclStack) -> list[dict[str, Any]]:
    entries = observer(stack).acl_log(count=1000)
    return [entry for entry in entries if str(entry.get("object")) not in IGNORED_DENIALS]


def deliver(stack: AclStack, wamid: str, text: str = "What is Released?") -> None:
    payload = text_message_payload(stack.env["PHONE_NUMBER_ID"], text, wamid=wamid)
    body, headers = signed_delivery(payload, stack.env["META_APP_SECRET"])
    response = httpx.post(f"{stack.urls['web']}/webhook", content=body, headers=headers)
    assert response.status_code == 200, response.text


def replies(meta: FakeMeta, wamid: str) -> list[dict[str, Any]]:
    return [m for m in meta.sent() if m["context_message_id"] == wamid]


def test_the_stack_runs_the_worker_as_the_operator_does(stack: AclStack) -> None:
    """What this module proves holds for the operator's worker: same entry point, same flags."""
    from tests.unit.operator.test_builders import container, make_ctx

    command = container(build_worker_deployment(make_ctx()))["command"]
    local = stack.worker_command()
    assert command[0] == "released-worker" and local[1:3] == ["-m", "bot.worker"]
    flags = [f for f in command[1:] if not f.startswith("--concurrency=")]
    assert [f for f in flags if f not in local] == []


def test_the_bot_works_with_only_the_commands_it_is_granted(stack: AclStack) -> None:
    meta = FakeMeta.attach(stack.urls["fake_meta"])
    openai_fake = FakeOpenAI.attach(stack.urls["fake_openai"])
    meta.reset()
    openai_fake.reset()

    # A plain answer: web claims and queues, the worker consumes, acknowledges, answers.
    first = new_wamid()
    deliver(stack, first)
    meta.wait_for(lambda: replies(meta, first), timeout=30)

    # A worker killed mid-task: kombu restores the unacknowledged task (lock, WATCH/MULTI).
    openai_fake.set_latency(5.0)
    second = new_wamid()
    deliver(stack, second)
    openai_fake.wait_for(lambda: openai_fake.calls().get("POST /v1/responses"), timeout=20)
    stack.kill("worker")
    openai_fake.set_latency(0.0)
    stack.start_worker()
    meta.wait_for(lambda: replies(meta, second), timeout=60)
    time.sleep(2.0)
    assert len(replies(meta, second)) == 1

    # A worker stopped the ordinary way (SIGTERM, as a rollout does) and started again.
    stack.start_worker()
    third = new_wamid()
    deliver(stack, third)
    meta.wait_for(lambda: replies(meta, third), timeout=30)

    # The web tier's probes and metrics read Redis too.
    assert httpx.get(f"{stack.urls['web']}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{stack.urls['web']}/metrics", timeout=10).status_code == 200

    refused = denials(stack)
    assert refused == [], f"the ACL refused commands the bot needs: {refused}"
    for name in ("web", "worker"):
        assert "NOPERM" not in stack.log_text(name), stack.log_text(name)[-3000:]


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "GET", "dir"),
        ("CONFIG", "SET", "dir", "/tmp"),
        ("MODULE", "LIST"),
        ("DEBUG", "SLEEP", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("MONITOR",),
        ("MIGRATE", "10.0.0.1", "6379", "k", "0", "1000"),
        ("REPLICAOF", "10.0.0.1", "6379"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "x", "on", "nopass", "+@all"),
        ("SHUTDOWN", "NOSAVE"),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("SCRIPT", "FLUSH"),
        ("BGREWRITEAOF",),
        ("INFO",),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_the_pods_user_is_refused_what_would_own_the_server(
    stack: AclStack, command: tuple[str, ...]
) -> None:
    client = pod_client(stack)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    assert client.ping()


def test_a_script_cannot_call_what_the_user_may_not(stack: AclStack) -> None:
    client = pod_client(stack)
    client.set("canary", "1")
    refused = re.compile("permission|can.t run this command", re.I)
    for body in ("return redis.call('KEYS', '*')", "return redis.call('FLUSHALL')"):
        sha = client.script_load(body)
        with pytest.raises(redis.exceptions.ResponseError, match=refused):
            client.evalsha(sha, 0)
        with pytest.raises(redis.exceptions.ResponseError, match=refused):
            client.eval(body, 0)
    assert client.get("canary") == b"1"
