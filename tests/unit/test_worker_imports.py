"""The worker loads only what it runs (issue 11): a fresh process that builds the worker the way
``python -m bot.worker`` does and answers a message through the model and the Graph API holds
neither the ``openai`` SDK (the bot calls the Responses API over ``httpx2``), nor a second HTTP
stack (``httpx``/``httpcore`` beside ``httpx2``), nor Celery's command line (``celery.bin``
and the ``amqp`` shell's ``click_repl``/``prompt_toolkit``). Together they cost about 40 MiB per
worker (tests/bench/README.md, footprint)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.config import Settings
from bot.storage.db import run_migrations
from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN
from released.fakes.openai import DEFAULT_API_KEY

PHONE = "106540352242922"
FORBIDDEN = ("openai", "httpx", "httpcore", "click_repl", "prompt_toolkit")

SCRIPT = """
import json, sys
from bot import worker
args = worker.parse_args(["--concurrency=2", "-n", "imports@%%h"])
from celery.utils.nodenames import default_nodename, host_format
from bot import tasks
w = tasks.app.Worker(hostname=host_format(default_nodename(args.hostname)),
                     pool_cls=tasks.app.conf.worker_pool, loglevel="WARNING",
                     concurrency=args.concurrency)
payload = {"wamid": "wamid.IMPORTS1", "phone_number_id": %(phone)r, "wa_id": "15551234567",
           "contact_name": "Ana", "kind": "text", "text": "What is Released?"}
result = tasks.process_message.apply(args=[payload]).result
tasks.shutdown()
print(json.dumps({"result": result, "pool": type(w.pool).__module__ if w.pool else None,
                  "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeMeta, FakeOpenAI]]:
    with FakeMeta() as meta, FakeOpenAI() as oai:
        yield meta, oai


def test_the_worker_loads_no_openai_sdk_second_http_stack_or_celery_cli(
    redis_url: str, tmp_path: Path, fakes: tuple[FakeMeta, FakeOpenAI]
) -> None:
    meta, oai = fakes
    database = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    run_migrations(Settings(database_url=database))
    faqs = tmp_path / "faqs.json"
    faqs.write_text(json.dumps([{"q": "What is Released?", "a": "Bots on Kubernetes."}]))
    env = {
        "PATH": "/usr/bin:/bin",
        "PHONE_NUMBER_ID": PHONE,
        "META_APP_SECRET": "0123456789abcdef0123456789abcdef",
        "META_VERIFY_TOKEN": "a-verify-token-for-this-test",
        "META_ACCESS_TOKEN": DEFAULT_ACCESS_TOKEN,
        "META_GRAPH_URL": meta.url,
        "OPENAI_API_KEY": DEFAULT_API_KEY,
        "OPENAI_BASE_URL": oai.url,
        "FAQS_PATH": str(faqs),
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/13",
        "DATABASE_URL": database,
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT % {"phone": PHONE}], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # It really answered, through the model and the Graph API.
    assert report["result"]["outcome"] == "replied", report["result"]
    assert report["result"]["source"] == "model"
    assert [m["context_message_id"] for m in meta.sent()] == ["wamid.IMPORTS1"]
    assert len(oai.response_requests()) == 1
    modules = report["modules"]
    assert "celery.concurrency.thread" in modules and "httpx2" in modules
    top = {m.split(".")[0] for m in modules}
    assert [m for m in FORBIDDEN if m in top] == []
    assert [m for m in modules if m.startswith("celery.bin")] == []
