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
``databaseUrl``             provisioned databases only: the URL   ``DATABASE_URL``
                            of the *current* role
``databaseRole``            the current PostgreSQL login role     (none)
``databaseRolePrevious``    during a rotation only: the old role  (none)
``rotationId``              id of the rotation that produced the  (none; makes a rotation step
                            current values                        idempotent)
==========================  ====================================  ===============================

This module has no imports so that any layer may use it.
"""

# ruff: noqa: S105  (these are key names, not passwords)

REDIS_PASSWORD = "redisPassword"
REDIS_PASSWORD_PREVIOUS = "redisPasswordPrevious"
VERIFY_TOKEN = "verifyToken"
VERIFY_TOKEN_PREVIOUS = "verifyTokenPrevious"
DATABASE_URL = "databaseUrl"
DATABASE_ROLE = "databaseRole"
DATABASE_ROLE_PREVIOUS = "databaseRolePrevious"
ROTATION_ID = "rotationId"

#: Keys present only between the start and the end of a rotation.
PREVIOUS_KEYS: tuple[str, ...] = (
    REDIS_PASSWORD_PREVIOUS,
    VERIFY_TOKEN_PREVIOUS,
    DATABASE_ROLE_PREVIOUS,
)
