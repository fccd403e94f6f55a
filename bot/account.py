"""The agent's Meta account health, shared by its workers in Redis, and the messages held
while Meta refuses the account.

When a Graph API call fails with an account problem (``released.providers.meta``: token 190,
permission 10/200-299, policy block 368, locked or unregistered account), no send can succeed
until a person fixes it. The worker that meets the error raises the flag
(``released:meta-account:{phone_number_id}``, a Redis hash with the error's kind, code, title
and time); from then on every worker:

- **holds** each new message instead of spending a model call on an answer it cannot send: its
  wamid goes into a sorted set ``released:meta-held:{phone_number_id}`` scored by the time the
  user sent it, the message without its text into ``released:meta-held-payloads:{phone_number_id}``
  (the text stays in the database's inbox, where the resumed task finds it), and it is counted
  ``released_messages_held_total{held}``;
- **probes** the account at most every ``META_HEALTH_PROBE_SECONDS`` (one worker at a time,
  ``GET /{phone_number_id}`` with the token; the task ``bot.tasks.check_meta_account``, which
  the workers queue every 5 minutes, probes too): when the token works again the flag is
  cleared and the held messages are queued again (``resumed``), those still inside WhatsApp's
  24-hour customer-service window being answered as usual;
- records a held message whose window closed meanwhile as a **failed** reply with the reason
  (``expired``), so nothing is lost silently.

Held entries live no longer than the 24-hour window (the key expires a day after the last
write, and expired entries are removed when they are recorded); they hold no message text.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bot.whatsapp.events import InboundMessage
from released.providers.meta import SERVICE_WINDOW_SECONDS, GraphErrorInfo

FLAG_PREFIX = "released:meta-account"

# Only commands the agent's Redis user is granted (whatsapp_operator.builders.workloads
# REDIS_ACL_COMMANDS): scripts run by EVALSHA, no HGETALL/ZCARD/HINCRBY.

# KEYS: held set, payload hash. ARGV: wamid, score, payload, generation. Adds or refreshes the
# entry under a new generation.
_HOLD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'msg:' .. ARGV[1], ARGV[3], 'gen:' .. ARGV[1], ARGV[4])
return 1
"""
# KEYS: held set, payload hash. ARGV: wamid, generation seen. Drops the entry only when it was
# not held again since (same generation).
_DROP = """
local gen = redis.call('HGET', KEYS[2], 'gen:' .. ARGV[1]) or '-'
if gen ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], 'gen:' .. ARGV[1], 'msg:' .. ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
HELD_PREFIX = "released:meta-held"
PROBE_PREFIX = "released:meta-probe"


@dataclass(frozen=True, slots=True)
class AccountProblem:
    """Why Meta refuses the account: the error's kind, code and title, and since when."""

    kind: str
    code: int | None
    title: str | None
    since: float

    def reason(self) -> str:
        """A line for a failed message's ``error_title``."""
        code = f" {self.code}" if self.code is not None else ""
        return f"Meta refused the account ({self.kind}{code}): {self.title or 'no details'}"


