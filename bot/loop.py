"""The worker's event loop: one per process, in a thread of its own, shared by every task.

The worker runs Celery's ``threads`` pool: each task runs in one of ``--concurrency`` threads
of one process. The bot's work is asynchronous (asyncpg or aiosqlite, httpx, redis.asyncio) and
its clients belong to the event loop that opened them, so every task thread hands its coroutine
to one loop that runs in a daemon thread (:meth:`LoopThread.run`) and waits for the result. All
tasks share one database pool, one HTTP connection pool per API and one Redis pool, each used
by the one loop that made it; an extra concurrent task costs a thread and a coroutine, not a
copy of every client and library (tests/bench/README.md, footprint).

The loop starts on first use, and again in a process that was forked from one that had it
(prefork children inherit no thread). :meth:`LoopThread.stop` runs a last coroutine (closing the
clients) and ends the thread. A coroutine running *on* the loop must never call
:meth:`LoopThread.run`, which would wait for itself: that raises ``RuntimeError``.

The coroutine runs in a copy of the caller's ``contextvars`` context, but not in its thread:
thread-local state such as Celery's ``Task.request`` must be read before handing it over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running forever in a daemon thread (see the module doc)."""

    def __init__(self, name: str = "released-io") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _current(self) -> bool:
        return (
            self._loop is not None
            and self._pid == os.getpid()
            and self._thread is not None
            and self._thread.is_alive()
            and not self._loop.is_closed()
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop of this process (started now if needed)."""
        with self._lock:
            if not self._current():
                self._start()
            assert self._loop is not None
            return self._loop

    @property
    def started(self) -> bool:
        """Whether this process's loop runs."""
        return self._current()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=main, name=self.name, daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        ``timeout``: seconds after which the coroutine is cancelled and ``TimeoutError``
        raised. Raises ``RuntimeError`` when called from the loop's own thread.
        """
        loop = self.loop
        if self.on_loop():
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop: await instead")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"coroutine still running after {timeout}s: cancelled") from None
        except BaseException:
            future.cancel()  # interrupted while waiting: do not leave it running unowned
            raise

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop's thread as soon as the loop gets to it."""
        self.loop.call_soon_threadsafe(callback)

    def stop(
        self,
        closing: Callable[[], Coroutine[Any, Any, object]] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Run ``closing()`` on the loop (errors are logged), then stop and close the loop.

        A no-op when this process has no loop (never started, or inherited through a fork).
        """
        with self._lock:
            if not self._current():
                self._loop = self._thread = None
                return
            loop, thread = self._loop, self._thread
            assert loop is not None and thread is not None
        if closing is not None:
            try:
                asyncio.run_coroutine_threadsafe(closing(), loop).result(timeout)
            except Exception:  # shutting down: nothing more to do about it
                log.debug("error while closing the loop's clients", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        with self._lock:
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
