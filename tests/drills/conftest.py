"""Fault drills: the bot's real processes (``LocalStack``) under faults, every wait bounded.

Each drill module gets its own stack (module scope), configured by module attributes:

- ``STACK_ENV``: environment on top of :data:`DRILL_ENV` (short timeouts so that a drill takes
  seconds, not the production minutes);
- ``WORKER_CONCURRENCY``: tasks the worker runs at once (threads pool; default 2).

A drill sends messages the way Meta does (signed, retried with the same body and wamid while
the web tier does not answer 200), then counts, from what the fake Graph API received, how many
were **sent**, **answered** and **duplicated**: answered must equal sent, duplicates zero. The
counts of every drill are printed at the end of the run ("fault drills" summary).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from bot.devstack import DEFAULT_FAQS, LocalStack
from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload
from released.fakes import FakeMeta, FakeOpenAI

T = TypeVar("T")

#: Every drill stack: a crashed worker's task is handed out again after 6 s (which also caps
#: retry countdowns at 3 s), calls to either API give up after 3 s, and the model's rate limit
#: does not pace the drill (it has a test of its own).
DRILL_ENV = {
    "CELERY_VISIBILITY_TIMEOUT": "6",
    "OPENAI_TIMEOUT_SECONDS": "3",
    "GRAPH_TIMEOUT_SECONDS": "3",
    "OPENAI_RATE_LIMIT_PER_SECOND": "500",
    "LOG_FORMAT": "json",
}

_FAQS = yaml.safe_load(DEFAULT_FAQS.read_text())
#: The English FAQs: question -> answer (both the model fake and the lexical fallback give
#: exactly this answer to exactly this question).
QUESTIONS: dict[str, str] = {
    f["q"]: f["a"] for f in _FAQS if f["q"].isascii() and f["q"].endswith("?")
}
ACCEPTABLE = frozenset({200, 400, 401, 413, 422})

SUMMARY: list[dict[str, Any]] = []


# -- the stack ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_database_url() -> str | None:
    """``DATABASE_URL`` of the drill's stack; ``None``: the stack's own SQLite file. A module
    overrides this fixture to run its drills on PostgreSQL too."""
    return None


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    stack_database_url: str | None,
) -> Iterator[LocalStack]:
    env = {**DRILL_ENV, **getattr(request.module, "STACK_ENV", {})}
    if stack_database_url:
        env["DATABASE_URL"] = stack_database_url
    local = LocalStack(
        workdir=tmp_path_factory.mktemp("drill"),
        web_port=0,
        with_purge=False,
        worker_concurrency=int(getattr(request.module, "WORKER_CONCURRENCY", 2)),
        extra_env=env,
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def meta(stack: LocalStack) -> FakeMeta:
    fake = FakeMeta.attach(stack.urls["fake_meta"])
    fake.reset()
    fake.set_latency(0.0)
    return fake


@pytest.fixture
def openai_fake(stack: LocalStack) -> FakeOpenAI:
    fake = FakeOpenAI.attach(stack.urls["fake_openai"])
    fake.reset()
    fake.set_latency(0.0)
    return fake


@pytest.fixture
def webhook(stack: LocalStack) -> Iterator[Webhook]:
    with Webhook(stack) as client:
        yield client


def restart_redis(stack: LocalStack, down_for: float = 0.0) -> None:
    """SIGKILL the stack's redis-server and start it again on the same port and directory.

    The append-only file in the directory brings back the queue, the unacknowledged tasks and
    the de-duplication claims, as a Redis pod with its PersistentVolumeClaim would.
    """
    old = stack.processes["redis"]
    args = [str(a) for a in old.args] if isinstance(old.args, list | tuple) else None
    if not args:  # Popen was given a string: read the command line the kernel has
        args = Path(f"/proc/{old.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    stack.kill("redis")
    with contextlib.suppress(KeyError):
        stack._logs.pop("redis").close()
    time.sleep(down_for)
    stack._spawn("redis", args, env=dict(os.environ))
    port = int(args[args.index("--port") + 1])
    wait_until(lambda: _port_open(port), timeout=20, what="redis-server back on its port")


class Kubelet:
    """Restarts a process of the stack when it exits, as Kubernetes restarts a pod's container
    (``restartPolicy: Always``); counts the restarts."""

    def __init__(self, stack: LocalStack, name: str = "worker", delay: float = 1.0) -> None:
        self.stack, self.name, self.delay = stack, name, delay
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            proc = self.stack.processes.get(self.name)
            if proc is not None and proc.poll() is not None:
                time.sleep(self.delay)
                self.restarts += 1
                self.stack.start_worker(self.name)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


# -- waiting --------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.
    ``what`` may be a callable: it then describes the state at the time of the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {described}")
        time.sleep(interval)


# -- delivering webhooks as Meta does -------------------------------------------------------


@dataclass
class Delivery:
    """What it took to get one webhook accepted."""

    status: int
    attempts: int
    statuses: Counter[int | str] = field(default_factory=Counter)


class Webhook:
    """POSTs to the web tier's ``/webhook`` over real HTTP; :meth:`deliver` retries like Meta."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.url = f"{stack.urls['web']}/webhook"
        self.phone_number_id = stack.env["PHONE_NUMBER_ID"]
        self.app_secret = stack.env["META_APP_SECRET"]
        self.client = httpx.Client(timeout=5.0)
        self._lock = threading.Lock()
        self.seen: Counter[int | str] = Counter()

    def __enter__(self) -> Webhook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(self.url, content=body, headers=headers)

    def deliver(
        self, payload: dict[str, Any], *, give_up_after: float = 30.0, pause: float = 0.25
    ) -> Delivery:
        """POST the signed payload until it is answered 200, with the same body each time (Meta
        retries a webhook that was not acknowledged). Fails on any answer but 200 and 503."""
        body, headers = signed_delivery(payload, self.app_secret)
        result = Delivery(status=0, attempts=0)
        deadline = time.monotonic() + give_up_after
        while True:
            result.attempts += 1
            try:
                response = self.post(body, headers)
                status: int | str = response.status_code
            except httpx.TransportError as exc:
                status = type(exc).__name__
            result.statuses[status] += 1
            with self._lock:
                self.seen[status] += 1
            if status == 200:
                result.status = 200
                return result
            assert status == 503 or isinstance(status, str), f"webhook answered {status}"
            if time.monotonic() > deadline:
                pytest.fail(f"webhook not accepted within {give_up_after}s: {result.statuses}")
            time.sleep(pause)

    def message(
        self, text: str, *, wamid: str | None = None, wa_id: str = "34600000001"
    ) -> tuple[str, dict[str, Any]]:
        """A text message payload (and its wamid) for this stack's phone number."""
        wamid = wamid or new_wamid()
        payload = text_message_payload(self.phone_number_id, text, wa_id=wa_id, wamid=wamid)
        return wamid, payload


