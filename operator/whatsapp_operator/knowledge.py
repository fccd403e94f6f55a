"""The agent's OpenAI knowledge: its FAQs as a file in a vector store, for ``file_search``.

The bot answers with the Responses API and a ``file_search`` tool over one vector store per
agent. This module keeps that store in step with ``spec.faqs``, with the official ``openai`` SDK
(``AsyncOpenAI``; base URL and key from the agent's OpenAI Secret, so tests use the fake):

- :func:`faq_hash` is a stable SHA-256 of the normalized FAQs; the status records it
  (``status.knowledge.faqHash``) and nothing is called while it is unchanged.
- :func:`ensure_knowledge` uploads the FAQs as a JSON file (Files API, purpose ``assistants``),
  finds or creates the vector store ``released:<ns>/<name>`` (metadata ``released_agent``),
  attaches the file with attributes ``{"faq_hash": ...}``, waits (bounded) until the store has
  indexed it, then detaches and deletes every other file of the store, the previous one
  included. A wait that runs out raises :class:`TemporaryError`; the next call finds the
  attached file by its ``faq_hash`` attribute and resumes waiting instead of uploading again.
- :func:`delete_knowledge` deletes the store and its files, tolerating 404s.

- :func:`check_knowledge` reads whether the recorded store and file still exist (the periodic
  check); what is missing is rebuilt by :func:`ensure_knowledge`.

Calls, retries, timeouts and errors are :mod:`whatsapp_operator.openai_api`'s (OpenAI's error
policy from :mod:`released.providers.openai`; messages never carry text from a response body).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import unicodedata
from collections.abc import Mapping, Sequence
from contextlib import suppress
from enum import StrEnum
from typing import Any

from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from whatsapp_operator.errors import NotFoundError, PermanentError, TemporaryError
from whatsapp_operator.openai_api import (
    ERROR_CODE,
    SERVICE,
    OpenAIParams,
    Session,
    error_code,
    read,
    session,
)

__all__ = [
    "KnowledgeCheck",
    "KnowledgeState",
    "OpenAIParams",
    "check_knowledge",
    "delete_knowledge",
    "ensure_knowledge",
    "error_code",
    "faq_hash",
]
#: Bumped when the file format changes, so every agent's file is rebuilt once.
FORMAT_VERSION = "released-faqs-v1"
AGENT_METADATA_KEY = "released_agent"
HASH_ATTRIBUTE = "faq_hash"
#: At most this many vector stores are scanned when looking a store up by name.
MAX_STORES_SCANNED = 1000

FAQInput = Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]]


class KnowledgeState(BaseModel):
    """What the OpenAI side holds for an agent; stored as ``status.knowledge`` (camelCase)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    vector_store_id: str
    file_id: str | None = None
    faq_hash: str = Field(default="")

    def to_status(self) -> dict[str, Any]:
        """``{"vectorStoreId": ..., "fileId": ..., "faqHash": ...}``."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> KnowledgeState | None:
        """Parse ``status.knowledge``; None when absent or unusable."""
        if not data or not data.get("vectorStoreId"):
            return None
        try:
            return cls.model_validate(dict(data))
        except ValueError:
            return None


# -- FAQs -----------------------------------------------------------------------------------


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFC", str(text)).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def normalize_faqs(faqs: FAQInput) -> list[tuple[str, str]]:
    """``[(q, a)]`` from tuples or ``{"q", "a"}`` / ``{"question", "answer"}`` mappings,
    NFC-normalized, stripped, line endings unified; empty pairs dropped; order kept."""
    pairs: list[tuple[str, str]] = []
    for item in faqs:
        if isinstance(item, Mapping):
            q = item.get("q", item.get("question", ""))
            a = item.get("a", item.get("answer", ""))
        else:
            q, a = item
        q, a = _norm(q or ""), _norm(a or "")
        if q or a:
            pairs.append((q, a))
    return pairs


def faq_hash(faqs: FAQInput) -> str:
    """Stable SHA-256 (hex) of the normalized FAQs (and the file format version)."""
    payload = json.dumps(
        [FORMAT_VERSION, normalize_faqs(faqs)], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def faq_file_content(faqs: FAQInput) -> bytes:
    """The uploaded file: a readable JSON list of ``{"q", "a"}``."""
    items = [{"q": q, "a": a} for q, a in normalize_faqs(faqs)]
    return (json.dumps(items, ensure_ascii=False, indent=2) + "\n").encode()


def store_name(agent_key: str) -> str:
    """The vector store's name for agent ``ns/name``."""
    return f"released:{agent_key}"


