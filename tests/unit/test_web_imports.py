"""The web tier loads only what it serves (issue 11): after building the app and serving a
signed webhook, a quarantined element, ``/readyz`` and ``/metrics``, a fresh process holds
neither Celery, nor the OpenAI client, nor SQLAlchemy and the ORM models. Each of them costs
megabytes per web process (tests/bench/README.md, footprint)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bot.core.config import Settings
from bot.storage.db import run_migrations

APP_SECRET = "0123456789abcdef0123456789abcdef"
FORBIDDEN = ("celery", "kombu", "billiard", "openai", "sqlalchemy", "sqlmodel", "alembic")

SCRIPT = """
import asyncio, json, sys
import httpx
from bot.main import create_app
from bot.whatsapp.simulate import signed_delivery, text_message_payload

async def main():
    app = create_app(setup_logging=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            payload = text_message_payload("106540352242922", "hello")
            value = payload["entry"][0]["changes"][0]["value"]
            value["messages"].append({"type": "text"})  # quarantined: no id
            body, headers = signed_delivery(payload, %(secret)r)
            codes = [(await client.post("/webhook", content=body, headers=headers)).status_code,
                     (await client.get("/readyz")).status_code,
                     (await client.get("/metrics")).status_code]
    print(json.dumps({"codes": codes, "modules": sorted({m.split(".")[0] for m in sys.modules})}))

asyncio.run(main())
"""


def test_the_web_tier_loads_no_celery_openai_or_sqlalchemy(redis_url: str, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    run_migrations(Settings(database_url=database))
    env = {
        "PATH": "/usr/bin:/bin",
        "PHONE_NUMBER_ID": "106540352242922",
        "META_APP_SECRET": APP_SECRET,
        "META_VERIFY_TOKEN": "a-verify-token-for-this-test",
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/12",
        "DATABASE_URL": database,
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT % {"secret": APP_SECRET}], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [200, 200, 200]
    assert "fastapi" in report["modules"] and "asyncpg" not in report["modules"]
    assert [m for m in FORBIDDEN if m in report["modules"]] == []
