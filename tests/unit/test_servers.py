"""The suite's real servers answer: a guard that fixtures start what they claim to start."""

from __future__ import annotations

import psycopg2
import redis


def test_redis_server_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("released:test", "1")
    assert client.get("released:test") == b"1"
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_postgres_database_is_isolated(postgres_db: str) -> None:
    conn = psycopg2.connect(postgres_db)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (1,)
    conn.close()
