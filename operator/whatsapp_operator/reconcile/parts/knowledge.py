"""Part ``knowledge`` (condition ``KnowledgeReady``): the FAQs in the agent's OpenAI vector store.

Runs before the children, so the pods get the vector store's id in their first rollout.
Nothing is called while ``status.knowledge.faqHash`` matches the FAQs (see
:func:`whatsapp_operator.knowledge.ensure_knowledge`).
"""

from __future__ import annotations

from ... import status as st
from ...errors import ReleasedError
from ...knowledge import KnowledgeState, ensure_knowledge
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
