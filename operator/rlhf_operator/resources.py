"""plan -> Kubernetes objects: complete manifests as dicts (pure; no I/O, no Kubernetes client).

Per RLHFJob: the workspace PersistentVolumeClaim (unless ``storage.existingClaim``). Per stage: a ConfigMap with
the stage config, a batch/v1 Job running the trainer image, and, when the stage has more than one worker, a
headless Service for torch.distributed's rendezvous. Every object is named by the plan, labelled as
docs/operator-runtime.md says, and owned by the RLHFJob (a kept claim excepted: it must outlive its owner).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from rlhf_contract.runtime import (
    CONFIG_DIR,
    CONFIG_FILE,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NNODES,
    ENV_NODE_RANK,
    ENV_NPROC_PER_NODE,
    ENV_STATUS_TOKEN_FILE,
    ENV_STATUS_URL,
    NOT_RETRIED,
    RENDEZVOUS_PORT,
    STATUS_AUDIENCE,
    TOKEN_DIR,
    TOKEN_FILE,
    WORKSPACE,
)
from rlhf_operator.api import API_VERSION, DEFAULT_TERMINATION_GRACE_SECONDS, KIND, PodTemplate, RLHFJobSpec
from rlhf_operator.plan import Plan, PlannedStage, child_name
from rlhf_operator.settings import OperatorSettings

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "rlhf-operator"
JOB_LABEL = "rlhf.dev/job-name"
STAGE_LABEL = "rlhf.dev/stage"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SUSPENDED_BY_OPERATOR = "rlhf.dev/suspended"
"""Annotation on a Job the operator suspended for spec.suspend (and only such a Job does it unsuspend)."""
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

CONTAINER = "trainer"
TOKEN_SECONDS = 3600

RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The "restricted" Pod Security Standard; the trainer image runs as UID/GID 1000."""


@dataclass(frozen=True)
class Owner:
    """The RLHFJob that owns the objects."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: dict) -> Owner:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"])


def label_value(name: str) -> str:
    """A name as a label value (63 characters at most; longer names are shortened with a hash)."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def child_labels(job_name: str, stage: str | None = None) -> dict[str, str]:
    """The labels every child carries; per-stage objects also name their stage."""
    labels = {MANAGED_BY: OPERATOR, JOB_LABEL: label_value(job_name)}
    if stage is not None:
        labels[STAGE_LABEL] = stage
    return labels


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(owner: Owner, name: str, labels: dict[str, str], owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace, "labels": labels}
    if owned:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


# --- the workspace --------------------------------------------------------------------------------------------

def workspace_claim_name(job_name: str, spec: RLHFJobSpec) -> str:
    """The claim the stages mount at /workspace: ``storage.existingClaim`` or ``<job>-workspace``."""
    return spec.storage.existing_claim or child_name(job_name, "workspace")


def workspace_claim(owner: Owner, spec: RLHFJobSpec, plan: Plan, settings: OperatorSettings) -> dict | None:
    """The workspace PersistentVolumeClaim to create; None with ``storage.existingClaim``.

    ReadWriteMany when a stage has several workers (their pods may land on different nodes), else ReadWriteOnce.
    A claim with ``storage.keepOnDelete`` has no owner, so that deleting the RLHFJob leaves it.
    """
    storage = spec.storage
    if storage.existing_claim:
        return None
    shared = any(stage.kubernetes.workers > 1 for stage in plan.stages)
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if shared else "ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.size or settings.default_storage_size)}},
    }
    if storage_class := storage.storage_class_name or settings.default_storage_class:
        claim_spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(owner, workspace_claim_name(owner.name, spec), child_labels(owner.name),
                              owned=not storage.keep_on_delete),
        "spec": claim_spec,
    }


# --- per stage ------------------------------------------------------------------------------------------------

def stage_config_map(owner: Owner, stage: PlannedStage) -> dict:
    """The ConfigMap holding the stage config the trainer reads from /etc/rlhf/stage.json."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, stage.object_name, child_labels(owner.name, stage.name)),
        "data": {CONFIG_FILE: stage.config.to_json()},
    }


def stage_service(owner: Owner, stage: PlannedStage) -> dict | None:
    """The headless Service giving a multi-worker stage's pods DNS names (``<job>-<index>.<service>``)."""
    if stage.kubernetes.workers <= 1:
        return None
    labels = child_labels(owner.name, stage.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, stage.object_name, labels),
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            "publishNotReadyAddresses": True,  # the rendezvous happens before pods are ready
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


def stage_objects(owner: Owner, spec: RLHFJobSpec, stage: PlannedStage, settings: OperatorSettings,
                  suspend: bool = False) -> list[dict]:
    """A stage's objects in the order to create them: ConfigMap, Service (several workers), Job."""
    service = stage_service(owner, stage)
    return [stage_config_map(owner, stage), *([service] if service else []),
            stage_job(owner, spec, stage, settings, suspend=suspend)]


def pod_template(spec: RLHFJobSpec, stage: PlannedStage, settings: OperatorSettings) -> PodTemplate:
    """The pod settings of a stage: the operator's default, under the job's, under the stage's own.

    A field set in a higher layer replaces the lower one's, except that labels, annotations and nodeSelector merge
    key by key and env merges by variable name.
    """
    merged: dict[str, Any] = {}
    for layer in (settings.default_pod_template, spec.template, stage.kubernetes.template):
        if layer is None:
            continue
        for name in type(layer).model_fields:
            value = getattr(layer, name)
            if value is None:
                continue
            if name in ("labels", "annotations", "node_selector"):
                merged[name] = {**merged.get(name, {}), **value}
            elif name == "env":
                merged[name] = list({var.name: var for var in [*merged.get(name, []), *value]}.values())
            else:
                merged[name] = value
    return PodTemplate(**merged)


