"""Shared machinery for the fake HTTP services: running them and controlling them.

A fake is a Starlette app plus a state object. It runs either in this process (uvicorn in a
daemon thread, :meth:`FakeServer.start`) or in a child process (:meth:`FakeServer.spawn`, which
runs ``python -m released.fakes.<name> --port 0`` and reads the port the child prints). Either way
the control methods talk to the ``/_fake/...`` endpoints over HTTP, so a test gets the same API
for both, and :meth:`FakeServer.attach` controls a fake that some other process started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "FAKE_LISTENING "


def random_id(prefix: str, nbytes: int = 12) -> str:
    """A random identifier like OpenAI's and Meta's (``prefix`` + hex)."""
    return f"{prefix}{secrets.token_hex(nbytes)}"


def now() -> int:
    return int(time.time())


When = datetime | date | str | int | float


def parse_when(value: When) -> float:
    """Seconds since the epoch from a datetime, a date (midnight UTC), an ISO 8601 string
    (``"2027-01-15"``, ``"2027-01-15T10:00:00Z"``; naive means UTC) or a number."""
    if isinstance(value, bool):
        raise ValueError("a time cannot be a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class Clock:
    """The fake service's idea of "now": real time, shifted or frozen by the tests.

    Everything that changes over time in a fake (Graph version sunsets, model shutdowns, token
    expiry, vector-store indexing, the 24-hour customer-service window, timestamps it writes)
    reads :meth:`now`, so a test can move to 2027-01-15 and see what the real service does then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._frozen: float | None = None

    def now(self) -> float:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return time.time() + self._offset

    def set(self, when: When, *, freeze: bool = False) -> None:
        at = parse_when(when)
        with self._lock:
            if freeze:
                self._frozen = at
            else:
                self._frozen = None
                self._offset = at - time.time()

    def advance(self, seconds: float) -> None:
        with self._lock:
            if self._frozen is not None:
                self._frozen += seconds
            else:
                self._offset += seconds

    def real(self) -> None:
        with self._lock:
            self._offset, self._frozen = 0.0, None

    def snapshot(self) -> dict[str, Any]:
        at = self.now()
        with self._lock:
            return {"now": at, "iso": iso(at), "frozen": self._frozen is not None,
                    "offset": self._offset}


def clock_route(clock: Clock) -> Route:
    """``GET|POST /_fake/clock``: read the clock; set it with ``{"at": when, "freeze": bool}``,
    move it with ``{"advance": seconds}``, go back to real time with ``{"real": true}``."""

    async def handler(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            try:
                if body.get("real"):
                    clock.real()
                if body.get("at") is not None:
                    clock.set(body["at"], freeze=bool(body.get("freeze", False)))
                if body.get("advance"):
                    clock.advance(float(body["advance"]))
            except (TypeError, ValueError) as exc:
                return JSONResponse({"detail": f"bad clock setting: {exc}"}, status_code=400)
        return JSONResponse(clock.snapshot())

    return Route("/_fake/clock", handler, methods=["GET", "POST"])


def bind_socket(port: int = 0, host: str = HOST) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0 picks a free port), or on ``host``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def sleep_unless_stopping(seconds: float, stopping: threading.Event) -> None:
    """Sleep ``seconds`` but return early when the server is shutting down."""
    deadline = time.monotonic() + seconds
    while not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.05))


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot install signal handlers
        return None


def make_uvicorn_config(app: Starlette, *, own_process: bool = False) -> uvicorn.Config:
    """uvicorn settings. In a test process uvicorn must not touch the global logging setup
    (its defaults reconfigure the ``uvicorn.*`` loggers that the bot's own tests inspect), so
    only a separate process gets the quiet logging configuration."""
    if own_process:
        return uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=5,
        )
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        access_log=True,  # False would strip the handlers of the global "uvicorn.access" logger
        lifespan="off",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=5,
    )


