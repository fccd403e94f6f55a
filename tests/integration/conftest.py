"""Fixtures of the worker's integration tests: the fakes of Meta and OpenAI (one each per
module) and the agent's settings on a fresh PostgreSQL database with the real Redis.

The Celery tasks run eagerly (``Task.apply``), in the test's thread, on the per-process event
loop of ``bot.tasks`` like in a worker; ``settings`` points ``bot.tasks`` at this agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

import bot.tasks as tasks
from bot.core.config import Settings
from bot.storage.db import run_migrations
from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN
from released.fakes.openai import DEFAULT_API_KEY
from tests.integration.worker_support import FAQS, PHONE


@pytest.fixture(scope="module")
def meta() -> Iterator[FakeMeta]:
    with FakeMeta() as fake:
        yield fake


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def settings(
    postgres_db: str,
    redis_url: str,
    meta: FakeMeta,
    oai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    faqs = tmp_path / "faqs.json"
    faqs.write_text(json.dumps(FAQS), encoding="utf-8")
    s = Settings(
        phone_number_id=PHONE,
        database_url=postgres_db,
        redis_url=redis_url,
        meta_graph_url=meta.url,
        meta_access_token=SecretStr(DEFAULT_ACCESS_TOKEN),
        openai_base_url=oai.url,
        openai_api_key=SecretStr(DEFAULT_API_KEY),
        openai_rate_limit_per_second=100,
        user_rate_limit_per_minute=60_000,  # one user asks everything here; fairness has its test
        faqs_path=faqs,
        fallback_message="Thanks! A person will answer soon.",
        max_task_retries=4,
        openai_max_retries=2,
    )
    run_migrations(s)
    meta.reset()
    oai.reset()
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    yield s
    tasks.shutdown()
