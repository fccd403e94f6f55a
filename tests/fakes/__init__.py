"""Local fakes of Meta's WhatsApp Cloud API and the OpenAI API for tests and demos.

``FakeMeta`` / ``FakeOpenAI``: ``.start()`` serves in a thread, ``.spawn()`` in a child process,
``.attach(url)`` controls one started elsewhere; all three share the same control methods.
"""

from tests.fakes.meta import FakeMeta, sign, status_event, text_message_event
from tests.fakes.openai import FakeOpenAI

__all__ = ["FakeMeta", "FakeOpenAI", "sign", "status_event", "text_message_event"]