class FakeServer:
    """Base of :class:`~released.fakes.FakeMeta` and :class:`~released.fakes.FakeOpenAI`.

    Subclasses set ``module`` (for ``python -m``), ``path_prefix`` (the API path appended to the
    root URL to form :attr:`url`) and implement :meth:`build_app`.
    """

    module: ClassVar[str] = ""
    name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        self.port: int | None = None
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._client: httpx.Client | None = None
        self._attached_root: str | None = None

    # -- to be provided by subclasses ---------------------------------------------------------

    def build_app(self) -> Starlette:
        raise NotImplementedError

    @property
    def path_prefix(self) -> str:
        raise NotImplementedError

    def cli_args(self) -> list[str]:
        """Arguments for the child process that reproduce this object's configuration."""
        return []

    # -- addresses ----------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        if self._attached_root is not None:
            return self._attached_root
        if self.port is None:
            raise RuntimeError(f"{self.name} is not running")
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL that the code under test is configured with."""
        return self.root_url + self.path_prefix

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._attached_root is not None:
            return True
        return self._thread is not None and self._thread.is_alive()

    # -- in-process ---------------------------------------------------------------------------

    def start(self, port: int = 0, timeout: float = 10.0) -> Self:
        """Serve in a daemon thread on 127.0.0.1 (a free port unless ``port`` is given)."""
        if self.running:
            return self
        self.stopping.clear()
        sock = bind_socket(port)
        self.port = sock.getsockname()[1]
        server = _Server(make_uvicorn_config(self.build_app()))
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread or the child process (whichever this object started)."""
        self.stopping.set()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._server = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- separate process ---------------------------------------------------------------------

    @classmethod
    def spawn(cls, *args: Any, timeout: float = 20.0, **kwargs: Any) -> Self:
        """Run the fake in a child process (``python -m <module> --port 0 ...``).

        Accepts the constructor's arguments. Returns an object with the same control API;
        :meth:`stop` terminates the child.
        """
        self = cls(*args, **kwargs)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                cls.module,
                "--port",
                "0",
                "--parent-pid",
                str(os.getpid()),
                *self.cli_args(),
            ],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{cls.name} child process did not start")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            line = proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                self.port = int(line.split()[1])
                return self

    @classmethod
    def attach(cls, url: str) -> Self:
        """Control a fake that is already running elsewhere, given its :attr:`url`
        (or its root URL). :meth:`stop` then only closes the HTTP client."""
        self = cls()
        parsed = httpx.URL(url)
        self._attached_root = f"{parsed.scheme}://{parsed.host}:{parsed.port}"
        self.port = parsed.port
        return self

    # -- control over HTTP --------------------------------------------------------------------

    @property
    def control(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.root_url + "/_fake", timeout=10.0)
        return self._client

    def _get(self, path: str, **params: Any) -> Any:
        response = self.control.get(path, params={k: v for k, v in params.items() if v is not None})
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: Any = None) -> Any:
        response = self.control.post(path, json=body if body is not None else {})
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Forget everything recorded and scripted; configuration is kept."""
        self._post("/reset")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (see the subclass); returns the full configuration."""
        result: dict[str, Any] = self._post("/config", settings)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/config")
        return result

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer (not the control endpoints) by ``seconds``."""
        self._post("/latency", {"seconds": seconds})

    def calls(self) -> dict[str, int]:
        """Number of API calls per endpoint, keyed like ``"POST /v1/responses"``."""
        result: dict[str, int] = self._get("/calls")
        return result

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every API request received (oldest first): ``method``, ``path``, ``endpoint``,
        ``query``, ``headers`` (authorization redacted), ``body`` (JSON or null), ``status``."""
        result: list[dict[str, Any]] = self._get("/requests", endpoint=endpoint)
        return result

    def script_errors(self, errors: Sequence[Any]) -> None:
        """Queue error answers for the next API calls (see the subclass for the presets)."""
        self._post("/errors", {"errors": list(errors)})

    def pending_errors(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/errors")
        return result

    def clear_errors(self) -> None:
        self._post("/errors", {"errors": [], "replace": True})

    # -- the clock ----------------------------------------------------------------------------

    def clock(self) -> dict[str, Any]:
        """``{"now": epoch seconds, "iso": ..., "frozen": bool, "offset": seconds}``."""
        result: dict[str, Any] = self._get("/clock")
        return result

    def now(self) -> float:
        """The fake's current time (epoch seconds)."""
        return float(self.clock()["now"])

    def set_clock(self, when: When, *, freeze: bool = False) -> dict[str, Any]:
        """Move the fake's clock to ``when`` (a datetime, date, ISO string or epoch seconds);
        time keeps flowing from there unless ``freeze``."""
        at = when.isoformat() if isinstance(when, datetime | date) else when
        result: dict[str, Any] = self._post("/clock", {"at": at, "freeze": freeze})
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the fake's clock forward by ``seconds``."""
        result: dict[str, Any] = self._post("/clock", {"advance": seconds})
        return result

    def real_clock(self) -> dict[str, Any]:
        """Back to real time."""
        result: dict[str, Any] = self._post("/clock", {"real": True})
        return result

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; return it, or raise
        :class:`TimeoutError`. E.g. ``fake.wait_for(lambda: fake.sent())``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)


