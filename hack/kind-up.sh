#!/usr/bin/env bash
# The laptop path: a kind cluster with the operator from this checkout and one sample agent.
#
# NOTE: this needs a Docker engine (kind runs Kubernetes nodes as containers, and the image is
# built with `docker build`). It cannot run in this project's CI, which has no Docker engine;
# CI uses the local control plane instead (hack/control-plane.sh, tests/integration/).
#
#   hack/kind-up.sh            # create (or reuse) the cluster, build, load, install, apply
#   hack/kind-up.sh cluster    # only the cluster and the images (built, pulled, loaded), for
#                              # the end-to-end tests: prints the export lines they read, e.g.
#                              #   eval "$(hack/kind-up.sh cluster | grep ^export)"
#                              #   python -m pytest tests/cluster
#   hack/kind-up.sh down       # delete the cluster
#
# Needs: docker, kind, kubectl, and this project installed (pip install -e .) for
# `released provision`; helm comes from hack/install-helm.sh when not on PATH.
# Settings: KIND_CLUSTER (released), IMAGE (ghcr.io/released/released:dev),
#           NAMESPACE (released-system), AGENT_NAMESPACE (acme).
set -euo pipefail

cd "$(dirname "$0")/.."
cluster="${KIND_CLUSTER:-released}"
image="${IMAGE:-ghcr.io/released/released:dev}"
namespace="${NAMESPACE:-released-system}"
agent_namespace="${AGENT_NAMESPACE:-acme}"

log() { printf '\n== %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { echo "kind-up: $1 is required" >&2; exit 1; }; }

if [ "${1:-}" = "down" ]; then
  need kind
  kind delete cluster --name "$cluster"
  exit 0
fi

need docker
need kind
need kubectl
docker info >/dev/null 2>&1 || { echo "kind-up: no Docker engine answers (docker info)" >&2; exit 1; }
helm="$(command -v helm || bash hack/install-helm.sh)"

log "cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

log "image $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

if [ "${1:-}" = "cluster" ]; then
  # The end-to-end tests (tests/cluster) install the chart themselves: no release here.
  for extra in redis:7.4-alpine postgres:16-alpine; do
    docker pull -q "$extra" >/dev/null
    kind load docker-image "$extra" --name "$cluster"
  done
  echo "export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}"
  echo "export RELEASED_E2E_IMAGE=$image"
  echo "export RELEASED_E2E_REDIS_IMAGE=redis:7.4-alpine"
  echo "export RELEASED_E2E_POSTGRES_IMAGE=postgres:16-alpine"
  echo "export RELEASED_E2E_PULL_POLICY=IfNotPresent"
  exit 0
fi

log "demo PostgreSQL in $namespace (ephemeral; the operator provisions each agent's database)"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$namespace" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo-postgres
spec:
  replicas: 1
  selector:
    matchLabels: {app: demo-postgres}
  template:
    metadata:
      labels: {app: demo-postgres}
    spec:
      containers:
        - name: postgres
          image: postgres:16-alpine
          env:
            - {name: POSTGRES_PASSWORD, value: demo}
          ports:
            - containerPort: 5432
---
apiVersion: v1
kind: Service
metadata:
  name: demo-postgres
spec:
  selector: {app: demo-postgres}
  ports:
    - port: 5432
YAML
kubectl -n "$namespace" create secret generic shared-postgres \
  --from-literal=url="postgresql://postgres:demo@demo-postgres.$namespace.svc:5432/postgres" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$namespace" rollout status deployment/demo-postgres --timeout=180s

log "operator (helm upgrade --install)"
"$helm" upgrade --install released charts/released-operator \
  --namespace "$namespace" \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --set postgres.adminSecret.name=shared-postgres --set postgres.adminSecret.key=url \
  --set 'tenancy.ingress.hostSuffixes={localtest.me}' \
  --wait --timeout 5m
kubectl wait --for condition=established --timeout=60s crd/whatsappagents.whatsapp.released.io

log "sample agent acme in namespace $agent_namespace"
kubectl create namespace "$agent_namespace" --dry-run=client -o yaml | kubectl apply -f -
# `released provision` prints the agent and Secret templates with placeholder credentials: the
# agent shows Ready=False, reason InvalidMetaSecret, and nothing is built until real ones are
# put into the Secrets (a placeholder app secret would let anyone sign webhooks).
hack/provision_client.sh acme 106540352242922 --namespace "$agent_namespace" \
  --host acme.localtest.me \
  --faq "When are you open?=Monday to Friday, 9:00 to 18:00." \
  --faq "Do you deliver?=Yes, within the city." \
  | kubectl apply -f -

log "done"
cat >&2 <<EOT
  kubectl get waa -A -w                      # watch the agent become Ready
  kubectl -n $agent_namespace get deploy,svc,ingress,pvc
  $helm test released -n $namespace          # the chart's own test
  hack/kind-up.sh down                       # remove everything
EOT