# -- OpenAI calls ---------------------------------------------------------------------------


async def _retrieve_store(s: Session, store_id: str) -> str | None:
    try:
        store = await s.call(
            "read the vector store", lambda: s.client.vector_stores.retrieve(store_id)
        )
    except NotFoundError:
        return None
    return None if getattr(store, "status", None) == "expired" else store.id


async def _find_store(s: Session, agent_key: str) -> str | None:
    name = store_name(agent_key)

    async def scan() -> str | None:
        scanned = 0
        async for store in s.client.vector_stores.list(limit=100, order="desc"):
            scanned += 1
            metadata = store.metadata or {}
            if (
                store.name == name
                and metadata.get(AGENT_METADATA_KEY, agent_key) == agent_key
                and getattr(store, "status", None) != "expired"
            ):
                return store.id
            if scanned >= MAX_STORES_SCANNED:
                break
        return None

    return await s.call("list vector stores", scan)


async def _store_files(s: Session, store_id: str) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in s.client.vector_stores.files.list(store_id, limit=100)]

    return await s.call("list the vector store's files", collect)


async def _delete_file(s: Session, file_id: str) -> None:
    with suppress(NotFoundError):
        await s.call("delete a file", lambda: s.client.files.delete(file_id))


async def _detach(s: Session, store_id: str, file_id: str) -> None:
    with suppress(NotFoundError):
        await s.call(
            "detach a file from the vector store",
            lambda: s.client.vector_stores.files.delete(file_id, vector_store_id=store_id),
        )


async def _wait_completed(
    s: Session, store_id: str, file_id: str, wait_timeout: float, poll_interval: float
) -> None:
    deadline = time.monotonic() + wait_timeout
    while True:
        item = await s.call(
            "check the file's indexing",
            lambda: s.client.vector_stores.files.retrieve(file_id, vector_store_id=store_id),
        )
        status = getattr(item, "status", "completed")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            error = getattr(item, "last_error", None)
            code = getattr(error, "code", None)
            shown = code if isinstance(code, str) and ERROR_CODE.match(code) else status
            await _detach(s, store_id, file_id)
            await _delete_file(s, file_id)
            raise TemporaryError(
                f"OpenAI could not index the FAQ file ({shown})",
                reason="KnowledgeIndexingFailed",
                service=SERVICE,
                delay=60.0,
            )
        if time.monotonic() >= deadline:
            raise TemporaryError(
                f"OpenAI is still indexing the FAQ file after {wait_timeout:.0f}s",
                reason="KnowledgeIndexing",
                service=SERVICE,
                delay=15.0,
            )
        await asyncio.sleep(poll_interval)


async def ensure_knowledge(
    client_or_params: AsyncOpenAI | OpenAIParams,
    agent_key: str,
    faqs: FAQInput,
    current: KnowledgeState | None,
    *,
    verify: bool = False,
    wait_timeout: float = 120.0,
    poll_interval: float = 1.0,
) -> KnowledgeState:
    """Make the agent's vector store hold exactly the current FAQs; return what it holds.

    With ``current`` matching the FAQs' hash nothing is called, unless ``verify`` is set, in
    which case the store and its file are checked and rebuilt when missing.
    """
    digest = faq_hash(faqs)
    if not normalize_faqs(faqs):
        raise PermanentError("the agent has no FAQs", reason="NoFAQs", service=SERVICE)
    if current is not None and current.faq_hash == digest and current.file_id and not verify:
        return current
    async with session(client_or_params) as s:
        client = s.client
        store_id: str | None = None
        if current is not None:
            store_id = await _retrieve_store(s, current.vector_store_id)
        if store_id is None:
            store_id = await _find_store(s, agent_key)
        if store_id is None:
            store = await s.call(
                "create the vector store",
                lambda: client.vector_stores.create(
                    name=store_name(agent_key),
                    metadata={AGENT_METADATA_KEY: agent_key[:512], HASH_ATTRIBUTE: digest},
                ),
            )
            store_id = store.id
        new_store: str = store_id
        attached = await _store_files(s, new_store)

        # A file for these FAQs may already be there: unchanged FAQs being verified, or an
        # earlier call that ran out of time while OpenAI indexed it.
        file_id: str | None = None
        for item in attached:
            attributes = getattr(item, "attributes", None) or {}
            if attributes.get(HASH_ATTRIBUTE) == digest and item.status not in (
                "failed",
                "cancelled",
            ):
                file_id = item.id
                break
        if file_id is None:
            uploaded = await s.call(
                "upload the FAQ file",
                lambda: client.files.create(
                    file=(f"faqs-{digest[:12]}.json", faq_file_content(faqs), "application/json"),
                    purpose="assistants",
                ),
            )
            file_id = uploaded.id
            new_file: str = file_id
            try:
                await s.call(
                    "attach the FAQ file to the vector store",
                    lambda: client.vector_stores.files.create(
                        new_store,
                        file_id=new_file,
                        attributes={HASH_ATTRIBUTE: digest, AGENT_METADATA_KEY: agent_key[:512]},
                    ),
                )
            except (TemporaryError, PermanentError):
                await _delete_file(s, new_file)
                raise
        await _wait_completed(s, new_store, file_id, wait_timeout, poll_interval)

        # Only the new file stays: detach and delete every other one, the previous included.
        stale = {item.id for item in attached if item.id != file_id}
        for old in sorted(stale):
            await _detach(s, new_store, old)
            await _delete_file(s, old)
        previous = current.file_id if current is not None else None
        if previous and previous != file_id and previous not in stale:
            await _detach(s, new_store, previous)
            await _delete_file(s, previous)
        unchanged = current is not None and (current.vector_store_id, current.faq_hash) == (
            new_store,
            digest,
        )
        if not unchanged:
            await s.call(
                "label the vector store",
                lambda: client.vector_stores.update(
                    new_store,
                    metadata={AGENT_METADATA_KEY: agent_key[:512], HASH_ATTRIBUTE: digest},
                ),
            )
    return KnowledgeState(vector_store_id=new_store, file_id=file_id, faq_hash=digest)


