"""Reconciling ``WhatsAppAgent`` resources, free of kopf: what the kopf handlers delegate to.

Modules, each importing only from those listed before it (and from the layers below the
package: ``kube``, ``status``, ``builders``, the outside-world modules ``knowledge``,
``meta_webhook``, ``meta_account``, ``models``, ``database``, and ``rotation``'s state
machine):

- ``context``        :class:`~.context.Agent` (the agent, the API, the settings, its Events),
                     :class:`~.context.Outcome` (what a pass found), the retry backoff.
- ``inputs``         the inputs of a pass, gathered once: spec, preconditions, FAQs, Secrets.
- ``status_writer``  the status write (optimistic locking) and ``Ready=False`` for a blocker.
- ``references``     re-reconciling agents whose Secrets/ConfigMaps changed, or on request.
- ``parts``          the parts of a pass, in order: credentials, database (prerequisites),
                     knowledge, model, children, workloads, meta_account, waba, webhook (one
                     condition each), and the periodic checks.
- ``rotate``         one step of credential rotation per timer tick.
- ``checks``         the periodic check of the outside world (model, Meta account, WABA
                     subscription, vector store) between passes.
- ``pipeline``       one pass: inputs, prerequisites, parts, one status write.
- ``cleanup``        deleting an agent: what lives outside the cluster.

Every function takes what it needs as arguments (an :class:`~.context.Agent` or a
:class:`~whatsapp_operator.kube.Kube`), so the unit tests run them against an in-memory API
server without a cluster. Errors that ask for a retry are
:class:`~whatsapp_operator.errors.TemporaryError`; the handlers translate them for kopf.
"""
