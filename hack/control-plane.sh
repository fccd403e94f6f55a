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
#   RELEASED_KCM_API_QPS  the controller-manager's API rate (default 20, its own default; the
#                         operator benchmark raises it to create thousands of pods)
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

LOG_TAG=control-plane
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

# ---------------------------------------------------------------------------------------------
# certificates and kubeconfigs

free_ports() { # N -> N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

gen_certs() {
  local d="$STATE_DIR/pki"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=released-test-ca" >/dev/null 2>&1
    # client_cert NAME SUBJECT [EXTFILE]
    sign() {
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" >/dev/null 2>&1
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 3650 -extfile "$1.ext" >/dev/null 2>&1
      rm -f "$1.csr"
    }
    cat >apiserver.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
    sign apiserver "/CN=kube-apiserver"
    local client
    for client in admin controller-manager front-proxy-client; do
      printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
        'extendedKeyUsage=clientAuth' >"$client.ext"
    done
    sign admin "/O=system:masters/CN=admin"
    sign controller-manager "/CN=system:kube-controller-manager"
    # The aggregation layer's client identity (front proxy), for aggregated API servers.
    sign front-proxy-client "/CN=front-proxy-client"
    # Service-account token signing key pair.
    openssl genrsa -out sa.key 2048 >/dev/null 2>&1
    openssl rsa -in sa.key -pubout -out sa.pub >/dev/null 2>&1
    rm -f ./*.ext ca.srl
  )
  # A static admin token as well, for clients that prefer a bearer token.
  head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE_DIR/admin.token"
  printf '%s,admin,admin-token,system:masters\n' "$(cat "$STATE_DIR/admin.token")" >"$d/tokens.csv"
  chmod 600 "$d"/*.key "$d/tokens.csv" "$STATE_DIR/admin.token"
}

write_kubeconfig() { # FILE USER CERTNAME SERVER
  local file=$1 user=$2 cert=$3 server=$4 d="$STATE_DIR/pki"
  cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: released-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$d/$cert.crt")
    client-key-data: $(base64 -w0 <"$d/$cert.key")
contexts:
- name: released-test
  context:
    cluster: released-test
    user: $user
    namespace: default
current-context: released-test
KCFG
  chmod 600 "$file"
}

# ---------------------------------------------------------------------------------------------
# processes

COMPONENTS=(kube-controller-manager kube-apiserver etcd) # stop order

pid_alive() { # NAME -> 0 when the recorded process runs
  local f="$STATE_DIR/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(cat "$f")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must still be ours.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1" || return 1
}

launch() { # NAME BINARY ARGS...
  local name=$1
  shift
  log "starting $name (log: $STATE_DIR/$name.log)"
  setsid "$@" </dev/null >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
}

fail_with_log() { # NAME MESSAGE
  log "$2"
  if [[ -f "$STATE_DIR/$1.log" ]]; then
    log "last lines of $STATE_DIR/$1.log:"
    tail -n 40 "$STATE_DIR/$1.log" >&2
  fi
  stop_processes
  die "$2 (state kept in $STATE_DIR)"
}

wait_for() { # NAME DESCRIPTION COMMAND...
  local name=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || fail_with_log "$name" "$name exited while waiting for $what"
    ((SECONDS < deadline)) || fail_with_log "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.3
  done
}

stop_processes() {
  local name pid i
  for name in "${COMPONENTS[@]}"; do
    if pid_alive "$name"; then
      pid=$(cat "$STATE_DIR/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -KILL "$pid" 2>/dev/null || true
      log "stopped $name (pid $pid)"
    fi
    rm -f "$STATE_DIR/$name.pid"
  done
}

running() { pid_alive kube-apiserver && [[ -f "$STATE_DIR/kubeconfig" ]]; }

export_line() { echo "export KUBECONFIG=$STATE_DIR/kubeconfig"; }

curl_admin() { # PATH -> body
  curl -sf --max-time 5 --cacert "$STATE_DIR/pki/ca.crt" --cert "$STATE_DIR/pki/admin.crt" \
    --key "$STATE_DIR/pki/admin.key" "$(cat "$STATE_DIR/server")$1"
}

readyz_ok() { [[ "$(curl_admin /readyz)" == ok ]]; }
etcd_ok() { curl -sf --max-time 5 "http://$HOST:$1/health" | grep -q '"health":"true"'; }
kcm_ok() { [[ "$(curl -sfk --max-time 5 "https://$HOST:$1/healthz")" == ok ]]; }
# The token controller has given the default service account its token secret.
default_sa_ok() { curl_admin /api/v1/namespaces/default/serviceaccounts/default | grep -q '"secrets"'; }

do_start() {
  STATE_DIR=$(mkdir -p "$STATE_DIR" && cd "$STATE_DIR" && pwd)
  if running; then
    log "already running in $STATE_DIR"
    export_line
    return
  fi
  stop_processes
  if [[ -n "$(ls -A "$STATE_DIR")" && ! -f "$STATE_DIR/.released-k8s-state" ]]; then
    die "$STATE_DIR is not empty and is not a control-plane state dir; refusing to wipe it"
  fi
  find "$STATE_DIR" -mindepth 1 -delete
  touch "$STATE_DIR/.released-k8s-state"

  if ! binaries_ready; then do_build; fi
  local etcd apiserver kcm
  etcd=$(bin_path etcd)
  apiserver=$(bin_path kube-apiserver)
  kcm=$(bin_path kube-controller-manager)
  local t0=$SECONDS

  gen_certs
  local etcd_port peer_port api_port kcm_port
  read -r etcd_port peer_port api_port kcm_port <<<"$(free_ports 4)"
  local server="https://$HOST:$api_port"
  echo "$server" >"$STATE_DIR/server"
  write_kubeconfig "$STATE_DIR/kubeconfig" admin admin "$server"
  write_kubeconfig "$STATE_DIR/controller-manager.kubeconfig" system:kube-controller-manager \
    controller-manager "$server"
  local pki="$STATE_DIR/pki"

  launch etcd "$etcd" \
    --name released-test \
    --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "http://$HOST:$etcd_port" \
    --advertise-client-urls "http://$HOST:$etcd_port" \
    --listen-peer-urls "http://$HOST:$peer_port" \
    --initial-advertise-peer-urls "http://$HOST:$peer_port" \
    --initial-cluster "released-test=http://$HOST:$peer_port" \
    --log-level warn
  wait_for etcd "etcd health on port $etcd_port" etcd_ok "$etcd_port"

  # No kubelets run here: the endpoint reconciler would try to publish 127.0.0.1 as the
  # kubernetes service endpoint, which validation refuses, so it is off.
  launch kube-apiserver "$apiserver" \
    --advertise-address "$HOST" \
    --bind-address "$HOST" \
    --secure-port "$api_port" \
    --insecure-port 0 \
    --etcd-servers "http://$HOST:$etcd_port" \
    --cert-dir "$STATE_DIR/apiserver-certs" \
    --tls-cert-file "$pki/apiserver.crt" \
    --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --token-auth-file "$pki/tokens.csv" \
    --requestheader-client-ca-file "$pki/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" \
    --proxy-client-key-file "$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --authorization-mode RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.0.0.0/16 \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --profiling=false \
    --v 1
  wait_for kube-apiserver "/readyz on $server" readyz_ok

  # nodelifecycle is off: no kubelet sends heartbeats, so it would mark every (fake) node
  # unreachable and its pods not ready. Everything else runs, garbage collection included.
  launch kube-controller-manager "$kcm" \
    --kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --bind-address "$HOST" \
    --secure-port "$kcm_port" \
    --port 0 \
    --cert-dir "$STATE_DIR/controller-manager-certs" \
    --leader-elect=false \
    --controllers '*,-nodelifecycle' \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$pki/ca.crt" \
    --cluster-signing-key-file "$pki/ca.key" \
    --kube-api-qps "${RELEASED_KCM_API_QPS:-20}" \
    --kube-api-burst "$(( ${RELEASED_KCM_API_QPS:-20} * 3 / 2 ))" \
    --profiling=false \
    --v 1
  wait_for kube-controller-manager "controller-manager /healthz on port $kcm_port" kcm_ok "$kcm_port"
  wait_for kube-controller-manager "the default service account and its token" default_sa_ok

  log "control plane ready in $((SECONDS - t0))s: $server (state: $STATE_DIR)"
  export_line
}

do_stop() {
  if [[ -d "$STATE_DIR" ]]; then
    stop_processes
    if [[ -n "$(ls -A "$STATE_DIR")" && ! -f "$STATE_DIR/.released-k8s-state" ]]; then
      die "$STATE_DIR is not a control-plane state dir; not removing it"
    fi
    rm -rf "$STATE_DIR"
    log "removed $STATE_DIR"
  else
    log "nothing to stop in $STATE_DIR"
  fi
}

do_env() {
  running || die "no control plane runs in $STATE_DIR (run: $0 start)"
  export_line
}

usage() {
  echo "usage: $0 start|stop|env|build" >&2
  exit 2
}

case "${1:-}" in
build) do_build ;;
start) do_start ;;
stop) do_stop ;;
env) do_env ;;
*) usage ;;
esac
