"""Released's Kubernetes operator: reconciles ``WhatsAppAgent`` resources into running bots.

Run it with ``kopf run -m whatsapp_operator`` or the ``released-operator`` console script.

Layers, each importing only from the ones below it:

- ``handlers``     the kopf entry points: registration and the translation of domain errors
                   into kopf's, nothing else (``kopf run -m whatsapp_operator.handlers``).
- ``reconcile``    what the handlers delegate to, free of kopf: the inputs of a pass gathered
                   once, its parts (credentials, database, knowledge, children, workloads,
                   webhook), the status write, rotation steps, cleanup.
- ``admission``    the validating admission handler (optional).
- ``kube``         the Kubernetes API through lightkube (server-side apply, Secrets, rollouts).
- ``builders``     pure ``build_*`` functions: spec in, Kubernetes manifests (dicts) out.
- ``knowledge``    the agent's OpenAI knowledge (Files API + vector store), ``models`` whether
                   OpenAI still serves the agent's model, ``meta_webhook`` Meta's callback URL
                   override, ``meta_account`` the app's WABA subscription and the phone number
                   read with the agent's token, ``database`` PostgreSQL provisioning: the
                   modules that talk to the outside world, over ``openai_api`` and ``graph``
                   (timeouts, ``retrying``'s retries, and the providers' error policies from
                   ``released.providers``).
- ``rotation``     the credential-rotation schedule and state machine (pure, plus the two
                   actions outside the cluster).
- ``status``       conditions and Events; ``metrics`` the operator's Prometheus metrics.
- ``config``, ``errors``, ``credentials``: settings, domain errors, Secret key names.
- ``namespaces``   a fix to kopf: namespaces created while kopf lists them are followed too.
- ``released.agent`` (a package of its own, kopf-free) holds the typed ``WhatsAppAgent`` spec,
  its naming and validation; the operator and the ``released`` CLI import it.
"""

from released.agent import GROUP, KIND, PLURAL, VERSION

FINALIZER = "whatsapp.released.io/cleanup"
FIELD_MANAGER = "released-operator"

# ``kopf run -m whatsapp_operator`` registers the handlers by importing the package.
from . import handlers as handlers  # noqa: E402

__all__ = ["FIELD_MANAGER", "FINALIZER", "GROUP", "KIND", "PLURAL", "VERSION", "handlers"]
