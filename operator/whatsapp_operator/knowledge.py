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

Errors: 429, 5xx, timeouts and refused connections raise
:class:`~whatsapp_operator.errors.TemporaryError` (after the SDK's own two retries); 401, 403,
400 and other client errors raise :class:`~whatsapp_operator.errors.PermanentError` with a
message that names what to fix. A message carries the HTTP status and OpenAI's error code (a
short token such as ``insufficient_quota``), never text from a response body: the server may be
the tenant's (``baseUrl``), and its answer must not be read back through the agent's status.

A tenant's ``baseUrl`` is called through :func:`whatsapp_operator.egress.guarded_client`
(``OpenAIParams.policy``), which connects only to addresses the platform's policy allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import openai
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

from released.agent.policy import Policy
from released.providers import openai as openai_policy
from whatsapp_operator.egress import guarded_client
from whatsapp_operator.errors import NotFoundError, PermanentError, TemporaryError

SERVICE = "openai"
#: Bumped when the file format changes, so every agent's file is rebuilt once.
FORMAT_VERSION = "released-faqs-v1"
AGENT_METADATA_KEY = "released_agent"
HASH_ATTRIBUTE = "faq_hash"
#: At most this many vector stores are scanned when looking a store up by name.
MAX_STORES_SCANNED = 1000

FAQInput = Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]]


class OpenAIParams(BaseModel):
    """How to reach OpenAI (or an OpenAI-compatible server) for one agent."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr
    base_url: str = "https://api.openai.com/v1"
    timeout: float = 30.0
    max_retries: int = 2
    #: Set when ``base_url`` is the tenant's: connections go only where the policy allows.
    policy: Policy | None = None

    def client(self) -> AsyncOpenAI:
        """A new ``AsyncOpenAI`` client for these parameters (close it when done)."""
        http_client = None
        if self.policy is not None:
            http_client = guarded_client(self.policy, timeout=self.timeout)
        return AsyncOpenAI(
            api_key=self.api_key.get_secret_value(),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http_client,
        )


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


# -- errors ---------------------------------------------------------------------------------


@contextmanager
def _mapped(action: str, api_key: str | None) -> Iterator[None]:
    """Translate the SDK's exceptions into domain errors (without the API key)."""
    try:
        yield
    except openai.APITimeoutError:
        raise TemporaryError(
            f"OpenAI did not answer in time while trying to {action}",
            reason="OpenAIUnavailable",
            service=SERVICE,
            delay=30.0,
        ) from None
    except openai.APIConnectionError:
        raise TemporaryError(
            f"cannot reach OpenAI to {action}",
            reason="OpenAIUnavailable",
            service=SERVICE,
            delay=30.0,
        ) from None
    except openai.APIStatusError as exc:
        raise _status_error(exc, action, api_key) from None


