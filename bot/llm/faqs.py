"""FAQs: loading them, matching a question lexically, and grounding the model with them.

``FAQS_PATH`` names a YAML or JSON file holding a list of ``{q, a}`` objects (the operator
mounts the agent's ``NAME-faqs`` ConfigMap there); ``{"faqs": [...]}`` is accepted too. Files are
re-read when they change (a ConfigMap update swaps the file), so a running worker picks up new
FAQs without a restart.

The lexical match (rapidfuzz ``token_set_ratio`` over the words that carry meaning) is what the
bot answers with when the model is unavailable; a match below the threshold is no match, and the
caller falls back to ``FALLBACK_MESSAGE``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from rapidfuzz import fuzz, process, utils

from bot.core.config import Settings
from bot.handover import instructions_rule

#: The demo FAQs shipped in the package (``released run`` uses them when FAQS_PATH is unset).
EMBEDDED_FAQS_PATH = Path(__file__).resolve().parent.parent / "data" / "faqs.yaml"

#: Minimum ``token_set_ratio`` score (0-100) for a lexical match.
DEFAULT_MATCH_THRESHOLD = 75.0

#: FAQ text beyond this many characters is left out of the instructions (large sets are
#: served by the ``file_search`` tool over the agent's vector store instead).
MAX_FAQ_CHARS_IN_INSTRUCTIONS = 60_000

#: Words that carry no meaning for matching (English and Spanish, the FAQs we ship).
_STOPWORDS_TEXT = """
    a an the is are was were be been am do does did to of in on at for from by with and or but
    what whats which who whom when where why how can could would should will shall may might
    i me my we our you your he she it its they them their this that these those there here
    hi hello hey please thanks thank ok okay about any some much many have has had get
    el la los las un una unos unas de del al y o que qué es son como cómo cuando cuándo donde
    dónde por para con en mi mis tu tus su sus se lo le les hola gracias favor cual cuál
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

LANGUAGE_NAMES = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "fr": "French",
    "de": "German",
    "it": "Italian",
    "nl": "Dutch",
}


class FAQ(BaseModel):
    """One question and its answer."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    q: str = Field(min_length=1)
    a: str = Field(min_length=1)


_FAQ_LIST = TypeAdapter(list[FAQ])


class FAQError(ValueError):
    """The FAQ file is missing or malformed (the message says which and why)."""


def parse_faqs(data: Any) -> list[FAQ]:
    """Validate already-decoded FAQ data: a list of ``{q, a}``, or ``{"faqs": [...]}``."""
    if isinstance(data, dict) and "faqs" in data:
        data = data["faqs"]
    if data is None:
        return []
    try:
        return _FAQ_LIST.validate_python(data)
    except ValueError as exc:
        raise FAQError(f"FAQs must be a list of {{q, a}} objects: {exc}") from exc


def _read(path: Path) -> list[FAQ]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FAQError(f"cannot read FAQs from {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise FAQError(f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    return parse_faqs(data)


_cache: dict[Path, tuple[tuple[int, int], list[FAQ]]] = {}
_cache_lock = threading.Lock()


def load_faqs(path: Path | str | None) -> list[FAQ]:
    """The FAQs in ``path`` (YAML, or JSON by extension); ``[]`` when ``path`` is ``None``.

    Cached per file and re-read when its modification time or size changes.
    """
    if path is None:
        return []
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise FAQError(f"cannot read FAQs from {path}: {exc.strerror or exc}") from exc
    key = (stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    faqs = _read(path)
    with _cache_lock:
        _cache[path] = (key, faqs)
    return faqs


def faqs_for(settings: Settings) -> list[FAQ]:
    """The agent's FAQs (``FAQS_PATH``), or none."""
    return load_faqs(settings.faqs_path)


def _process(text: str) -> str:
    words = utils.default_process(text).split()
    return " ".join(w for w in words if w not in STOPWORDS)


