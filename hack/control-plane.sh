#!/usr/bin/env bash
# Local, real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
# for tests and demos. See DESIGN.md, "Real parts in tests" -> Kubernetes.
#
#   hack/control-plane.sh build   build/fetch the binaries into the cache (idempotent)
#   hack/control-plane.sh start   start the plane; last stdout line: export KUBECONFIG=...
#   hack/control-plane.sh env     print the export line for a running plane
#   hack/control-plane.sh stop    stop the plane and remove its state dir
#
# Environment:
#   RELEASED_CACHE        cache root (default ~/.cache/released); binaries in $RELEASED_CACHE/k8s/bin
#   RELEASED_K8S_STATE    state dir of one plane (default /tmp/released-k8s)
#   KUBEBUILDER_ASSETS    dir with ready kube-apiserver/etcd/kubectl (setup-envtest); used first
#   RELEASED_K8S_TIMEOUT  seconds to wait for each component (default 120)
set -euo pipefail

K8S_VERSION=v1.20.2
K8S_MAJOR=1
K8S_MINOR=20
RECIPE=1 # bump when the build recipe changes, to invalidate the stamp

CACHE_ROOT="${RELEASED_CACHE:-$HOME/.cache/released}"
K8S_CACHE="$CACHE_ROOT/k8s"
BIN_DIR="$K8S_CACHE/bin"
STAMP="$BIN_DIR/.stamp"
STATE_DIR="${RELEASED_K8S_STATE:-/tmp/released-k8s}"
TIMEOUT="${RELEASED_K8S_TIMEOUT:-120}"
HOST=127.0.0.1

log() { printf '[control-plane %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# binaries

# Where a binary comes from: KUBEBUILDER_ASSETS first, then the cache.
bin_path() {
  local name=$1
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$name" ]]; then
    echo "$KUBEBUILDER_ASSETS/$name"
  else
    echo "$BIN_DIR/$name"
  fi
}

binaries_ready() {
  local name
  for name in etcd kube-apiserver kube-controller-manager; do
    if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$name" ]]; then continue; fi
    [[ -x "$BIN_DIR/$name" ]] || return 1
    [[ -f "$STAMP" ]] || return 1
    [[ "$(cat "$STAMP")" == "$K8S_VERSION recipe $RECIPE" ]] || return 1
  done
  return 0
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    as_root apt-get update -q >&2
    APT_UPDATED=1
  fi
}

ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    apt_update_once
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
}

ensure_deb_src() {
  local f=/etc/apt/sources.list.d/released-debian-src.sources
  if ! grep -rqsE '^(Types:.*deb-src|deb-src .*bookworm)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding a deb-src entry for bookworm in $f"
    as_root tee "$f" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_UPDATED=0
  fi
  apt_update_once
}

