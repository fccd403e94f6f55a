"""Alembic migrations of the bot's database (``released migrate`` runs them)."""
