"""What Released knows about the outside services' contracts, in one place each.

- ``released.providers.meta``    Meta's Graph API (WhatsApp Cloud API): the pinned Graph version,
                                 error codes and what they mean (retry, slow down, token,
                                 permission or policy problem, 24-hour window), ``Retry-After``.
- ``released.providers.openai``  the OpenAI API: status codes and error codes and what they mean,
                                 ``Retry-After``, the default model, model shutdowns, reasoning
                                 efforts and verbosities.

The bot (``bot.whatsapp.client``, ``bot.llm.client``) and the operator (``whatsapp_operator``)
both decide with these functions, so a code is never retried by one and given up by the other.
Nothing here performs a request or imports kopf or FastAPI: callers pass what they received
(an HTTP status, the decoded error body, the response headers) and get a typed verdict back.
"""