# The Debian source tree of kubernetes 1.20.2, unpacked once into $K8S_CACHE/src.
fetch_source() {
  local srcdir
  srcdir=$(find "$K8S_CACHE/src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' 2>/dev/null | head -n1 || true)
  if [[ -n "$srcdir" && -f "$srcdir/.released-unpacked" ]]; then
    echo "$srcdir"
    return
  fi
  ensure_deb_src
  rm -rf "$K8S_CACHE/src"
  mkdir -p "$K8S_CACHE/src"
  log "apt-get source kubernetes (into $K8S_CACHE/src)"
  (cd "$K8S_CACHE/src" && apt-get source -q kubernetes >&2)
  srcdir=$(find "$K8S_CACHE/src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [[ -n "$srcdir" && -d "$srcdir/cmd/kube-apiserver" ]] || die "apt-get source kubernetes gave no usable tree"
  touch "$srcdir/.released-unpacked"
  echo "$srcdir"
}

install_kubectl() {
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kubectl" ]]; then return; fi
  [[ -x "$BIN_DIR/kubectl" ]] && return
  # Debian's kubernetes-client is kubectl 1.20.2; extract it rather than install it, so it never
  # fights with another kubectl package over /usr/bin/kubectl.
  local tmp
  tmp=$(mktemp -d)
  apt_update_once
  log "fetching kubectl from Debian's kubernetes-client"
  if (cd "$tmp" && apt-get download -q kubernetes-client >&2) &&
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/x" &&
    [[ -x "$tmp/x/usr/bin/kubectl" ]]; then
    cp "$tmp/x/usr/bin/kubectl" "$BIN_DIR/kubectl.tmp"
    mv "$BIN_DIR/kubectl.tmp" "$BIN_DIR/kubectl"
  else
    log "kubernetes-client not available; kubectl will be built from source"
  fi
  rm -rf "$tmp"
}

do_build_locked() {
  mkdir -p "$BIN_DIR"
  if binaries_ready; then
    install_kubectl
    log "binaries ready in $BIN_DIR (stamp: $(cat "$STAMP" 2>/dev/null || echo KUBEBUILDER_ASSETS))"
    return
  fi
  local t0=$SECONDS
  log "building Kubernetes $K8S_VERSION control plane into $BIN_DIR (takes a while, once)"
  ensure_apt_packages golang-go etcd-server golang-github-modern-go-reflect2-dev dpkg-dev

  local srcdir
  srcdir=$(fetch_source)
  log "source tree: $srcdir"

  export GOPATH="$K8S_CACHE/gopath"
  export GO111MODULE=off
  export GOFLAGS=
  export GOCACHE="$K8S_CACHE/gocache"
  export CGO_ENABLED="${CGO_ENABLED:-0}"
  mkdir -p "$GOPATH/src/k8s.io"
  ln -sfn "$srcdir" "$GOPATH/src/k8s.io/kubernetes"
  local root="$GOPATH/src/k8s.io/kubernetes"
  cd "$root"

  # (2) reflect2 1.0.1 crashes under Go >= 1.18 when encoding maps: use Debian's 1.0.2.
  local r2src=/usr/share/gocode/src/github.com/modern-go/reflect2
  [[ -d "$r2src" ]] || die "$r2src missing (golang-github-modern-go-reflect2-dev)"
  if [[ ! -f vendor/github.com/modern-go/reflect2/.released-debian ]]; then
    log "replacing vendor/github.com/modern-go/reflect2 with Debian's reflect2 1.0.2"
    rm -rf vendor/github.com/modern-go/reflect2
    mkdir -p vendor/github.com/modern-go/reflect2
    cp -rL "$r2src"/. vendor/github.com/modern-go/reflect2/
    find vendor/github.com/modern-go/reflect2 -name '*_test.go' -delete
    touch vendor/github.com/modern-go/reflect2/.released-debian
  fi

  # (1) pkg/generated/openapi/zz_generated.openapi.go with the vendored openapi-gen.
  if [[ ! -s pkg/generated/openapi/zz_generated.openapi.go ]]; then
    log "building openapi-gen"
    go build -o "$K8S_CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2
    log "collecting openapi-gen inputs"
    local inputs
    inputs=$(grep -Rl --include='*.go' -e '+k8s:openapi-gen=' pkg vendor |
      xargs -n1 dirname | sort -u |
      grep -v -e 'k8s.io/code-generator' -e 'k8s.io/sample-apiserver' |
      sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
    [[ -n "$inputs" ]] || die "found no +k8s:openapi-gen= packages"
    log "generating pkg/generated/openapi/zz_generated.openapi.go ($(tr ',' '\n' <<<"$inputs" | wc -l) packages)"
    mkdir -p pkg/generated/openapi
    "$K8S_CACHE/openapi-gen" \
      --input-dirs "$inputs" \
      --output-package k8s.io/kubernetes/pkg/generated/openapi \
      --output-base "$GOPATH/src" \
      --output-file-base zz_generated.openapi \
      --go-header-file hack/boilerplate/boilerplate.generatego.txt \
      --report-filename "$K8S_CACHE/openapi-violations.report" >&2
    [[ -s pkg/generated/openapi/zz_generated.openapi.go ]] || die "openapi-gen produced nothing"
  fi

  # (3) version ldflags, so /version reports v1.20.2.
  local ldflags="-s -w" pkgv
  for pkgv in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
    k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkgv.gitVersion=$K8S_VERSION -X $pkgv.gitMajor=$K8S_MAJOR -X $pkgv.gitMinor=$K8S_MINOR"
    ldflags+=" -X $pkgv.gitTreeState=clean -X $pkgv.buildDate=1970-01-01T00:00:00Z"
  done

  local cmd
  for cmd in kube-apiserver kube-controller-manager; do
    log "go build ./cmd/$cmd"
    local tc=$SECONDS
    go build -ldflags "$ldflags" -o "$BIN_DIR/$cmd.tmp" "./cmd/$cmd" >&2
    mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    log "built $cmd in $((SECONDS - tc))s"
  done
  ln -sfn "$(command -v etcd)" "$BIN_DIR/etcd"

  install_kubectl
  if [[ ! -x "$BIN_DIR/kubectl" ]]; then
    log "go build ./cmd/kubectl"
    go build -ldflags "$ldflags" -o "$BIN_DIR/kubectl.tmp" ./cmd/kubectl >&2
    mv "$BIN_DIR/kubectl.tmp" "$BIN_DIR/kubectl"
  fi

  echo "$K8S_VERSION recipe $RECIPE" >"$STAMP"
  log "build done in $((SECONDS - t0))s"
}

do_build() {
  mkdir -p "$K8S_CACHE"
  # One build at a time (parallel test sessions may call start together).
  exec 9>"$K8S_CACHE/.build.lock"
  flock 9
  (do_build_locked)
  flock -u 9
  exec 9>&-
}
