"""Fault drills: the bot's real processes under faults; every message answered exactly once."""
