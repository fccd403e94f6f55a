"""Cross-cutting pieces of the bot: settings, logging and metrics."""
