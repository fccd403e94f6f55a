"""Released's shared packages: what the bot, the operator and the CLI all need, and nothing of kopf.

- ``released.agent``  the ``WhatsAppAgent`` API: the typed spec, its validation, the children's
                      names and labels, and the manifests ``released provision`` prints. It imports
                      neither kopf nor FastAPI; the operator and the CLI import it.
- ``released.providers``  Meta's and OpenAI's contracts as Released reads them, one module each:
                      the Graph version, error codes and what they mean (retry, slow down,
                      token/permission/policy problem, 24-hour window), ``Retry-After``, the
                      default model and its calendar. The bot's clients and the operator decide
                      with them.
- ``released.fakes``  local fakes of Meta's Graph API and the OpenAI API, used by the tests and by
                      ``released run`` (so shipped code never imports ``tests/``).
"""
