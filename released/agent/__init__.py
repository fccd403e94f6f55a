"""The ``WhatsAppAgent`` API: group, version, kind, the typed spec, validation, naming, provision.

Kopf-free and FastAPI-free: the operator (``whatsapp_operator``) and the CLI (``bot.cli``) import
it, so printing a manifest never loads the control plane.
"""

GROUP = "whatsapp.released.io"
VERSION = "v1alpha1"
PLURAL = "whatsappagents"
KIND = "WhatsAppAgent"
