"""Storage: SQLModel tables (``models``), the async engine and sessions and the migrations
(``db``), what the worker asks of the database (``repository``, ``inbox``), and what the web
tier writes on its request path without SQLAlchemy (``ingest``).

Nothing is imported here, so that the web tier loads only ``ingest`` and its driver.
"""