def status_payload(
    phone_number_id: str, updates: Iterable[tuple[str, str]], recipient_id: str
) -> dict[str, Any]:
    """One webhook carrying the status updates ``(wamid, status)``, in that order."""
    statuses = [
        {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient_id,
            "conversation": {"id": "c" + wamid[-12:], "origin": {"type": "service"}},
            "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
        }
        for wamid, status in updates
    ]
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000001",
                                "phone_number_id": phone_number_id,
                            },
                            "statuses": statuses,
                        },
                    }
                ],
            }
        ],
    }


# -- counting -------------------------------------------------------------------------------


@dataclass
class Tally:
    """Messages sent to the bot (wamid -> expected answer) against replies Meta received."""

    name: str
    expected: dict[str, str | None] = field(default_factory=dict)

    def add(self, wamid: str, answer: str | None) -> None:
        self.expected[wamid] = answer

    @property
    def sent(self) -> int:
        return len(self.expected)

    def replies(self, meta: FakeMeta) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {w: [] for w in self.expected}
        for reply in meta.sent():
            if reply["context_message_id"] in found:
                found[reply["context_message_id"]].append(reply)
        return found

    def counts(self, meta: FakeMeta) -> dict[str, int]:
        replies = self.replies(meta)
        answered = sum(1 for r in replies.values() if r)
        wrong = sum(
            1
            for wamid, r in replies.items()
            for reply in r
            if self.expected[wamid] is not None and reply["text"] != self.expected[wamid]
        )
        return {
            "sent": self.sent,
            "answered": answered,
            "duplicates": sum(len(r) for r in replies.values()) - answered,
            "wrong_text": wrong,
        }

    def wait_answered(self, meta: FakeMeta, *, timeout: float) -> dict[str, int]:
        wait_until(
            lambda: self.counts(meta)["answered"] >= self.sent,
            timeout=timeout,
            interval=0.25,
            what=lambda: f"{self.name}: every message answered ({self.counts(meta)})",
        )
        return self.counts(meta)

    def settle_and_check(
        self, meta: FakeMeta, *, settle: float = 2.0, **extra: Any
    ) -> dict[str, int]:
        """Give late duplicates time to show up, record the counts, assert exactly once."""
        time.sleep(settle)
        counts = self.counts(meta)
        SUMMARY.append({"drill": self.name, **counts, **extra})
        assert counts["answered"] == counts["sent"], counts
        assert counts["duplicates"] == 0, counts
        assert counts["wrong_text"] == 0, counts
        return counts


def questions(n: int) -> list[tuple[str, str]]:
    """``n`` (question, answer) pairs cycling through the English FAQs."""
    pairs = list(QUESTIONS.items())
    return [pairs[i % len(pairs)] for i in range(n)]


def wa_id(i: int) -> str:
    """A distinct WhatsApp user per message: one conversation each."""
    return f"3460{i:07d}"


def send_questions(webhook: Webhook, tally: Tally, n: int, offset: int) -> None:
    """Deliver ``n`` FAQ questions from distinct senders, each expected to get its answer."""
    for i, (question, answer) in enumerate(questions(n)):
        wamid, payload = webhook.message(question, wa_id=wa_id(offset + i))
        tally.add(wamid, answer)
        webhook.deliver(payload)


def db_rows(stack: LocalStack, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of the stack's database (SQLite or PostgreSQL); ``?`` marks the parameters."""
    url = stack.env["DATABASE_URL"]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            return list(conn.execute(query, args).fetchall())
    import psycopg2

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    with contextlib.closing(psycopg2.connect(dsn)) as pg, pg.cursor() as cur:
        cur.execute(query.replace("?", "%s"), args)
        rows = list(cur.fetchall())
        pg.rollback()
        return rows


# -- the summary ------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SUMMARY:
        return
    terminalreporter.section("fault drills")
    for row in SUMMARY:
        extra = {k: v for k, v in row.items() if k not in {"drill", "sent", "answered",
                                                           "duplicates", "wrong_text"}}
        terminalreporter.write_line(
            f"{row['drill']:<34} sent={row['sent']:<4} answered={row['answered']:<4} "
            f"duplicates={row['duplicates']:<3} wrong={row['wrong_text']:<3} "
            + " ".join(f"{k}={v}" for k, v in extra.items())
        )