def serve_cli(
    name: str,
    factory: Callable[[argparse.Namespace], FakeServer],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    argv: Sequence[str] | None = None,
) -> None:
    """Entry point of ``python -m released.fakes.<name>``: serve in the foreground until killed.

    Prints ``FAKE_LISTENING <port> <url>`` on stdout once the socket is bound.
    """
    parser = argparse.ArgumentParser(prog=f"python -m released.fakes.{name}")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument(
        "--host",
        default=HOST,
        help="address to listen on (default 127.0.0.1; 0.0.0.0 only inside a pod's own network)",
    )
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process is gone"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    fake = factory(args)
    sock = bind_socket(args.port, args.host)
    fake.port = sock.getsockname()[1]
    print(f"{READY_PREFIX}{fake.port} {fake.url}", flush=True)
    server = uvicorn.Server(make_uvicorn_config(fake.build_app(), own_process=True))
    if args.parent_pid is not None:
        parent_pid = int(args.parent_pid)

        def watch_parent() -> None:
            # An orphaned fake (the test run was killed) must not keep running forever.
            while not server.should_exit:
                if os.getppid() != parent_pid:
                    server.should_exit = True
                    return
                time.sleep(0.5)

        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    fake.stopping.set()


class BaseState:
    """Thread-safe recordings and scripts shared by both fakes.

    The server thread and the test thread both touch it, so every access holds ``lock``.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.lock = threading.RLock()
        self.clock = Clock()
        self.latency = latency
        self.calls: dict[str, int] = {}
        self.request_log: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.rate_window: list[float] = []

    def reset_recordings(self) -> None:
        with self.lock:
            self.calls.clear()
            self.request_log.clear()
            self.errors.clear()
            self.rate_window.clear()

    def over_rate(self, limit: int | None, window: float) -> float | None:
        """Count one request against ``limit`` per ``window`` seconds of the clock; return
        the seconds until one more would fit when over it (the request is then not counted)."""
        if not limit:
            return None
        now = self.clock.now()
        with self.lock:
            self.rate_window = [t for t in self.rate_window if now - t < window]
            if len(self.rate_window) >= limit:
                return max(0.001, window - (now - self.rate_window[0]))
            self.rate_window.append(now)
        return None

    def count(self, endpoint: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
            self.request_log.append(entry)

    def take_error(self, endpoint: str) -> dict[str, Any] | None:
        """Pop the first scripted error that applies to ``endpoint`` (None when none does).

        A scripted error applies when its ``endpoint`` is missing/None or is a substring of the
        endpoint key (e.g. ``"messages"`` matches ``"POST /{version}/{phone_number_id}/messages"``,
        ``"/v1/responses"`` matches ``"POST /v1/responses"``). ``times`` (default 1) repeats it.
        """
        with self.lock:
            for i, spec in enumerate(self.errors):
                target = spec.get("endpoint")
                if target and target not in endpoint:
                    continue
                times = int(spec.get("times", 1))
                if times <= 1:
                    self.errors.pop(i)
                else:
                    self.errors[i] = {**spec, "times": times - 1}
                return dict(spec)
        return None


REDACTED_HEADERS = {"authorization", "cookie"}


def loggable_headers(headers: Any) -> dict[str, str]:
    return {k: ("<redacted>" if k.lower() in REDACTED_HEADERS else v) for k, v in headers.items()}