class KnowledgeCheck(StrEnum):
    """What :func:`check_knowledge` found at OpenAI."""

    #: The store exists and holds the recorded file, indexed.
    OK = "ok"
    #: The store was deleted (or expired): a new one must be made and filled.
    STORE_MISSING = "store_missing"
    #: The store exists but the recorded file is gone from it (or failed): upload again.
    FILE_MISSING = "file_missing"


async def check_knowledge(params: OpenAIParams, state: KnowledgeState) -> KnowledgeCheck:
    """Whether the store and file recorded in ``status.knowledge`` still exist.

    The periodic check calls this for every agent every check interval, so it reads with
    :func:`~whatsapp_operator.openai_api.read` (no SDK); what it finds missing is rebuilt by
    :func:`ensure_knowledge` (the store is looked up, or created, again). One read when the
    store is as :func:`ensure_knowledge` leaves it (its ``file_counts``: one file, indexed);
    otherwise the recorded file is read too, to tell a lost file from another one.
    """
    try:
        store = await read(
            params, "read the vector store", f"vector_stores/{state.vector_store_id}"
        )
    except NotFoundError:
        return KnowledgeCheck.STORE_MISSING
    if store.get("status") == "expired":
        return KnowledgeCheck.STORE_MISSING
    if not state.file_id:
        return KnowledgeCheck.FILE_MISSING
    counts = store.get("file_counts") or {}
    if counts.get("total") == 1 and counts.get("completed") == 1:
        return KnowledgeCheck.OK
    try:
        item = await read(
            params,
            "read the FAQ file of the vector store",
            f"vector_stores/{state.vector_store_id}/files/{state.file_id}",
        )
    except NotFoundError:
        return KnowledgeCheck.FILE_MISSING
    if item.get("status", "completed") in ("failed", "cancelled"):
        return KnowledgeCheck.FILE_MISSING
    return KnowledgeCheck.OK


async def delete_knowledge(
    client_or_params: AsyncOpenAI | OpenAIParams,
    state: KnowledgeState | None,
    *,
    agent_key: str | None = None,
) -> None:
    """Delete the agent's vector store and its files; 404s are fine (idempotent).

    Without ``state`` (status lost) the store is looked up by name when ``agent_key`` is given.
    """
    async with session(client_or_params) as s:
        store_id: str | None = state.vector_store_id if state is not None else None
        if store_id is None and agent_key is not None:
            store_id = await _find_store(s, agent_key)
        file_ids: set[str] = set()
        if state is not None and state.file_id:
            file_ids.add(state.file_id)
        if store_id is not None:
            try:
                file_ids.update(item.id for item in await _store_files(s, store_id))
            except NotFoundError:
                store_id = None
        if store_id is not None:
            doomed: str = store_id
            with suppress(NotFoundError):
                await s.call(
                    "delete the vector store", lambda: s.client.vector_stores.delete(doomed)
                )
        for file_id in sorted(file_ids):
            await _delete_file(s, file_id)
