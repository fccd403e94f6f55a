"""Part ``knowledge`` (condition ``KnowledgeReady``): the FAQs in the agent's OpenAI vector store.

Runs before the children, so the pods get the vector store's id in their first rollout.
Nothing is called while ``status.knowledge.faqHash`` matches the FAQs (see
:func:`whatsapp_operator.knowledge.ensure_knowledge`).

:func:`verify` is the periodic check: two reads tell whether the store and its file still
exist. A deleted store (or a lost file) makes ``KnowledgeReady`` ``False`` at once, is dropped
from ``status.knowledge`` and a pass is asked for, which makes a new store (or uploads the
file again) and rolls the pods onto it.
"""

from __future__ import annotations

from ... import status as st
from ...errors import ReleasedError, TemporaryError
from ...knowledge import KnowledgeCheck, KnowledgeState, check_knowledge, ensure_knowledge
from .base import Pass


async def ensure(p: Pass) -> None:
    agent, faqs = p.agent, p.inputs.faqs
    current = KnowledgeState.from_status(agent.status.get("knowledge"))
    try:
        state = await ensure_knowledge(
            p.inputs.openai_params(agent.settings),
            agent.key,
            [{"q": f.q, "a": f.a} for f in faqs],
            current,
        )
    except ReleasedError as exc:
        p.outcome.fail(st.KNOWLEDGE_READY, exc)
        return
    p.outcome.fields["knowledge"] = state.to_status()
    p.outcome.set(
        st.Condition.true(st.KNOWLEDGE_READY, "Synced", f"vector store holds {len(faqs)} FAQs")
    )
    if current is None or current.faq_hash != state.faq_hash:
        agent.events.info("KnowledgeSynced", f"uploaded {len(faqs)} FAQs to the vector store")


async def verify(p: Pass) -> None:
    agent = p.agent
    state = KnowledgeState.from_status(agent.status.get("knowledge"))
    if state is None:
        return
    try:
        found = await check_knowledge(p.inputs.openai_params(agent.settings), state)
    except TemporaryError as exc:
        p.check_failed(st.KNOWLEDGE_READY, exc)
        return
    except ReleasedError as exc:
        p.outcome.fail(st.KNOWLEDGE_READY, exc)
        return
    if found is KnowledgeCheck.OK:
        return
    if found is KnowledgeCheck.STORE_MISSING:
        p.outcome.fields["knowledge"] = None
        cond = st.Condition.false(
            st.KNOWLEDGE_READY,
            "VectorStoreMissing",
            f"the vector store {state.vector_store_id} no longer exists at OpenAI: making a new "
            "one with the FAQs (the bot answers from its FAQs lexically meanwhile)",
        )
    else:
        # No file recorded: the next pass uploads it again (a merge patch keeps a key it does
        # not mention, hence the empty value rather than none).
        p.outcome.fields["knowledge"] = {**state.to_status(), "fileId": ""}
        cond = st.Condition.false(
            st.KNOWLEDGE_READY,
            "FaqFileMissing",
            f"the FAQ file is gone from the vector store {state.vector_store_id}: uploading it "
            "again",
        )
    agent.events.warn(cond.reason, cond.message)
    p.outcome.set(cond)
    p.needs_reconcile = True
