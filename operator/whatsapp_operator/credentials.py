"""Key names of the generated ``NAME-credentials`` Secret, shared by builders and rotation.

The operator generates this Secret (``builders.generate_credentials``; the database keys are
added by the ``database`` part of a reconciliation) and rotates it (``rotation``).
``builders`` maps its keys to the bot's environment:

==========================  ====================================  ===============================
key                         what                                  bot environment variable
==========================  ====================================  ===============================
``redisPassword``           Redis password the pods use           in ``REDIS_URL`` /
                                                                  ``CELERY_BROKER_URL``
``redisPasswordPrevious``   during a rotation only: the old one,  (Redis server only: accepts
                            still accepted by the Redis server    both passwords)
``verifyToken``             Meta webhook verify token             ``META_VERIFY_TOKEN``
``verifyTokenPrevious``     during a rotation only: the old one   ``META_VERIFY_TOKEN_PREVIOUS``
``adminToken``              bearer token of the web tier's admin  ``ADMIN_TOKEN`` (web only)
                            API (``/admin/``, never routed by the
                            Ingress; ``released conversations``)
``adminTokenPrevious``      during a rotation only: the old one,  ``ADMIN_TOKEN_PREVIOUS``
                            still accepted by the web tier        (web only)
``safetyIdentifierSalt``    key of the hash that identifies a     ``SAFETY_IDENTIFIER_SALT``
                            conversation to OpenAI (never the     (worker only)
                            phone number); **not rotated**:
                            changing it would change every
                            conversation's identifier
``databaseUrl``             provisioned databases only: the URL   ``DATABASE_URL``
                            of the *current* role
``databaseRole``            the current PostgreSQL login role     (none)
``databaseRolePrevious``    during a rotation only: the old role  (none)
``rotationId``              id of the rotation that produced the  (none; makes a rotation step
                            current values                        idempotent)
==========================  ====================================  ===============================

Clients of the admin API read the token with :func:`admin_token_for_clients`: during a rotation
the previous token is the one every web pod accepts (pods not rolled yet know only it; rolled
pods accept both), and once the rotation is done the current one is (pods that have not rolled
off the previous values accept both).

This module has no imports so that any layer may use it.
"""

# ruff: noqa: S105  (these are key names, not passwords)

REDIS_PASSWORD = "redisPassword"
REDIS_PASSWORD_PREVIOUS = "redisPasswordPrevious"
VERIFY_TOKEN = "verifyToken"
VERIFY_TOKEN_PREVIOUS = "verifyTokenPrevious"
ADMIN_TOKEN = "adminToken"
ADMIN_TOKEN_PREVIOUS = "adminTokenPrevious"
SAFETY_IDENTIFIER_SALT = "safetyIdentifierSalt"
DATABASE_URL = "databaseUrl"
DATABASE_ROLE = "databaseRole"
DATABASE_ROLE_PREVIOUS = "databaseRolePrevious"
ROTATION_ID = "rotationId"

#: Keys present only between the start and the end of a rotation.
PREVIOUS_KEYS: tuple[str, ...] = (
    REDIS_PASSWORD_PREVIOUS,
    VERIFY_TOKEN_PREVIOUS,
    ADMIN_TOKEN_PREVIOUS,
    DATABASE_ROLE_PREVIOUS,
)


def admin_token_for_clients(data: dict[str, str]) -> str | None:
    """The admin token a client should present now, given the Secret's decoded data: the
    previous one while a rotation is under way (every web pod accepts it), else the current."""
    return data.get(ADMIN_TOKEN_PREVIOUS) or data.get(ADMIN_TOKEN)