class AccountHealth:
    """The flag, the held messages and the probe lock of one agent phone number."""

    def __init__(self, redis: Any, phone_number_id: str) -> None:
        self.redis = redis
        self.flag_key = f"{FLAG_PREFIX}:{phone_number_id}"
        self.held_key = f"{HELD_PREFIX}:{phone_number_id}"
        self.payload_key = f"{HELD_PREFIX}-payloads:{phone_number_id}"
        self.probe_key = f"{PROBE_PREFIX}:{phone_number_id}"
        self._hold = redis.register_script(_HOLD)
        self._drop = redis.register_script(_DROP)

    async def problem(self) -> AccountProblem | None:
        """The current problem, ``None`` while the account works."""
        kind, code, title, since = (
            None if v is None else _text(v)
            for v in await self.redis.hmget(self.flag_key, "kind", "code", "title", "since")
        )
        if kind is None:
            return None
        return AccountProblem(
            kind=kind,
            code=int(code) if code and code.isdigit() else None,
            title=title or None,
            since=float(since or 0),
        )

    async def flag(self, info: GraphErrorInfo) -> bool:
        """Raise the flag for ``info``; ``True`` when it was not raised before."""
        fresh = await self.redis.hget(self.flag_key, "since") is None
        mapping = {
            "kind": info.kind.value,
            "code": "" if info.code is None else str(info.code),
            "title": (info.title or "")[:300],
        }
        if fresh:
            mapping["since"] = repr(time.time())
        await self.redis.hset(self.flag_key, mapping=mapping)
        return fresh

    async def clear(self) -> bool:
        """Lower the flag; ``True`` when it was raised."""
        return bool(await self.redis.delete(self.flag_key))

    async def claim_probe(self, interval: float) -> bool:
        """Whether this caller may probe now (at most one probe per ``interval`` seconds)."""
        ms = max(1, int(interval * 1000))
        return bool(await self.redis.set(self.probe_key, "1", nx=True, px=ms))

    async def hold(self, msg: InboundMessage) -> None:
        """Keep ``msg`` until the account works again (one entry per wamid; holding it again
        bumps its generation, see :meth:`drop_held`). Its text is not kept here: the resumed
        task reads the message from the database's inbox."""
        await self._hold(
            keys=[self.held_key, self.payload_key],
            args=[msg.wamid, str(msg.timestamp.timestamp()),
                  msg.model_dump_json(exclude={"text"}), uuid.uuid4().hex],
        )
        for key in (self.held_key, self.payload_key):
            await self.redis.expire(key, SERVICE_WINDOW_SECONDS + 3600)

    async def any_held(self) -> bool:
        """Whether any message is held."""
        return bool(await self.redis.zrange(self.held_key, 0, 0))

    async def held_count(self) -> int:
        """How many messages are held."""
        return len(await self.redis.zrange(self.held_key, 0, -1))

    async def peek_held(self, limit: int = 1000) -> list[tuple[str, InboundMessage]]:
        """Up to ``limit`` held messages, oldest first, each with the token :meth:`drop_held`
        needs (they stay held until dropped, so a crash loses none)."""
        wamids = await self.redis.zrange(self.held_key, 0, limit - 1)
        out: list[tuple[str, InboundMessage]] = []
        for raw in wamids:
            wamid = _text(raw)
            generation, payload = await self.redis.hmget(
                self.payload_key, f"gen:{wamid}", f"msg:{wamid}"
            )
            if payload is None:  # held by an older version, or half-expired: nothing to send
                await self.redis.zrem(self.held_key, wamid)
                continue
            token = f"{_text(generation) if generation is not None else '-'}:{wamid}"
            out.append((token, InboundMessage.model_validate(json.loads(_text(payload)))))
        return out

    async def drop_held(self, token: str) -> bool:
        """Forget a held message that was queued again, unless it was held again since it was
        peeked (its new task already ran into the refusal): then it stays held."""
        generation, _, wamid = token.partition(":")
        return bool(
            await self._drop(keys=[self.held_key, self.payload_key], args=[wamid, generation])
        )

    async def take_expired(self, now: float | None = None) -> list[InboundMessage]:
        """Remove and return the held messages older than the 24-hour window."""
        cutoff = (now if now is not None else time.time()) - SERVICE_WINDOW_SECONDS
        wamids = await self.redis.zrangebyscore(self.held_key, "-inf", cutoff)
        out: list[InboundMessage] = []
        for raw in wamids:
            wamid = _text(raw)
            payload = await self.redis.hget(self.payload_key, f"msg:{wamid}")
            if await self.redis.zrem(self.held_key, wamid):
                await self.redis.hdel(self.payload_key, f"gen:{wamid}", f"msg:{wamid}")
                if payload is not None:
                    out.append(InboundMessage.model_validate(json.loads(_text(payload))))
        return out
