"""Released's Kubernetes operator: reconciles ``WhatsAppAgent`` resources into running bots.

Run it with ``kopf run -m whatsapp_operator`` or the ``released-operator`` console script.

Layers, each importing only from the ones above it:

- ``config``       operator settings (pydantic-settings, env prefix ``RELEASED_``).
- ``released.agent`` (a package of its own, kopf-free) holds the typed ``WhatsAppAgent`` spec,
                   its naming and validation; the operator imports it.
- ``builders``     pure ``build_*`` functions: spec in, Kubernetes manifests (dicts) out.
- ``knowledge``    the agent's OpenAI knowledge (Files API + vector store), ``meta_webhook``
                   Meta's callback URL override, ``database`` PostgreSQL provisioning,
                   ``rotation`` the credential-rotation schedule and steps.
- ``kube``         applying manifests (server-side apply), reading Secrets/ConfigMaps.
- ``status``       conditions and Events.
- ``metrics``      the operator's Prometheus metrics.
- ``handlers``     thin kopf handlers that delegate to the modules above.
"""

from released.agent import GROUP, KIND, PLURAL, VERSION

FINALIZER = "whatsapp.released.io/cleanup"
FIELD_MANAGER = "released-operator"

# ``kopf run -m whatsapp_operator`` registers the handlers by importing the package.
from . import handlers as handlers  # noqa: E402

__all__ = ["FIELD_MANAGER", "FINALIZER", "GROUP", "KIND", "PLURAL", "VERSION", "handlers"]