#: What an error code from a response may look like to be shown: a short token, nothing more.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def error_code(exc: openai.APIStatusError) -> str | None:
    """OpenAI's error code of ``exc`` (``insufficient_quota``) when it is a plain short token."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else None


def _status_error(exc: openai.APIStatusError, action: str, api_key: str | None) -> Exception:
    """Map an OpenAI error answer to a domain error; what a status and code mean is OpenAI's
    error policy shared with the bot (:mod:`released.providers.openai`)."""
    status = exc.status_code
    code = error_code(exc)
    detail = f", code {code}" if code else ""
    message = f"OpenAI refused to {action} (HTTP {status}{detail})"
    kind = openai_policy.classify(status, code)
    if kind is openai_policy.ErrorKind.AUTH:
        return PermanentError(
            f"OpenAI rejected the API key (HTTP 401) while trying to {action}; update apiKey in "
            "the Secret named by spec.secrets.openai",
            reason="OpenAIAuthFailed",
            service=SERVICE,
        )
    if kind is openai_policy.ErrorKind.PERMISSION:
        return PermanentError(message, reason="OpenAIPermissionDenied", service=SERVICE)
    if kind is openai_policy.ErrorKind.NOT_FOUND:
        return NotFoundError(message, reason="OpenAINotFound", service=SERVICE)
    if kind in (openai_policy.ErrorKind.RATE_LIMIT, openai_policy.ErrorKind.QUOTA):
        seconds = openai_policy.retry_after(exc.response.headers if exc.response else None)
        delay = 60.0 if seconds is None else max(1.0, min(seconds, 3600.0))
        reason = (
            "OpenAIQuotaExceeded" if kind is openai_policy.ErrorKind.QUOTA else "OpenAIRateLimited"
        )
        return TemporaryError(message, reason=reason, service=SERVICE, delay=delay)
    if kind is openai_policy.ErrorKind.TEMPORARY:
        return TemporaryError(message, reason="OpenAIUnavailable", service=SERVICE, delay=30.0)
    return PermanentError(message, reason="OpenAIRequestRejected", service=SERVICE)


@asynccontextmanager
async def _client(client_or_params: AsyncOpenAI | OpenAIParams) -> AsyncIterator[AsyncOpenAI]:
    if isinstance(client_or_params, AsyncOpenAI):
        yield client_or_params
        return
    client = client_or_params.client()
    try:
        yield client
    finally:
        await client.close()


def _key_of(client: AsyncOpenAI) -> str | None:
    key = client.api_key
    return key if isinstance(key, str) else None


# -- OpenAI calls ---------------------------------------------------------------------------


async def _retrieve_store(client: AsyncOpenAI, store_id: str) -> str | None:
    try:
        with _mapped("read the vector store", _key_of(client)):
            store = await client.vector_stores.retrieve(store_id)
    except NotFoundError:
        return None
    return None if getattr(store, "status", None) == "expired" else store.id


async def _find_store(client: AsyncOpenAI, agent_key: str) -> str | None:
    name = store_name(agent_key)
    scanned = 0
    with _mapped("list vector stores", _key_of(client)):
        async for store in client.vector_stores.list(limit=100, order="desc"):
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


async def _store_files(client: AsyncOpenAI, store_id: str) -> list[Any]:
    files: list[Any] = []
    with _mapped("list the vector store's files", _key_of(client)):
        async for item in client.vector_stores.files.list(store_id, limit=100):
            files.append(item)
    return files


async def _delete_file(client: AsyncOpenAI, file_id: str) -> None:
    try:
        with _mapped("delete a file", _key_of(client)):
            await client.files.delete(file_id)
    except NotFoundError:
        pass


async def _detach(client: AsyncOpenAI, store_id: str, file_id: str) -> None:
    try:
        with _mapped("detach a file from the vector store", _key_of(client)):
            await client.vector_stores.files.delete(file_id, vector_store_id=store_id)
    except NotFoundError:
        pass


async def _wait_completed(
    client: AsyncOpenAI, store_id: str, file_id: str, wait_timeout: float, poll_interval: float
) -> None:
    deadline = time.monotonic() + wait_timeout
    while True:
        with _mapped("check the file's indexing", _key_of(client)):
            item = await client.vector_stores.files.retrieve(file_id, vector_store_id=store_id)
        status = getattr(item, "status", "completed")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            error = getattr(item, "last_error", None)
            code = getattr(error, "code", None)
            shown = code if isinstance(code, str) and _ERROR_CODE.match(code) else status
            await _detach(client, store_id, file_id)
            await _delete_file(client, file_id)
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
    async with _client(client_or_params) as client:
        key = _key_of(client)
        store_id: str | None = None
        if current is not None:
            store_id = await _retrieve_store(client, current.vector_store_id)
        if store_id is None:
            store_id = await _find_store(client, agent_key)
        if store_id is None:
            with _mapped("create the vector store", key):
                store = await client.vector_stores.create(
                    name=store_name(agent_key),
                    metadata={AGENT_METADATA_KEY: agent_key[:512], HASH_ATTRIBUTE: digest},
                )
            store_id = store.id
        attached = await _store_files(client, store_id)

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
            with _mapped("upload the FAQ file", key):
                uploaded = await client.files.create(
                    file=(f"faqs-{digest[:12]}.json", faq_file_content(faqs), "application/json"),
                    purpose="assistants",
                )
            file_id = uploaded.id
            try:
                with _mapped("attach the FAQ file to the vector store", key):
                    await client.vector_stores.files.create(
                        store_id,
                        file_id=file_id,
                        attributes={HASH_ATTRIBUTE: digest, AGENT_METADATA_KEY: agent_key[:512]},
                    )
            except (TemporaryError, PermanentError):
                await _delete_file(client, file_id)
                raise
        await _wait_completed(client, store_id, file_id, wait_timeout, poll_interval)

        # Only the new file stays: detach and delete every other one, the previous included.
        stale = {item.id for item in attached if item.id != file_id}
        for old in sorted(stale):
            await _detach(client, store_id, old)
            await _delete_file(client, old)
        previous = current.file_id if current is not None else None
        if previous and previous != file_id and previous not in stale:
            await _detach(client, store_id, previous)
            await _delete_file(client, previous)
        unchanged = current is not None and (current.vector_store_id, current.faq_hash) == (
            store_id,
            digest,
        )
        if not unchanged:
            with _mapped("label the vector store", key):
                await client.vector_stores.update(
                    store_id,
                    metadata={AGENT_METADATA_KEY: agent_key[:512], HASH_ATTRIBUTE: digest},
                )
    return KnowledgeState(vector_store_id=store_id, file_id=file_id, faq_hash=digest)


async def delete_knowledge(
    client_or_params: AsyncOpenAI | OpenAIParams,
    state: KnowledgeState | None,
    *,
    agent_key: str | None = None,
) -> None:
    """Delete the agent's vector store and its files; 404s are fine (idempotent).

    Without ``state`` (status lost) the store is looked up by name when ``agent_key`` is given.
    """
    async with _client(client_or_params) as client:
        store_id: str | None = state.vector_store_id if state is not None else None
        if store_id is None and agent_key is not None:
            store_id = await _find_store(client, agent_key)
        file_ids: set[str] = set()
        if state is not None and state.file_id:
            file_ids.add(state.file_id)
        if store_id is not None:
            try:
                file_ids.update(item.id for item in await _store_files(client, store_id))
            except NotFoundError:
                store_id = None
        if store_id is not None:
            try:
                with _mapped("delete the vector store", _key_of(client)):
                    await client.vector_stores.delete(store_id)
            except NotFoundError:
                pass
        for file_id in sorted(file_ids):
            await _delete_file(client, file_id)
