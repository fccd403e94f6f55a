"""The bot as real processes: uvicorn, a Celery worker, Redis and the fakes (``LocalStack``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta, FakeOpenAI


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(
        workdir=workdir,
        web_port=0,
        with_purge=False,
        worker_concurrency=2,
        # A crashed worker's unacknowledged task is handed out again after this many seconds.
        extra_env={"CELERY_VISIBILITY_TIMEOUT": "6", "LOG_FORMAT": "json"},
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def meta(stack: LocalStack) -> FakeMeta:
    fake = FakeMeta.attach(stack.urls["fake_meta"])
    fake.reset()
    return fake


@pytest.fixture
def openai_fake(stack: LocalStack) -> FakeOpenAI:
    fake = FakeOpenAI.attach(stack.urls["fake_openai"])
    fake.reset()
    return fake