def stage_job(owner: Owner, spec: RLHFJobSpec, stage: PlannedStage, settings: OperatorSettings,
              suspend: bool = False) -> dict:
    """The batch/v1 Job running the stage: ``python -m rlhf_trainer.stage /etc/rlhf/stage.json``.

    ``suspend``: create it suspended (spec.suspend is set). A Job queued by Kueue (the queue-name label) is
    always created suspended: Kueue unsuspends it when it admits it.
    """
    template = pod_template(spec, stage, settings)
    k8s = stage.kubernetes
    workers = k8s.workers
    labels = {**(template.labels or {}), **child_labels(owner.name, stage.name)}
    job_spec: dict[str, Any] = {
        "backoffLimit": k8s.backoff_limit,
        "completions": workers,
        "parallelism": workers,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(NOT_RETRIED)}},
        ]},
        "template": {
            "metadata": {"labels": labels, **({"annotations": template.annotations} if template.annotations else {})},
            "spec": _pod_spec(owner, spec, stage, template, settings),
        },
    }
    if workers > 1:
        job_spec["completionMode"] = "Indexed"
    if k8s.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    if suspend or QUEUE_LABEL in labels:
        job_spec["suspend"] = True
    metadata = _metadata(owner, stage.object_name, labels)
    if suspend:
        metadata["annotations"] = {SUSPENDED_BY_OPERATOR: "true"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _pod_spec(owner: Owner, spec: RLHFJobSpec, stage: PlannedStage, template: PodTemplate,
              settings: OperatorSettings) -> dict[str, Any]:
    workers = stage.kubernetes.workers
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "args": [f"{CONFIG_DIR}/{CONFIG_FILE}"],  # the image's entrypoint is `python -m rlhf_trainer.stage`
        "env": _env(stage, template, settings, workers),
        "securityContext": template.security_context or RESTRICTED_CONTAINER_SECURITY,
        # The stage runner writes why it failed to /dev/termination-log; a crash leaves the log's tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "status-token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if template.env_from:
        container["envFrom"] = template.env_from
    if resources := _resources(stage):
        container["resources"] = resources
    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": workspace_claim_name(owner.name, spec)}},
        {"name": "config", "configMap": {"name": stage.object_name}},
        {"name": "status-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": STATUS_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}}]}},
    ]
    if stage.config.distributed.num_processes > 1:  # NCCL and DataLoader workers need more than 64Mi of shm
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})

    grace = template.termination_grace_period_seconds
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries; podFailurePolicy needs Never
        # time to save a checkpoint on SIGTERM (preemption, eviction, suspend) before the kubelet kills the trainer
        "terminationGracePeriodSeconds": DEFAULT_TERMINATION_GRACE_SECONDS if grace is None else grace,
        "automountServiceAccountToken": False,  # stage pods do not talk to the API; the status token is projected
        "enableServiceLinks": False,
        "securityContext": template.pod_security_context or RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if workers > 1:
        pod["subdomain"] = stage.object_name
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations or []] or None
    passthrough = {"nodeSelector": template.node_selector, "tolerations": tolerations,
                   "affinity": template.affinity, "priorityClassName": template.priority_class_name,
                   "serviceAccountName": template.service_account_name}
    pod.update({key: value for key, value in passthrough.items() if value is not None})
    if template.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret.name} for secret in template.image_pull_secrets]
    return pod


def _resources(stage: PlannedStage) -> dict[str, dict[str, str]]:
    resources = stage.kubernetes.resources
    if resources is None:
        return {}
    found = {"requests": resources.requests, "limits": resources.limits}
    return {kind: {name: str(quantity) for name, quantity in values.items()}
            for kind, values in found.items() if values}


def _env(stage: PlannedStage, template: PodTemplate, settings: OperatorSettings, workers: int) -> list[dict]:
    env: list[dict[str, Any]] = [
        {"name": ENV_STATUS_URL, "value": settings.status_url},
        {"name": ENV_STATUS_TOKEN_FILE, "value": TOKEN_FILE},
    ]
    if workers > 1:
        index = {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}
        master = f"{stage.object_name}-0.{stage.object_name}"
        env += [
            {"name": "MASTER_ADDR", "value": master},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "WORLD_SIZE", "value": str(workers)},
            {"name": "NODE_RANK", **index},
            {"name": "RANK", **index},
            {"name": ENV_NNODES, "value": str(workers)},
            {"name": ENV_NODE_RANK, **index},
            {"name": ENV_MASTER_ADDR, "value": master},
            {"name": ENV_MASTER_PORT, "value": str(RENDEZVOUS_PORT)},
            {"name": ENV_NPROC_PER_NODE, "value": str(stage.config.distributed.num_processes)},
        ]
    ours = {var["name"]: var for var in env}
    for var in template.env or []:  # the user's variables win over ours of the same name
        ours[var.name] = var.model_dump(by_alias=True, exclude_none=True)
    return list(ours.values())
