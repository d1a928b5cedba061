#!/usr/bin/env bash
# End to end on a real cluster: build the images, install the chart, run the tiny sentiment job, delete its SFT
# pod once it has checkpointed (what a preemption does) and check that the retried pod resumed from there, wait
# until the job Succeeds, print `kubectl get rlhfjobs`. Works on any kubeconfig: on kind the images are loaded
# into the nodes; with RLHF_E2E_LOAD=containerd into this machine's containerd (a node run here); elsewhere they
# are pushed to $RLHF_E2E_REGISTRY (a registry the cluster pulls from).
# docs/cluster-quickstart.md walks through the same steps by hand; keep the two in step.
#
# Needs: docker or podman, kubectl, helm (or `make tools`), and kind for a kind cluster (ctr for containerd).
# Settings (environment): RLHF_E2E_REGISTRY, RLHF_E2E_LOAD, RLHF_E2E_TAG (default dev),
# RLHF_E2E_NAMESPACE (default rlhf-demo), RLHF_E2E_TIMEOUT seconds (default 1800), RLHF_E2E_BUILD (default:
# docker if there, else podman; extra build flags in RLHF_E2E_BUILD_FLAGS, e.g. "--pull=never --no-cache").
# On success it deletes that namespace and uninstalls the chart, unless RLHF_E2E_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG="${RLHF_E2E_TAG:-dev}"
REGISTRY="${RLHF_E2E_REGISTRY:-}"
NAMESPACE="${RLHF_E2E_NAMESPACE:-rlhf-demo}"
TIMEOUT="${RLHF_E2E_TIMEOUT:-1800}"
OPERATOR_IMAGE="${REGISTRY:+$REGISTRY/}rlhf-operator"
TRAINER_IMAGE="${REGISTRY:+$REGISTRY/}rlhf-trainer"
if [[ -x .tools/bin/helm ]]; then HELM=.tools/bin/helm; else HELM=helm; fi
BUILD="${RLHF_E2E_BUILD:-$(command -v docker >/dev/null && echo docker || echo podman)}"
read -r -a BUILD_FLAGS <<<"${RLHF_E2E_BUILD_FLAGS:-}"

step() { printf '\n=== %s\n' "$*"; }

diagnose() {
    kubectl describe --namespace "$NAMESPACE" rlhfjobs || true
    kubectl get --namespace "$NAMESPACE" jobs,pods,pvc || true
    kubectl get events --namespace "$NAMESPACE" --sort-by=.lastTimestamp | tail -n 30 || true
    kubectl logs --namespace rlhf-system deployment/rlhf-operator --tail=100 || true
}

context="$(kubectl config current-context)"
step "0. Cluster: $context"
kubectl version

step "1. Build the images: the operator, and the trainer with CPU torch"
"$BUILD" build "${BUILD_FLAGS[@]}" --target operator --tag "$OPERATOR_IMAGE:$TAG" .
"$BUILD" build "${BUILD_FLAGS[@]}" --target trainer --build-arg TORCH=cpu --tag "$TRAINER_IMAGE:$TAG" .

step "2. Make the images available to the cluster"
if [[ "${RLHF_E2E_LOAD:-}" == containerd ]]; then
    for image in "$OPERATOR_IMAGE:$TAG" "$TRAINER_IMAGE:$TAG"; do
        "$BUILD" save "$image" | ctr --namespace k8s.io images import -
        # podman names an image without a registry localhost/NAME; the kubelet asks for docker.io/library/NAME
        if [[ "$image" != */* ]] && ctr --namespace k8s.io images ls --quiet | grep -qx "localhost/$image"; then
            ctr --namespace k8s.io images tag --force "localhost/$image" "docker.io/library/$image"
        fi
    done
elif [[ "$context" == kind-* ]]; then
    kind load docker-image --name "${context#kind-}" "$OPERATOR_IMAGE:$TAG" "$TRAINER_IMAGE:$TAG"
elif [[ -n "$REGISTRY" ]]; then
    "$BUILD" push "$OPERATOR_IMAGE:$TAG"
    "$BUILD" push "$TRAINER_IMAGE:$TAG"
else
    echo "The context $context is not a kind cluster: set RLHF_E2E_REGISTRY to a registry it pulls from," \
         "or RLHF_E2E_LOAD=containerd on a node of this machine." >&2
    exit 2
fi

step "3. Install the operator (CRD, RBAC, Deployment) with Helm"
"$HELM" upgrade --install rlhf-operator charts/rlhf-operator \
    --namespace rlhf-system --create-namespace \
    --set image.repository="$OPERATOR_IMAGE" --set image.tag="$TAG" \
    --set trainer.image.repository="$TRAINER_IMAGE" --set trainer.image.tag="$TAG" \
    --wait --timeout 5m

step "4. Run the tiny sentiment job in namespace $NAMESPACE (Pod Security: restricted)"
kubectl create namespace "$NAMESPACE" --dry-run=client --output yaml | kubectl apply --filename -
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite
job="$(kubectl apply --namespace "$NAMESPACE" --filename manifests/examples/sentiment-tiny.yaml --output name)"
echo "created $job"

deadline=$((SECONDS + TIMEOUT))
field() { kubectl get --namespace "$NAMESPACE" "$job" --output jsonpath="$1"; }

step "5. Preempt the sft stage: delete its pod once it has checkpointed; the retried pod resumes"
sft_job="$(field '{.status.stages.sft.job}')"
until [[ "$(field '{.status.progress.stage}')" == sft && "$(field '{.status.progress.step}')" -ge 300 ]]; do
    if ((SECONDS > deadline)); then echo "sft never reached step 300" >&2; diagnose; exit 1; fi
    sleep 1
    sft_job="$(field '{.status.stages.sft.job}')"
done
kubectl delete pod --namespace "$NAMESPACE" --selector "batch.kubernetes.io/job-name=$sft_job" --wait=false

step "6. Wait until $job is Succeeded (at most ${TIMEOUT}s)"
while true; do
    phase="$(kubectl get --namespace "$NAMESPACE" "$job" --output jsonpath='{.status.phase}')"
    stage="$(kubectl get --namespace "$NAMESPACE" "$job" --output jsonpath='{.status.stage}')"
    echo "$(date +%T) phase=${phase:-<none>} stage=${stage:-<none>}"
    if [[ "$phase" == Succeeded ]]; then
        break
    fi
    if [[ "$phase" == Failed ]] || ((SECONDS > deadline)); then
        echo "$job did not succeed (phase ${phase:-<none>})" >&2
        diagnose
        exit 1
    fi
    sleep 10
done

step "7. The result"
kubectl get rlhfjobs --namespace "$NAMESPACE" --output wide
retried="$(kubectl get pods --namespace "$NAMESPACE" --selector "batch.kubernetes.io/job-name=$sft_job" \
    --sort-by=.metadata.creationTimestamp --output name | tail -n 1)"
if ! kubectl logs --namespace "$NAMESPACE" "$retried" | grep "stage sft resumes from checkpoint-"; then
    echo "the retried sft pod $retried did not resume from a checkpoint" >&2
    exit 1
fi
steps="$(field '{.status.stages.sft.steps}')"
total="$(field '{.status.stages.sft.totalSteps}')"
echo "sft trained ${steps}/${total} steps across the preemption"
[[ -n "$steps" && "$steps" == "$total" ]]

if [[ "${RLHF_E2E_KEEP:-}" != 1 ]]; then
    step "Clean up (RLHF_E2E_KEEP=1 keeps everything)"
    kubectl delete namespace "$NAMESPACE" --wait=false
    "$HELM" uninstall rlhf-operator --namespace rlhf-system
fi
