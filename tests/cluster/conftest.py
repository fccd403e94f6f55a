"""The cluster the end-to-end tests run in (session-scoped): the one the environment names
(``RELEASED_E2E_IMAGE``, ``KUBECONFIG``: kind, for example) or, by default, the local control
plane with a real node (``hack/node.sh``), brought up for the session and taken down
completely afterwards. See tests/README.md, "The real node"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.support import Kubectl
from tests.k8s_node import Cluster, cluster_from_env, start_local_cluster, unavailable_reason


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    given = cluster_from_env()
    if given is not None:
        yield given
        return
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    local = start_local_cluster()
    print(local.up_log)
    try:
        yield local.cluster
    finally:
        print(local.cost(5))
        problems = local.stop()
        assert not problems, "the node left the machine changed:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    return Kubectl(cluster)
