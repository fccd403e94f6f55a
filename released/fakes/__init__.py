"""Local fakes of Meta's WhatsApp Cloud API and the OpenAI API for tests and demos.

``FakeMeta`` / ``FakeOpenAI``: ``.start()`` serves in a thread, ``.spawn()`` in a child process,
``.attach(url)`` controls one started elsewhere; all three share the same control methods.
``released.fakes.webhooks`` builds the webhook payloads Meta posts today. See
``released/fakes/README.md``.

The names are imported lazily so that ``python -m released.fakes.meta`` does not import the module
twice (once through this package and once as ``__main__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from released.fakes.meta import FakeMeta, sign
    from released.fakes.openai import FakeOpenAI
    from released.fakes.webhooks import WhatsAppUser, status_event, text_message_event

__all__ = ["FakeMeta", "FakeOpenAI", "WhatsAppUser", "sign", "status_event", "text_message_event"]

_HOMES = {
    "FakeMeta": "released.fakes.meta",
    "sign": "released.fakes.meta",
    "status_event": "released.fakes.webhooks",
    "text_message_event": "released.fakes.webhooks",
    "WhatsAppUser": "released.fakes.webhooks",
    "FakeOpenAI": "released.fakes.openai",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
