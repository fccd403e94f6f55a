"""The worker's event loop (``bot.loop``): one loop per process shared by the task threads."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from bot.loop import LoopThread


@pytest.fixture
def io() -> Iterator[LoopThread]:
    thread = LoopThread("test-io")
    yield thread
    thread.stop()


def test_tasks_in_many_threads_share_one_loop_and_overlap(io: LoopThread) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    results: list[int] = []

    async def job(i: int) -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0.3)  # waiting, as on OpenAI or Meta
        return i

    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda i=i: results.append(io.run(job(i)))) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert sorted(results) == list(range(8))
    assert len(set(map(id, loops))) == 1  # one loop, so one set of clients
    assert elapsed < 8 * 0.3 / 2, "the eight waits did not overlap"


def test_a_client_made_on_the_loop_serves_every_thread(io: LoopThread) -> None:
    async def make() -> asyncio.Queue[int]:
        return asyncio.Queue()  # bound to the loop it is first used on, like a pool

    queue = io.run(make())

    async def put(i: int) -> None:
        await queue.put(i)

    for i in range(3):
        threading.Thread(target=io.run, args=(put(i),)).start()

    async def drain() -> list[int]:
        return sorted([await queue.get() for _ in range(3)])

    assert io.run(drain(), timeout=5) == [0, 1, 2]


def test_errors_reach_the_caller(io: LoopThread) -> None:
    async def fail() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        io.run(fail())


def test_a_hung_coroutine_is_cancelled_after_its_timeout(io: LoopThread) -> None:
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        io.run(hang(), timeout=0.2)
    assert cancelled.wait(5), "the coroutine kept running after the caller gave up"


def test_calling_run_from_the_loop_itself_is_refused(io: LoopThread) -> None:
    async def nested() -> None:
        async def inner() -> None:
            return None

        io.run(inner())

    with pytest.raises(RuntimeError, match="own loop"):
        io.run(nested())


def test_context_variables_follow_the_coroutine(io: LoopThread) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        return var.get()

    var.set("from the task thread")
    assert io.run(read()) == "from the task thread"


def test_stop_runs_the_closing_coroutine_and_a_later_run_starts_again(io: LoopThread) -> None:
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    async def loop_id() -> int:
        return id(asyncio.get_running_loop())

    first = io.run(loop_id())
    io.stop(close)
    assert closed == [True] and not io.started
    assert io.run(loop_id()) != first


def _child(io: LoopThread, out: multiprocessing.SimpleQueue[str]) -> None:
    async def hello() -> str:
        return "child answered"

    out.put(io.run(hello(), timeout=5))


def test_a_forked_child_gets_a_loop_of_its_own(io: LoopThread) -> None:
    async def nothing() -> None:
        return None

    io.run(nothing())  # the parent's loop runs in a thread the child will not have
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.SimpleQueue[str] = ctx.SimpleQueue()
    child = ctx.Process(target=_child, args=(io, out))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert out.get() == "child answered"
