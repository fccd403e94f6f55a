"""Helpers shared by the chart's unit tests and the helm install integration test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "released-operator"
CRD_SOURCE = REPO_ROOT / "crds" / "whatsappagent.yaml"
CRD_COPY = CHART_DIR / "files" / "crds" / "whatsappagent.yaml"
INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-helm.sh"


def find_helm() -> tuple[str | None, str]:
    """The helm binary, installing it with hack/install-helm.sh when needed; else (None, why)."""
    for candidate in (
        os.environ.get("HELM"),
        shutil.which("helm"),
        str(
            Path(os.environ.get("RELEASED_CACHE") or Path.home() / ".cache" / "released")
            / "helm"
            / "helm"
        ),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate, ""
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"hack/install-helm.sh could not run: {exc}"
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and path and os.access(path, os.X_OK):
        return path, ""
    return None, f"helm cannot be installed (hack/install-helm.sh: {proc.stderr.strip()[-500:]})"


def run_helm(
    helm: str, *args: str, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(
    helm: str, *set_args: str, namespace: str = "released-system", release: str = "released"
) -> list[dict[str, Any]]:
    """`helm template` the chart (with --include-crds) and return the objects.

    ``set_args`` are ``key=value`` for ``--set``; a value starting with ``[`` is JSON.
    """
    args = ["template", release, str(CHART_DIR), "--namespace", namespace, "--include-crds"]
    for value in set_args:
        # A JSON value (``key=["{namespace}.x"]``) goes through --set-json: --set reads braces
        # as a list.
        raw = value.partition("=")[2]
        args += ["--set-json", value] if raw.startswith("[") else ["--set", value]
    proc = run_helm(helm, *args)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def rule_triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Expand RBAC PolicyRules into (apiGroup, resource, verb) triples for comparison."""
    out: set[tuple[str, str, str]] = set()
    for rule in rules:
        assert not rule.get("resourceNames"), "no resourceNames expected"
        assert not rule.get("nonResourceURLs"), "no nonResourceURLs expected"
        for group in rule.get("apiGroups") or rule.get("api_groups") or []:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
