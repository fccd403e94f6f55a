#!/usr/bin/env bash
# A real worker node for the local control plane (hack/control-plane.sh): kube-scheduler, a
# kubelet on containerd + runc, CNI bridge networking with a pod CIDR, Services through
# kube-proxy (iptables), cluster DNS for Service names, `kubectl logs/exec/port-forward`, and the
# project's images built with buildah from the real Dockerfile. See tests/README.md
# ("The real node") for what it is and what it costs.
#
#   hack/node.sh build    apt packages, kubelet/kube-scheduler/kube-proxy, images (cached)
#   hack/node.sh images   only the images (pause, base, released, redis, postgres; cached)
#   hack/node.sh up       start the node against the plane in RELEASED_K8S_STATE; last stdout
#                         lines: the export lines of `env`
#   hack/node.sh env      print export lines: KUBECONFIG and the image names (RELEASED_E2E_*)
#   hack/node.sh cost     memory and CPU of the cluster's processes, measured over N s (10)
#   hack/node.sh down     stop everything and undo every change to the machine
#
# Everything runs on this machine and nothing it starts listens beyond 127.0.0.1, except on
# the pod network's gateway (DNS, the API relay), which only pods reach. Pod and Service
# addresses never leave the machine: the Service range is routed into the bridge, the rest of
# the cluster CIDR is unreachable, and a FORWARD chain rejects whatever pods would route out.
# Needs root (containerd, network namespaces, iptables), cgroups and overlayfs.
#
# Environment:
#   RELEASED_CACHE        cache root (default ~/.cache/released): binaries in k8s/bin, images
#                         and buildah's storage in node/
#   RELEASED_K8S_STATE    the control plane's state dir (default /tmp/released-k8s)
#   RELEASED_NODE_STATE   the node's state dir (default /tmp/released-node)
#   RELEASED_NODE_TIMEOUT seconds to wait for each component (default 180)
#   DEBIAN_MIRROR         for debootstrap and the images' apt (default http://deb.debian.org/debian)
set -euo pipefail

K8S_VERSION=v1.20.2
NODE_RECIPE=1  # bump when the binaries' build changes

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HACK_DIR/.." && pwd)
CACHE_ROOT="${RELEASED_CACHE:-$HOME/.cache/released}"
K8S_CACHE="$CACHE_ROOT/k8s"
BIN_DIR="$K8S_CACHE/bin"
NODE_CACHE="$CACHE_ROOT/node"
IMAGES_DIR="$NODE_CACHE/images"
# containerd's content and snapshots persist in the cache, so imported images survive `down`.
CONTAINERD_ROOT="$NODE_CACHE/containerd"
CP="${RELEASED_K8S_STATE:-/tmp/released-k8s}"
S="${RELEASED_NODE_STATE:-/tmp/released-node}"
TIMEOUT="${RELEASED_NODE_TIMEOUT:-180}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

POD_SUBNET=10.244.0.0/24 # this node's pods
POD_GW=10.244.0.1        # the bridge's address: DNS and the API relay listen here
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.0.0.0/16 # control-plane.sh's --service-cluster-ip-range
BRIDGE=cni0
CONFINE_CHAIN=CNI-RELEASED-CONFINE
SOCK=/run/released-containerd/containerd.sock
NODE_NAME=$(hostname)

PAUSE_IMAGE=localhost/pause:3.4.1
BASE_IMAGE=localhost/debian-python:bookworm
REDIS_IMAGE=localhost/redis:7-debian
POSTGRES_IMAGE=localhost/postgres:15-debian

# Debian packages of the node and of the image builds.
NODE_APT_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack socat buildah
  debootstrap dnsmasq-base gcc libc6-dev)

LOG_TAG=node
# shellcheck source=hack/lib.sh
source "$HACK_DIR/lib.sh"

need_root() { [[ $(id -u) -eq 0 ]] || die "needs root (containerd, network namespaces, iptables)"; }

