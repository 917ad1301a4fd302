#!/usr/bin/env bash
# Deploy SkyTorch to a kind cluster: build both images, load them into the
# cluster's nodes, install the CRD, RBAC and the operator. Not run in CI.
#
#   deploy/kind.sh [cluster-name]     (default: kind)
#
# Needs kind, kubectl, and podman or docker. CONTAINER_ENGINE picks one.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster="${1:-kind}"
engine="${CONTAINER_ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
torch_variant="${TORCH_VARIANT:-cpu}"

"$engine" build -f deploy/Containerfile.server --build-arg "TORCH_VARIANT=${torch_variant}" -t localhost/skytorch-server:latest .
"$engine" build -f deploy/Containerfile.operator -t localhost/skytorch-operator:latest .

# Images are named localhost/...: the name podman gives local images, which
# docker accepts too, and which deploy/operator/deployment.yaml refers to.
for image in localhost/skytorch-server:latest localhost/skytorch-operator:latest; do
  if [ "$engine" = podman ]; then
    archive="$(mktemp --suffix=.tar)"
    podman save -o "$archive" "$image"
    kind load image-archive "$archive" --name "$cluster"
    rm -f "$archive"
  else
    kind load docker-image "$image" --name "$cluster"
  fi
done

kubectl --context "kind-${cluster}" apply -k deploy/
kubectl --context "kind-${cluster}" -n skytorch-system rollout status deployment/skytorch-operator --timeout=180s
