"""Released's bot: the data plane every client runs.

Layout (import downward only):

- ``bot.core``      settings, logging, metrics: no knowledge of WhatsApp or OpenAI.
- ``bot.whatsapp``  Meta's Cloud API: webhook payload models, signatures, the Graph API client.
- ``bot.llm``       OpenAI Responses API client, the Redis token bucket, FAQ grounding/fallback.
- ``bot.storage``   SQLModel models, engine/session, repository, Alembic migrations.
- ``bot.service``   what the bot does with a message (answer, send, store), used by tasks.
- ``bot.api``       FastAPI routes; ``bot.main`` builds the app.
- ``bot.tasks``     the Celery application and tasks (``released-worker``).
- ``bot.worker``    the worker's entry point (``bot.tasks`` without Celery's command line).
- ``bot.cli``       the ``released`` command.
"""

__version__ = "0.1.0"
