"""Storage: SQLModel tables, the async engine and sessions, the repository, migrations."""

from bot.storage.db import get_engine, run_migrations, run_migrations_async, session_scope
from bot.storage.models import Conversation, Direction, Message, MessageStatus

__all__ = [
    "Conversation",
    "Direction",
    "Message",
    "MessageStatus",
    "get_engine",
    "run_migrations",
    "run_migrations_async",
    "session_scope",
]
