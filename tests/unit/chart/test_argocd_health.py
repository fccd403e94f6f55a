"""The Argo CD health check of WhatsAppAgent, run by real Lua interpreters.

Argo CD runs health checks with gopher-lua (Lua 5.1), so the script is run with Lua 5.1 and 5.4
from the ``lupa`` package, and with the ``lua5.4`` binary when it is installed.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.unit.chart._helm import CHART_DIR, REPO_ROOT

SCRIPT_PATH = CHART_DIR / "docs" / "argocd-health.lua"
DOC_PATH = REPO_ROOT / "docs" / "argocd.md"
CM_KEY = "resource.customizations.health.whatsapp.released.io_WhatsAppAgent"
FINALIZER = "whatsapp.released.io/cleanup"

Health = dict[str, str]


def _lupa_runner(module: str) -> Callable[[dict[str, Any]], Health]:
    lupa = pytest.importorskip(f"lupa.{module}", reason=f"lupa ({module}) is not installed")
    script = SCRIPT_PATH.read_text()

    def run(obj: dict[str, Any]) -> Health:
        lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = lua.table_from(obj, recursive=True)
        hs = lua.execute(script)
        return {"status": hs["status"], "message": hs["message"]}

    return run


def _lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string for ASCII text
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    items = ", ".join(f"[{json.dumps(k)}] = {_lua_literal(v)}" for k, v in value.items())
    return "{" + items + "}"


def _binary_runner(binary: str) -> Callable[[dict[str, Any]], Health]:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")
    script = SCRIPT_PATH.read_text()

    def run(obj: dict[str, Any]) -> Health:
        program = (
            f"obj = {_lua_literal(obj)}\n"
            f"local function health()\n{script}\nend\n"
            "local hs = health()\n"
            "io.write(hs.status, '\\n', hs.message or '', '\\n')\n"
        )
        proc = subprocess.run(
            [path, "-"], input=program, capture_output=True, text=True, timeout=30, check=True
        )
        status, message = proc.stdout.split("\n")[:2]
        return {"status": status, "message": message}

    return run


@pytest.fixture(params=["lupa.lua51", "lupa.lua54", "lua5.4"])
def health(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], Health]:
    kind, _, name = request.param.partition(".")
    return _lupa_runner(name) if kind == "lupa" else _binary_runner(request.param)


def agent(
    generation: int = 3,
    status: dict[str, Any] | None = None,
    deleting: bool = False,
    finalizers: list[str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "acme", "namespace": "acme", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-25T18:00:00Z"
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    obj: dict[str, Any] = {
        "apiVersion": "whatsapp.released.io/v1alpha1",
        "kind": "WhatsAppAgent",
        "metadata": metadata,
        "spec": {"phoneNumberId": "123456789012345"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def ready(
    status: str,
    reason: str = "Ready",
    message: str = "",
    observed: int | None = 3,
    top_observed: int | None = 3,
) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "Ready", "status": status, "reason": reason}
    if message:
        condition["message"] = message
    if observed is not None:
        condition["observedGeneration"] = observed
    parts = {"type": "WorkloadsReady", "status": "True", "reason": "Available"}
    result: dict[str, Any] = {"conditions": [parts, condition]}
    if top_observed is not None:
        result["observedGeneration"] = top_observed
    return result


CASES = [
    pytest.param(
        agent(status=ready("True", message="All parts ready")),
        ("Healthy", "All parts ready"),
        id="healthy",
    ),
    pytest.param(
        agent(status=ready("True", observed=None)),
        ("Healthy", "Ready"),
        id="healthy-status-observedGeneration",
    ),
    pytest.param(agent(generation=1), ("Progressing", "Waiting for the operator"), id="no-status"),
    pytest.param(
        agent(status={"observedGeneration": 3}),
        ("Progressing", "Waiting for the Ready condition"),
        id="no-ready-condition",
    ),
    pytest.param(
        agent(status=ready("True", observed=2, top_observed=2)),
        ("Progressing", "Reconciling generation 3 (observed 2)"),
        id="stale-generation",
    ),
    pytest.param(
        agent(status=ready("True", observed=None, top_observed=None)),
        ("Progressing", "Reconciling generation 3 (observed none)"),
        id="no-observed-generation",
    ),
    pytest.param(
        agent(status=ready("False", "InvalidSpec", "faqs: duplicate question", observed=2)),
        ("Progressing", "Reconciling generation 3"),
        id="old-failure-new-spec",
    ),
    pytest.param(
        agent(status=ready("Unknown", "Reconciling", "WorkloadsReady not yet known")),
        ("Progressing", "Reconciling: WorkloadsReady not yet known"),
        id="ready-unknown",
    ),
    pytest.param(
        agent(status=ready("False", "InvalidSpec", "ingress.host is required")),
        ("Degraded", "InvalidSpec: ingress.host is required"),
        id="degraded",
    ),
    pytest.param(
        agent(status=ready("False", "RolloutInProgress", "acme-web: 0 of 1 updated replicas")),
        ("Progressing", "RolloutInProgress: acme-web: 0 of 1 updated replicas"),
        id="rollout-in-progress",
    ),
    pytest.param(
        agent(status=ready("False", "Suspended", "spec.suspend is true")),
        ("Suspended", "Suspended: spec.suspend is true"),
        id="suspended",
    ),
    pytest.param(
        agent(status=ready("False", "DatabaseNotConfigured")),
        ("Degraded", "DatabaseNotConfigured"),
        id="degraded-no-message",
    ),
    pytest.param(
        agent(status=ready("True"), deleting=True, finalizers=[FINALIZER]),
        ("Progressing", f"Deleting: waiting for finalizer {FINALIZER}"),
        id="deleting",
    ),
    pytest.param(
        agent(status=ready("True"), deleting=True, finalizers=[FINALIZER, "other.io/x"]),
        ("Progressing", f"Deleting: waiting for finalizer {FINALIZER}, other.io/x"),
        id="deleting-two-finalizers",
    ),
    pytest.param(
        agent(status=ready("True"), deleting=True, finalizers=[]),
        ("Progressing", "Deleting"),
        id="deleting-no-finalizer",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), CASES)
def test_health(
    health: Callable[[dict[str, Any]], Health], obj: dict[str, Any], expected: tuple[str, str]
) -> None:
    result = health(obj)
    status, message = expected
    assert result["status"] == status, result
    assert result["message"].startswith(message), result


def test_health_of_status_the_operator_writes(
    health: Callable[[dict[str, Any]], Health],
) -> None:
    """Conditions built by whatsapp_operator.status map to the expected Argo CD health."""
    status_mod = importlib.import_module("whatsapp_operator.status")
    condition = status_mod.Condition
    parts = [condition.true(p, "Ok") for p in status_mod.PARTS]

    conditions = status_mod.apply_conditions([], parts, 5)
    obj = agent(generation=5, status={"observedGeneration": 5, "conditions": conditions})
    assert health(obj)["status"] == "Healthy"

    pending = status_mod.apply_conditions([], parts[:1], 5)  # the other parts not known yet
    obj = agent(generation=5, status={"observedGeneration": 5, "conditions": pending})
    assert health(obj)["status"] == "Progressing"

    blocked = status_mod.apply_conditions(
        [], [], 5, blocker=condition.false("Ready", "InvalidSpec", "phoneNumberId is missing")
    )
    obj = agent(generation=5, status={"observedGeneration": 5, "conditions": blocked})
    assert health(obj) == {"status": "Degraded", "message": "InvalidSpec: phoneNumberId is missing"}

    obj = agent(generation=6, status={"observedGeneration": 5, "conditions": conditions})
    assert health(obj)["status"] == "Progressing"

    # A rollout in progress and a suspended agent, as the operator's handlers report them.
    workloads = importlib.import_module("whatsapp_operator.reconcile.parts.workloads")
    rest = parts[1:]
    for suspended, expected in ((False, "Progressing"), (True, "Suspended")):
        cond = workloads.workloads_condition([_PendingRollout()], suspended=suspended)
        conditions = status_mod.apply_conditions([], [cond, *rest], 5)
        obj = agent(generation=5, status={"observedGeneration": 5, "conditions": conditions})
        assert health(obj)["status"] == expected, conditions


class _PendingRollout:
    complete = False

    def describe(self) -> str:
        return "acme-web: 0 of 1 updated replicas"


def test_docs_snippet_is_the_script() -> None:
    """docs/argocd.md ships the same script in its argocd-cm snippet."""
    text = DOC_PATH.read_text()
    blocks = [
        doc
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
        for doc in yaml.safe_load_all(block)
    ]
    (config_map,) = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "ConfigMap"]
    assert config_map["metadata"]["name"] == "argocd-cm"
    assert config_map["data"][CM_KEY] == SCRIPT_PATH.read_text()
    assert "SkipDryRunOnMissingResource=true" in text
    assert 'argocd.argoproj.io/sync-wave: "-1"' in text
    assert 'argocd.argoproj.io/sync-wave: "1"' in text


def test_docs_yaml_blocks_parse() -> None:
    for block in re.findall(r"```yaml\n(.*?)```", DOC_PATH.read_text(), re.S):
        for doc in yaml.safe_load_all(textwrap.dedent(block)):
            assert doc is None or isinstance(doc, dict)