def match_faq(
    question: str, faqs: Sequence[FAQ], threshold: float = DEFAULT_MATCH_THRESHOLD
) -> tuple[FAQ, float] | None:
    """The FAQ whose question best matches ``question`` and its score, if above ``threshold``.

    Matching ignores case, punctuation and stopwords, so "hi" or "what?" match nothing.
    """
    query = _process(question)
    if not query or not faqs:
        return None
    choices = [_process(f.q) for f in faqs]
    best = process.extractOne(
        query, choices, scorer=fuzz.token_set_ratio, processor=None, score_cutoff=threshold
    )
    if best is None:
        return None
    _choice, score, index = best
    # Ties are common (token_set_ratio is 100 whenever one side's words contain the other's):
    # among the best, prefer the FAQ whose whole question reads most like the user's.
    tied = [i for i, c in enumerate(choices) if fuzz.token_set_ratio(query, c) == score]
    if len(tied) > 1:
        whole = utils.default_process(question)
        index = max(tied, key=lambda i: fuzz.ratio(whole, utils.default_process(faqs[i].q)))
    return faqs[index], float(score)


def language_name(code: str) -> str:
    """``"es"`` → ``"Spanish"``; unknown codes are returned as given."""
    return LANGUAGE_NAMES.get(code.lower().split("-")[0].split("_")[0], code)


def _blocks(faqs: Sequence[FAQ], limit: int) -> tuple[list[str], bool]:
    """The ``Q:/A:`` blocks that fit in ``limit`` characters, and whether all of them did."""
    lines: list[str] = []
    used = 0
    for faq in faqs:
        block = f"Q: {' '.join(faq.q.split())}\nA: {' '.join(faq.a.split())}"
        if used + len(block) > limit:
            return lines, False
        lines.append(block)
        used += len(block) + 1
    return lines, True


def format_faqs(faqs: Sequence[FAQ], limit: int = MAX_FAQ_CHARS_IN_INSTRUCTIONS) -> str:
    """FAQs as ``Q: ... / A: ...`` lines, up to ``limit`` characters."""
    return "\n".join(_blocks(faqs, limit)[0])


def faqs_fit_in_instructions(
    faqs: Sequence[FAQ], limit: int = MAX_FAQ_CHARS_IN_INSTRUCTIONS
) -> bool:
    """Whether every FAQ fits in the instructions (then ``file_search`` adds nothing but cost
    and latency, and is left out)."""
    return _blocks(faqs, limit)[1]


def needs_file_search(settings: Settings, faqs: Sequence[FAQ]) -> bool:
    """Whether a request should carry ``file_search`` over the agent's vector store: only when
    there is one and the FAQs are not all in the instructions (too many, or none loaded)."""
    return bool(settings.openai_vector_store_id) and (
        not faqs or not faqs_fit_in_instructions(faqs)
    )


def build_instructions(
    settings: Settings, faqs: Sequence[FAQ], *, file_search: bool | None = None
) -> str:
    """The model's instructions: persona, language, the FAQs, and the rule to stay within them.

    ``file_search``: whether the request carries the ``file_search`` tool (default:
    :func:`needs_file_search`).
    """
    if file_search is None:
        file_search = needs_file_search(settings, faqs)
    language = language_name(settings.language)
    parts = [
        settings.openai_instructions.strip(),
        (
            f"Reply in {language}, unless the user clearly writes in another language: then "
            "reply in theirs. You are chatting on WhatsApp: keep replies short, in plain text "
            "without Markdown headings or tables."
        ),
        instructions_rule(settings),
    ]
    if file_search:
        parts.append(
            "You can also search the knowledge base with the file_search tool; it holds the "
            "same FAQs and longer documents. Treat it as part of the FAQs."
        )
    if faqs:
        parts.append("FAQs:\n" + format_faqs(faqs))
    else:
        parts.append("FAQs: (none)")
    return "\n\n".join(parts)
