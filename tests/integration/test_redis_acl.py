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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from whatsapp_operator.builders.workloads import (
    REDIS_ACL_DIR,
    REDIS_ACL_RELOAD_PROBE_SCRIPT,
    REDIS_ACL_RELOAD_SCRIPT,
    REDIS_ACL_RELOAD_SECONDS,
    REDIS_CREDENTIALS_DIR,
    REDIS_PORT,
    REDIS_READY_SCRIPT,
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


def pod_script(script: str, workdir: Path, port: int) -> str:
    """One of the Redis pod's scripts, on ``workdir`` (``acl``: the in-memory ACL directory,
    ``passwords``: the Secret's files, ``data``) and ``port``, its poll interval 0.2 s."""
    for sub in ("acl", "passwords", "data"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    script = script.replace(REDIS_ACL_DIR, str(workdir / "acl"))
    script = script.replace(REDIS_CREDENTIALS_DIR, str(workdir / "passwords"))
    script = script.replace("--dir /data", f"--dir {workdir / 'data'}")
    script = script.replace(f"sleep {REDIS_ACL_RELOAD_SECONDS} ", "sleep 0.2 ")
    return script.replace(f"-p {REDIS_PORT}", f"-p {port}").replace(
        f"--port {REDIS_PORT}", f"--port {port} --bind 127.0.0.1 --save ''"
    )


def acl_script(workdir: Path, port: int) -> str:
    """The container's start script, on ``workdir`` and ``port``, with an observer user added
    (the test reads Redis's ACL log with it; the pods' user is unchanged)."""
    script = pod_script(REDIS_START_SCRIPT, workdir, port)
    observer = (
        f"printf 'user {OBSERVER} on >{OBSERVER_PASSWORD} ~* &* +@all\\n'"
        f" >> {workdir / 'acl'}/users.acl\n"
    )
    return script.replace("exec redis-server", observer + "exec redis-server", 1)


def write_passwords(workdir: Path, current: str, previous: str | None = None) -> None:
    """What the kubelet does with the Secret's Redis keys: replace the files (atomically)."""
    (workdir / "passwords").mkdir(parents=True, exist_ok=True)
    for name, value in (("password", current), ("previous", previous)):
        path = workdir / "passwords" / name
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.with_suffix(".tmp").write_text(value)
            path.with_suffix(".tmp").replace(path)


class AclStack(LocalStack):
    """``released run``'s processes, with Redis started by the operator's script."""

    password: str = ""

    def _start_redis(self) -> None:
        port = free_port()
        self.password = secrets.token_urlsafe(32)
        script = acl_script(self.workdir / "redis", port)
        write_passwords(self.workdir / "redis", self.password)
        self._spawn("redis", ["sh", "-c", script], env=dict(os.environ))
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


# -- a credential rotation reaches Redis without a restart ------------------------------------


def _auth(port: int, password: str) -> redis.Redis:
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    client.ping()
    return client


def _refused(port: int, password: str) -> bool:
    try:
        _auth(port, password).close()
    except redis.exceptions.AuthenticationError:
        return True
    return False


def _ready(workdir: Path, port: int) -> bool:
    probe = pod_script(REDIS_READY_SCRIPT, workdir, port)
    return subprocess.run(["sh", "-c", probe], capture_output=True, timeout=10).returncode == 0


def _until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_rotation_reaches_redis_without_a_restart(tmp_path: Path) -> None:
    """The Redis pod's two containers as the operator starts them (``REDIS_START_SCRIPT`` and
    ``acl-reload``'s ``REDIS_ACL_RELOAD_SCRIPT``) with the kubelet's part played by hand: the
    Secret's files change when a rotation starts (new password, old one as ``previous``) and
    when it finishes (``previous`` gone). Redis accepts the new password, then refuses the old
    one, without restarting, keeping its data and its open connections; the readiness probe
    follows the current password; nothing in the logs shows a password."""
    port, old, new = free_port(), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    write_passwords(tmp_path, old)
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("redis", "reload")}
    server = subprocess.Popen(
        ["sh", "-c", pod_script(REDIS_START_SCRIPT, tmp_path, port)],
        stdout=logs["redis"], stderr=subprocess.STDOUT,
    )  # fmt: skip
    reloader = subprocess.Popen(
        ["sh", "-c", pod_script(REDIS_ACL_RELOAD_SCRIPT, tmp_path, port)],
        stdout=logs["reload"], stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _until(lambda: _ready(tmp_path, port), "Redis to be ready")
        pod = _auth(port, old)  # a pod connected before the rotation
        pod.set("queued", "1")
        assert _refused(port, new)

        write_passwords(tmp_path, new, previous=old)  # the rotation starts
        _until(lambda: not _refused(port, new), "the new password to be accepted")
        assert not _refused(port, old)  # pods that have not rolled yet still connect
        assert _ready(tmp_path, port)
        assert pod.get("queued") == b"1"  # the open connection and the data stayed

        write_passwords(tmp_path, new)  # the rotation finishes
        _until(lambda: _refused(port, old), "the old password to be refused")
        assert _auth(port, new).get("queued") == b"1"
        assert pod.ping()  # still the same connection
        assert server.poll() is None, "Redis restarted"

        write_passwords(tmp_path, "")  # a broken Secret: nothing is loaded, Redis goes on
        time.sleep(1.0)
        assert not _refused(port, new)
        write_passwords(tmp_path, new)
        # acl-reload's probes: alive while its loop goes round.
        probe = pod_script(REDIS_ACL_RELOAD_PROBE_SCRIPT, tmp_path, port)
        assert subprocess.run(["sh", "-c", probe], timeout=10).returncode == 0
    finally:
        reloader.terminate()
        stopped = reloader.wait(timeout=5)  # promptly on SIGTERM: a pod does not hang
        server.terminate()
        server.wait(timeout=10)
        for handle in logs.values():
            handle.close()
    assert stopped == 0
    text = (tmp_path / "reload.log").read_text() + (tmp_path / "redis.log").read_text()
    assert (tmp_path / "reload.log").read_text().count("ACL loaded") >= 3, text
    assert old not in text and new not in text