timed() { # NAME COMMAND...: run, then log how long it took
  local name=$1 t0=$SECONDS
  shift
  "$@"
  log "$name: $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# binaries: kubelet, kube-scheduler, kube-proxy from the tree hack/control-plane.sh built

NODE_BINARIES=(kube-scheduler kubelet kube-proxy)
NODE_STAMP="$BIN_DIR/.node-stamp"

node_binaries_ready() {
  local b
  for b in "${NODE_BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  [[ "$(cat "$NODE_STAMP" 2>/dev/null)" == "$K8S_VERSION node recipe $NODE_RECIPE" ]]
}

build_binaries_locked() {
  node_binaries_ready && return
  export GOPATH="$K8S_CACHE/gopath" GO111MODULE=off GOFLAGS= GOCACHE="$K8S_CACHE/gocache"
  export CGO_ENABLED="${CGO_ENABLED:-0}"
  local root="$GOPATH/src/k8s.io/kubernetes"
  [[ -d "$root/cmd/kubelet" && -f "$root/vendor/github.com/modern-go/reflect2/.released-debian" ]] ||
    die "no prepared Kubernetes tree in $root (hack/control-plane.sh build makes it)"
  local ldflags="-s -w" pkgv cmd t0
  for pkgv in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
    k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkgv.gitVersion=$K8S_VERSION -X $pkgv.gitMajor=1 -X $pkgv.gitMinor=20"
    ldflags+=" -X $pkgv.gitTreeState=clean -X $pkgv.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in "${NODE_BINARIES[@]}"; do
    t0=$SECONDS
    (cd "$root" && go build -ldflags "$ldflags" -o "$BIN_DIR/$cmd.tmp" "./cmd/$cmd" >&2)
    mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    log "built $cmd in $((SECONDS - t0)) s"
  done
  echo "$K8S_VERSION node recipe $NODE_RECIPE" >"$NODE_STAMP"
}

build_binaries() {
  bash "$HACK_DIR/control-plane.sh" build
  node_binaries_ready && return
  # The control plane's build lock: one go build of the tree at a time.
  exec 9>"$K8S_CACHE/.build.lock"
  flock 9
  (build_binaries_locked)
  flock -u 9
  exec 9>&-
}

# ---------------------------------------------------------------------------------------------
# images, without Docker and without a registry: buildah with its own storage in the cache;
# each image is kept as a docker archive ($IMAGES_DIR/NAME.tar) that `up` imports into
# containerd. An image is rebuilt only when its key changes: its recipe's version (bump it
# when the recipe changes), its inputs and the base's key.

B() { buildah --root "$NODE_CACHE/buildah/root" --runroot "$NODE_CACHE/buildah/run" --storage-driver overlay "$@"; }
# --network=host: RUN steps use the host's network (buildah's default makes a CNI bridge,
# iptables chains and turns on ip_forward). --pull=never: FROM names resolve locally only.
BUD=(bud --pull=never --network=host --layers=false)
WORK="$NODE_CACHE/work"

image_key_file() { echo "$IMAGES_DIR/$1.key"; }
image_fresh() { # NAME KEY
  [[ -f "$IMAGES_DIR/$1.tar" && "$(cat "$(image_key_file "$1")" 2>/dev/null)" == "$2" ]]
}
export_image() { # NAME REF KEY
  rm -f "$IMAGES_DIR/$1.tar" "$(image_key_file "$1")"
  B push -q "$2" "docker-archive:$IMAGES_DIR/$1.tar.tmp:$2" >/dev/null
  mv "$IMAGES_DIR/$1.tar.tmp" "$IMAGES_DIR/$1.tar"
  echo "$2" >"$IMAGES_DIR/$1.ref"
  echo "$3" >"$(image_key_file "$1")"
}

# The sandbox ("pause") container: Kubernetes' own pause.c from the source tree.
image_pause() {
  local src="$K8S_CACHE/gopath/src/k8s.io/kubernetes/build/pause/linux/pause.c" key
  key="pause 1 $(sha256sum "$src" | cut -c1-16)"
  image_fresh pause "$key" && return
  mkdir -p "$WORK/pause"
  gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-released -o "$WORK/pause/pause" "$src"
  strip "$WORK/pause/pause"
  local c
  c=$(B from scratch)
  B copy "$c" "$WORK/pause/pause" /pause >/dev/null
  B config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  B commit -q --rm "$c" "$PAUSE_IMAGE" >/dev/null
  export_image pause "$PAUSE_IMAGE" "$key"
}

# The base: Debian bookworm (minbase) with its Python 3.11, tagged with the names the
# Dockerfile's FROM uses (python:3.11-slim-bookworm), so the real Dockerfile builds unchanged.
base_key() { echo "base 1 bookworm $(sha256sum /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)"; }
image_base() {
  local key r="$WORK/rootfs"
  key=$(base_key)
  if [[ "$(cat "$(image_key_file base)" 2>/dev/null)" == "$key" ]] && B inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  rm -rf "$r"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$r" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # Where TLS to PyPI is intercepted, the machine's extra CAs sit here: pip in the build needs them.
  cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$r" update-ca-certificates >/dev/null 2>&1
  chroot "$r" apt-get clean
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/* "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/locale/*
  local c m
  c=$(B from scratch)
  m=$(B mount "$c")
  cp -a "$r"/. "$m"/
  B umount "$c" >/dev/null
  B config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$c"
  B commit -q --rm "$c" "$BASE_IMAGE" >/dev/null
  B tag "$BASE_IMAGE" docker.io/library/python:3.11-slim-bookworm docker.io/library/python:3.11-slim
  rm -rf "$r"
  mkdir -p "$IMAGES_DIR"
  echo "$key" >"$(image_key_file base)"
}

# The key of the project's image: the Dockerfile and everything it copies (as .dockerignore
# filters it), and the base. Also its tag, so a changed checkout gets a new image name.
released_key() {
  (
    cd "$REPO_ROOT"
    echo "released 1 $(base_key)"
    find Dockerfile .dockerignore pyproject.toml requirements.lock README.md bot released operator \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
      ! -path '*/.pytest_cache/*' ! -path '*/.mypy_cache/*' ! -path '*/.ruff_cache/*' ! -name '*.db' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-12
}
released_ref() { echo "localhost/released:$(released_key)"; }
# One archive per key (released-KEY.tar): worktrees of the same machine share the cache, and
# each one's `up` imports the image of its own sources.
image_released() {
  local key ref
  key=$(released_key)
  ref="localhost/released:$key"
  image_fresh "released-$key" "$key" && return
  B "${BUD[@]}" -t "$ref" "$REPO_ROOT" >"$WORK/released-build.log" 2>&1 ||
    { tail -30 "$WORK/released-build.log" >&2; die "buildah bud of the project's Dockerfile failed (log: $WORK/released-build.log)"; }
  export_image "released-$key" "$ref" "$key"
  # The archive is the cache: buildah's copy goes, and so do all but the newest archives.
  B rmi "$ref" >/dev/null 2>&1 || true
  local old
  for old in $(ls -t "$IMAGES_DIR"/released-*.tar | tail -n +5); do
    rm -f "$old" "${old%.tar}.key" "${old%.tar}.ref"
  done
}

# Redis from Debian's redis-server: the operator's Redis pod runs `sh -c ... redis-server` and
# probes with redis-cli, like the official image.
image_redis() {
  local key="redis 1 $(base_key)" d="$WORK/redis"
  image_fresh redis "$key" && return
  mkdir -p "$d"
  cat >"$d/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
  B "${BUD[@]}" -q -t "$REDIS_IMAGE" "$d" >"$WORK/redis-build.log" 2>&1 ||
    { tail -30 "$WORK/redis-build.log" >&2; die "redis image failed"; }
  export_image redis "$REDIS_IMAGE" "$key"
}

# PostgreSQL from Debian's postgresql, started like the official image: POSTGRES_PASSWORD (and
# POSTGRES_USER, PGDATA) in the environment, a fresh cluster initialised on first start.
image_postgres() {
  local key="postgres 3 $(base_key)" d="$WORK/postgres"
  image_fresh postgres "$key" && return
  mkdir -p "$d"
  cat >"$d/entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user="${POSTGRES_USER:-postgres}"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
bin=$(echo /usr/lib/postgresql/*/bin)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  pw=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  "$bin/initdb" -U "$user" --pwfile="$pw" --auth-host=scram-sha-256 --auth-local=trust -E UTF8 >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi
exec "$bin/postgres" -c listen_addresses='*' -c unix_socket_directories=/tmp -c jit=off "$@"
EOF
  cat >"$d/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \\
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/* /etc/postgresql/* /usr/share/locale/* /usr/share/i18n \
       /usr/lib/x86_64-linux-gnu/libLLVM* /usr/lib/x86_64-linux-gnu/libz3* /usr/lib/postgresql/*/lib/llvmjit* \
       /usr/lib/postgresql/*/lib/bitcode /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /var/lib/postgresql/data && chown -R postgres:postgres /var/lib/postgresql \
    && ln -s /usr/lib/postgresql/*/bin/* /usr/local/bin/
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
EOF
  B "${BUD[@]}" -q -t "$POSTGRES_IMAGE" "$d" >"$WORK/postgres-build.log" 2>&1 ||
    { tail -30 "$WORK/postgres-build.log" >&2; die "postgres image failed"; }
  export_image postgres "$POSTGRES_IMAGE" "$key"
}

IMAGES=(pause base released redis postgres)

do_images() {
  need_root
  mkdir -p "$IMAGES_DIR" "$WORK" "$NODE_CACHE/buildah"
  # buildah (containers/common) creates /etc/cni/net.d/cni.lock and /var/lib/cni even with
  # --network=host: remove them afterwards when they were not there before.
  local created=() d
  for d in /etc/cni /var/lib/cni; do [[ -e "$d" ]] || created+=("$d"); done
  # shellcheck disable=SC2064
  trap "rm -rf ${created[*]:-/nonexistent-released}" EXIT
  # One build at a time (test sessions of several worktrees share the cache).
  exec 8>"$NODE_CACHE/.images.lock"
  flock 8
  local name
  for name in "$@"; do timed "image $name" "image_$name"; done
  flock -u 8
}

do_build() {
  need_root
  local t0=$SECONDS
  timed "Debian packages" ensure_apt_packages "${NODE_APT_PACKAGES[@]}"
  timed "kubelet, kube-scheduler, kube-proxy" build_binaries
  do_images "${IMAGES[@]}"
  log "build: $((SECONDS - t0)) s (binaries in $BIN_DIR, images in $IMAGES_DIR)"
}

# ---------------------------------------------------------------------------------------------
# the node

alive() { [[ -f "$S/$1.pid" ]] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }

launch() { # NAME COMMAND...
  local n=$1
  shift
  if alive "$n"; then return; fi
  setsid "$@" </dev/null >"$S/logs/$n.log" 2>&1 &
  echo $! >"$S/$n.pid"
}

wait_for() { # NAME WHAT COMMAND...
  local n=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$n" || { tail -n 30 "$S/logs/$n.log" >&2; die "$n exited while waiting for $what (log: $S/logs/$n.log)"; }
    ((SECONDS < deadline)) || { tail -n 30 "$S/logs/$n.log" >&2; die "timed out waiting for $what"; }
    sleep 0.5
  done
}

K() { "$BIN_DIR/kubectl" --kubeconfig "$CP/kubeconfig" "$@"; }

sign() { # NAME SUBJECT EXT...: a key and certificate signed by the control plane's CA
  local n=$1 subj=$2
  shift 2
  [[ -f "$S/pki/$n.crt" ]] && return
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' "$@" >"$S/pki/$n.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$S/pki/$n.key" -out "$S/pki/$n.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$S/pki/$n.csr" -CA "$CP/pki/ca.crt" -CAkey "$CP/pki/ca.key" -CAcreateserial \
    -CAserial "$S/pki/ca.srl" -out "$S/pki/$n.crt" -days 3650 -extfile "$S/pki/$n.ext" 2>/dev/null
  rm -f "$S/pki/$n.csr" "$S/pki/$n.ext"
  chmod 600 "$S/pki/$n.key"
}

component_kubeconfig() { # FILE USER CERT
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: released-test
  cluster: {server: $(cat "$CP/server"), certificate-authority: $CP/pki/ca.crt}
users:
- name: $2
  user: {client-certificate: $S/pki/$3.crt, client-key: $S/pki/$3.key}
contexts:
- name: released-test
  context: {cluster: released-test, user: $2}
current-context: released-test
EOF
}

SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# System paths the components create outside $S (the kubelet hard-wires some).
SYSTEM_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/netns /run/containerd
  /run/released-containerd /var/lib/cni /etc/cni /opt/cni)

record_machine() {
  # What `down` restores: the sysctls the node (or its components) change, the system paths
  # that existed, and the br_netfilter module (kube-proxy loads it).
  [[ -f "$S/sysctl.orig" ]] && return
  modprobe br_netfilter 2>/dev/null || true
  local k
  for k in "${SYSCTLS[@]}"; do
    [[ -e "/proc/sys/${k//.//}" ]] && echo "$k=$(sysctl -n "$k")"
  done >"$S/sysctl.orig"
  for k in "${SYSTEM_PATHS[@]}"; do [[ -e "$k" ]] && echo "$k"; done >"$S/paths.orig" || true
}

write_containerd_config() {
  cat >"$S/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$S/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE, so nothing may lower its oom_score_adj below 0 and runc
  # dies on the CRI default of -998 for sandboxes: clamp to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
EOF
  cat >"$S/cni/net.d/10-released.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "released",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

confine_network() {
  # The bridge made up front (the bridge plugin adopts it), so that the Service range can be
  # routed into it: a ClusterIP kube-proxy does not (yet) translate then dies on the bridge
  # instead of leaving by the default route. The rest of the cluster CIDR is unreachable.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$POD_GW/${POD_SUBNET#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  ip route replace unreachable "$CLUSTER_CIDR"
  # Pods have no business beyond this machine: reject whatever they would route out of the
  # bridge (the bridge plugin turns on ip_forward). Pod to pod and pod to host are untouched.
  if ! iptables -n -L "$CONFINE_CHAIN" >/dev/null 2>&1; then
    iptables -N "$CONFINE_CHAIN"
    iptables -A "$CONFINE_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j REJECT
    iptables -A "$CONFINE_CHAIN" -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -j REJECT
  fi
  iptables -C FORWARD -j "$CONFINE_CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$CONFINE_CHAIN"
}

do_up() {
  need_root
  [[ -f "$CP/kubeconfig" && -f "$CP/pki/ca.key" ]] || die "no control plane in $CP (hack/control-plane.sh start)"
  node_binaries_ready || die "no node binaries (hack/node.sh build)"
  [[ -f "$IMAGES_DIR/pause.tar" && -f "$IMAGES_DIR/released-$(released_key).tar" ]] ||
    die "no images of this checkout (hack/node.sh build)"
  getent hosts "$NODE_NAME" >/dev/null || die "the node name $NODE_NAME does not resolve (the API server reaches the kubelet by it)"
  if [[ -d "$S" && -n "$(ls -A "$S")" && ! -f "$S/.released-node-state" ]]; then
    die "$S is not empty and is not a node state dir"
  fi
  if [[ -f "$S/server" && "$(cat "$S/server")" != "$(cat "$CP/server")" ]]; then
    die "a node of another control plane runs from $S (hack/node.sh down first)"
  fi
  local other
  other=$(pgrep -f -- "--container-runtime-endpoint unix://$SOCK" | head -n1 || true)
  if [[ -n "$other" ]] && ! alive kubelet; then die "a kubelet of another node state runs (pid $other)"; fi
  local t0=$SECONDS node_ip kubelet_addr=0.0.0.0
  node_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  [[ -n "$node_ip" ]] || node_ip=$(hostname -I | awk '{print $1}')
  [[ -n "$node_ip" ]] || die "no IPv4 address for the node"
  # The API server dials the kubelet by the node name: listen where that name resolves.
  getent hosts "$NODE_NAME" | grep -q '^127\.' && kubelet_addr=127.0.0.1

  mkdir -p "$S"/{pki,logs,cni/net.d,cni/ipam,kubelet,containerd,dns,pv}
  touch "$S/.released-node-state"
  cp "$CP/server" "$S/server"
  record_machine

  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" 'extendedKeyUsage=clientAuth'
  sign kube-scheduler "/CN=system:kube-scheduler" 'extendedKeyUsage=clientAuth'
  sign kube-proxy "/CN=system:kube-proxy" 'extendedKeyUsage=clientAuth'
  sign kubelet-serving "/CN=$NODE_NAME" 'extendedKeyUsage=serverAuth' \
    "subjectAltName=DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$node_ip"
  component_kubeconfig "$S/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  component_kubeconfig "$S/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  component_kubeconfig "$S/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  # The plane authorizes with RBAC only: the nodes group gets what the Node authorizer grants.
  K get clusterrolebinding released-node-kubelets >/dev/null 2>&1 ||
    K create clusterrolebinding released-node-kubelets --clusterrole=system:node --group=system:nodes >/dev/null

  write_containerd_config
  confine_network
  mkdir -p "$(dirname "$SOCK")"
  launch containerd containerd --config "$S/containerd/config.toml"
  wait_for containerd "containerd's socket" ctr -a "$SOCK" version
  import_images

  launch kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$S/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$S/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$S/kube-scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259 --port 0 \
    --cert-dir "$S/kube-scheduler-certs" --v 1

  # Cluster DNS: dnsmasq on the pod gateway answers NAME.NS.svc.cluster.local from a hosts file
  # that the dns-sync loop writes from the Services (no CoreDNS in Debian). --no-resolv: names
  # outside the cluster are not looked up anywhere.
  launch dns-sync bash "$HACK_DIR/node.sh" _dns-sync
  launch dnsmasq dnsmasq --keep-in-foreground --user=root --conf-file=/dev/null --no-resolv \
    --listen-address="$POD_GW" --bind-interfaces --no-hosts --hostsdir="$S/dns" \
    --local=/cluster.local/ --domain-needed --pid-file="$S/dnsmasq.pidfile" --log-facility=-

  launch kubelet "$BIN_DIR/kubelet" \
    --kubeconfig "$S/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$node_ip" \
    --container-runtime remote --container-runtime-endpoint "unix://$SOCK" --containerd "$SOCK" \
    --runtime-request-timeout 5m \
    --cgroup-driver cgroupfs --fail-swap-on=false --oom-score-adj 0 \
    --root-dir "$S/kubelet" --cert-dir "$S/kubelet/pki" \
    --tls-cert-file "$S/pki/kubelet-serving.crt" --tls-private-key-file "$S/pki/kubelet-serving.key" \
    --client-ca-file "$CP/pki/ca.crt" \
    --volume-plugin-dir "$S/kubelet/volume-plugins" \
    --pod-cidr "$POD_SUBNET" --cluster-domain cluster.local --cluster-dns "$POD_GW" \
    --address "$kubelet_addr" --port 10250 --read-only-port 0 \
    --healthz-port 10248 --healthz-bind-address 127.0.0.1 \
    --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --eviction-hard 'memory.available<100Mi,nodefs.available<1%,imagefs.available<1%' \
    --v 1
  wait_for kubelet "node $NODE_NAME Ready" node_ready
  # The API server's TaintNodesByCondition gives a new node the not-ready taint; the node
  # lifecycle controller would lift it, but the control plane runs without it.
  if K get node "$NODE_NAME" -o jsonpath='{.spec.taints[*].key}' | grep -qw node.kubernetes.io/not-ready; then
    K taint node "$NODE_NAME" node.kubernetes.io/not-ready:NoSchedule- >/dev/null
  fi

  launch kube-proxy "$BIN_DIR/kube-proxy" \
    --kubeconfig "$S/kube-proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --oom-score-adj 0 --cluster-cidr "$CLUSTER_CIDR" \
    --nodeport-addresses 127.0.0.0/8 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 --v 1
  wait_for kube-proxy "kube-proxy's /healthz" curl -sf --max-time 2 http://127.0.0.1:10256/healthz
  # kube-proxy puts its FORWARD rules first: the confinement goes back in front of them.
  iptables -D FORWARD -j "$CONFINE_CHAIN" 2>/dev/null || true
  iptables -I FORWARD 1 -j "$CONFINE_CHAIN"

  # In-cluster clients (the operator's pod) reach the API through the kubernetes Service: the
  # plane listens on 127.0.0.1 only, so a relay on the pod gateway is its endpoint.
  launch api-relay socat "TCP-LISTEN:6443,bind=$POD_GW,fork,reuseaddr" "TCP:127.0.0.1:$(sed 's/.*://' "$CP/server")"
  K apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets:
- addresses: [{ip: $POD_GW}]
  ports: [{name: https, port: 6443, protocol: TCP}]
EOF
  # Volumes: a hostPath PersistentVolume under $S/pv for each claim that waits for one.
  launch volumes bash "$HACK_DIR/node.sh" _volumes
  log "node $NODE_NAME Ready in $((SECONDS - t0)) s; idle memory: $(cluster_rss) MiB (hack/node.sh cost)"
  do_env
}

import_images() {
  # Each archive once per key (the store persists); project images of other keys are removed.
  local ti=$SECONDS name ref imported="$CONTAINERD_ROOT/.released-imported" n=0
  mkdir -p "$imported"
  for name in pause redis postgres "released-$(released_key)"; do
    [[ -f "$IMAGES_DIR/$name.tar" ]] || die "no image archive $IMAGES_DIR/$name.tar (hack/node.sh build)"
    ref=$(cat "$IMAGES_DIR/$name.ref")
    if [[ "$(cat "$imported/$name" 2>/dev/null)" != "$(cat "$(image_key_file "$name")")" ]] ||
      ! ctr -a "$SOCK" -n k8s.io images ls -q | grep -qxF "$ref"; then
      ctr -a "$SOCK" -n k8s.io images import "$IMAGES_DIR/$name.tar" >/dev/null
      cp "$(image_key_file "$name")" "$imported/$name"
      n=$((n + 1))
    fi
  done
  ctr -a "$SOCK" -n k8s.io images ls -q | grep '^localhost/released:' | grep -vxF "$ref" |
    xargs -r ctr -a "$SOCK" -n k8s.io images rm >/dev/null || true
  find "$imported" -name 'released-*' ! -name "$name" -delete
  log "images: $n imported in $((SECONDS - ti)) s"
}

node_ready() {
  K get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

# The internal loops `up` starts (they run until `down` stops them).
dns_sync_loop() {
  local prev="" cur
  while true; do
    cur=$(K get svc -A -o jsonpath='{range .items[?(@.spec.clusterIP!="None")]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}' 2>/dev/null) || cur=$prev
    if [[ "$cur" != "$prev" ]]; then
      printf '%s\n' "$cur" >"$S/dns/.services.tmp" && mv "$S/dns/.services.tmp" "$S/dns/services"
      prev=$cur
    fi
    sleep 1
  done
}

volumes_loop() {
  # A static stand-in for a local-path provisioner: claims without a class get a hostPath
  # volume bound to them; released volumes are deleted with their directory.
  local ns name size pv
  while true; do
    K get pvc -A -o jsonpath='{range .items[?(@.status.phase=="Pending")]}{.metadata.namespace} {.metadata.name} {.spec.resources.requests.storage} {.spec.storageClassName}{"\n"}{end}' 2>/dev/null |
      while read -r ns name size class; do
        [[ -z "${class:-}" ]] || continue
        pv="released-pv-$ns-$name"
        K get pv "$pv" >/dev/null 2>&1 && continue
        mkdir -p "$S/pv/$pv" && chmod 0777 "$S/pv/$pv"
        K apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $pv, labels: {released.io/node-volume: "true"}}
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  claimRef: {namespace: $ns, name: $name}
  hostPath: {path: $S/pv/$pv, type: Directory}
EOF
      done
    K get pv -l released.io/node-volume=true -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}' 2>/dev/null |
      while read -r pv; do
        [[ -n "$pv" ]] || continue
        K delete pv "$pv" --wait=false >/dev/null 2>&1 && rm -rf "${S:?}/pv/$pv"
      done
    sleep 2
  done
}

# ---------------------------------------------------------------------------------------------
# env, cost, down

do_env() {
  [[ -f "$CP/kubeconfig" ]] || die "no control plane in $CP"
  echo "export KUBECONFIG=$CP/kubeconfig"
  echo "export RELEASED_E2E_IMAGE=$(released_ref)"
  echo "export RELEASED_E2E_REDIS_IMAGE=$REDIS_IMAGE"
  echo "export RELEASED_E2E_POSTGRES_IMAGE=$POSTGRES_IMAGE"
  echo "export RELEASED_E2E_PULL_POLICY=Never"
}

cluster_pids() {
  local f
  for f in "$CP"/*.pid "$S"/*.pid; do [[ -f "$f" ]] && cat "$f"; done
  # the containers: shims of our containerd and everything under them
  pgrep -f -- "-address $SOCK" 2>/dev/null | while read -r p; do echo "$p"; pgrep -P "$p"; done
}

cluster_rss() { # total RSS (MiB) of the control plane, the node and the containers
  local total=0 p r seen=" "
  for p in $(cluster_pids) $(for q in $(cluster_pids); do pgrep -P "$q"; done); do
    [[ "$seen" == *" $p "* ]] && continue
    seen+="$p "
    r=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${r:-0}))
  done
  echo $((total / 1024))
}

do_cost() {
  local n=${1:-10} p hz t0 t1
  hz=$(getconf CLK_TCK)
  declare -A before
  local pids
  pids=$(cluster_pids | sort -u)
  for p in $pids; do before[$p]=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); done
  sleep "$n"
  printf '%-28s %8s %8s\n' process RSS_MiB CPU_%
  t0=0
  t1=0
  for p in $pids; do
    [[ -r "/proc/$p/stat" ]] || continue
    local rss ticks
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$p/status")
    ticks=$(($(awk '{print $14+$15}' "/proc/$p/stat") - ${before[$p]:-0}))
    printf '%-28s %8d %8.1f\n' "$(cat "/proc/$p/comm")" $((rss / 1024)) "$(awk -v t="$ticks" -v h="$hz" -v n="$n" 'BEGIN{print 100*t/h/n}')"
    t0=$((t0 + rss))
    t1=$((t1 + ticks))
  done | sort -k2 -nr
  log "idle: $(cluster_rss) MiB RSS in total (control plane, node, containers) over ${n}s"
}

stop_pid() { # NAME
  local f="$S/$1.pid" pid i
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
      sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

do_down() {
  need_root
  set +e # undo as much as possible, whatever fails
  [[ -f "$S/.released-node-state" ]] || { log "no node in $S"; return 0; }
  local n
  for n in volumes api-relay kube-proxy kubelet kube-scheduler dnsmasq dns-sync; do stop_pid "$n"; done
  # Containers outlive containerd (their shims are separate processes): stop them through it.
  if alive containerd; then
    local ns t c
    for ns in k8s.io default; do
      for t in $(ctr -a "$SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
      sleep 1
      for t in $(ctr -a "$SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
      done
      for c in $(ctr -a "$SOCK" -n "$ns" containers ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" containers delete "$c" >/dev/null 2>&1 || true
      done
    done
  fi
  stop_pid containerd
  local p
  for p in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  # Pod network namespaces (containerd's cni-* bind mounts), then mounts under $S, deepest first.
  for n in /run/netns/cni-*; do
    [[ -e "$n" ]] || continue
    ip netns delete "$(basename "$n")" 2>/dev/null || { umount "$n" 2>/dev/null; rm -f "$n"; }
  done
  awk -v p="$S/" -v r="$CONTAINERD_ROOT/" 'index($2, p) == 1 || index($2, r) == 1 {print $2}' /proc/self/mounts |
    sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  # The kubelet's cgroups (cgroupfs driver), deepest first.
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h/kubepods" ]] && find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # Network: the bridge (its routes go with it), our routes, and the iptables chains of
  # kube-proxy, the kubelet and CNI (KUBE-*, CNI-*) with the rules that jump to them.
  ip link delete "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  ip route del unreachable "$CLUSTER_CIDR" 2>/dev/null || true
  local t cmd rules chains
  for cmd in iptables ip6tables; do
    for t in filter nat mangle raw; do
      rules=$("$cmd-save" -t "$t" 2>/dev/null) || continue
      grep -E '^-A ' <<<"$rules" | grep -E -- '-j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' |
        sed 's/^-A /-D /' | while read -r r; do eval "$cmd -t $t $r" 2>/dev/null || true; done
      chains=$(grep -oE '^:(KUBE|CNI)-[^ ]+' <<<"$rules" | tr -d :) || true
      for c in $chains; do "$cmd" -t "$t" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$cmd" -t "$t" -X "$c" 2>/dev/null || true; done
    done
  done
  # conntrack entries of pod and Service addresses
  conntrack -D -s "$CLUSTER_CIDR" >/dev/null 2>&1 || true
  conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1 || true
  if [[ -f "$S/sysctl.orig" ]]; then
    local k v
    while IFS== read -r k v; do sysctl -qw "$k=$v" 2>/dev/null || true; done <"$S/sysctl.orig"
  fi
  for p in "${SYSTEM_PATHS[@]}"; do
    grep -qx "$p" "$S/paths.orig" 2>/dev/null || rm -rf "$p"
  done
  K delete clusterrolebinding released-node-kubelets --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$S"
  log "node down; removed $S"
}

usage() {
  echo "usage: $0 build|images [NAME...]|up|env|cost [SECONDS]|down" >&2
  exit 2
}

case "${1:-}" in
build) do_build ;;
images)
  shift
  if (($#)); then do_images "$@"; else do_images "${IMAGES[@]}"; fi
  ;;
up) do_up ;;
down) do_down ;;
env) do_env ;;
cost) do_cost "${2:-10}" ;;
_dns-sync) dns_sync_loop ;;
_volumes) volumes_loop ;;
*) usage ;;
esac
