#!/usr/bin/env bash
# `make kind-up`: Clarion in a kind cluster on a machine with Docker.
#
#   1. create the kind cluster $KIND_CLUSTER (default clarion) unless it exists;
#   2. docker build the one Clarion image as $IMAGE (default clarion:dev) and kind-load it;
#   3. helm upgrade --install the chart into $NAMESPACE (default clarion-system) with the bundled
#      single-pod Postgres and Redis, and the image just loaded;
#   4. wait for the rollout and run `helm test`.
#
# Needs docker, kind, helm and kubectl on PATH (helm and kubectl are also in the cache that
# scripts/build-k8s.sh fills). Extra `helm` arguments can be passed after the script name, e.g.
#   bash scripts/kind-up.sh --set webhook.replicas=1
# Remove everything with: kind delete cluster --name clarion
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER="${KIND_CLUSTER:-clarion}"
IMAGE="${IMAGE:-clarion:dev}"
NAMESPACE="${NAMESPACE:-clarion-system}"
RELEASE="${RELEASE:-clarion}"

log() { echo "kind-up: $*" >&2; }

for tool in docker kind; do
  command -v "$tool" >/dev/null || { log "$tool is required (this target is for machines with Docker)"; exit 1; }
done
if ! command -v helm >/dev/null || ! command -v kubectl >/dev/null; then
  bin_dir=$(bash scripts/build-k8s.sh)
  export PATH="$bin_dir:$PATH"
fi
docker info >/dev/null 2>&1 || { log "the Docker daemon is not reachable"; exit 1; }

if kind get clusters | grep -qx "$KIND_CLUSTER"; then
  log "kind cluster $KIND_CLUSTER exists"
else
  log "creating kind cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$KIND_CLUSTER" >/dev/null

log "building $IMAGE"
docker build -t "$IMAGE" .
log "loading $IMAGE into kind"
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"

repository="${IMAGE%:*}"
tag="${IMAGE##*:}"
log "installing the chart into $NAMESPACE"
helm upgrade --install "$RELEASE" charts/clarion \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="$repository" --set image.tag="$tag" --set image.pullPolicy=Never \
  --set postgresql.bundled=true --set redis.bundled=true \
  --set webhook.replicas=1 \
  --set webhook.podDisruptionBudget.enabled=false \
  --wait --timeout 5m "$@"

helm test "$RELEASE" --namespace "$NAMESPACE" --logs
cat <<MSG

Clarion runs in kind cluster $KIND_CLUSTER, namespace $NAMESPACE.
  kubectl -n $NAMESPACE get pods
  kubectl apply -f manifests/examples/telegram-channel.yaml   # after creating its token Secret
  kubectl get clarion -A
Remove it: kind delete cluster --name $KIND_CLUSTER
MSG
