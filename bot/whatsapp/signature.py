"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

Meta signs every webhook POST with the app secret. The web tier checks the signature over the
raw request bytes (never over re-serialized JSON) before it parses or stores anything. The tests
and the fake Meta server use :func:`sign` to produce the same header.
"""

from __future__ import annotations

import hashlib
import hmac

#: The HTTP header that carries the signature.
SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``: ``"sha256=<hex>"``."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def verify(body: bytes, header: str | None, app_secret: str) -> bool:
    """True when ``header`` is a valid signature of ``body`` under ``app_secret``.

    A missing or malformed header, or an empty secret, is never valid. The comparison runs in
    constant time (:func:`hmac.compare_digest`).
    """
    if not header or not app_secret:
        return False
    header = header.strip()
    if not header.lower().startswith(_PREFIX):
        return False
    given = _PREFIX + header[len(_PREFIX) :].lower()
    expected = sign(body, app_secret)
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii"))
