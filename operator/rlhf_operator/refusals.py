"""When the API server refuses an object the operator creates from a spec: is it the spec's fault, and which field
of the spec is to blame (pure; no I/O).

The CRD and the operator's own validation refuse what they can foresee (int32 fields, Indexed Job sizes,
quantities, tolerations); what is left reaches the API server only when a child object is created: an admission
policy, a LimitRange, a ResourceQuota, a rule of a newer Kubernetes. Such a refusal (400, 403, 413, 422) fails the
RLHFJob with the API server's own words and the spec field it traces back to; anything else (409, 429, 5xx, a lost
connection) is retried with backoff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhf_operator.api import PodTemplate, RLHFJobSpec

REFUSAL_STATUSES = (400, 403, 413, 422)
# The RBAC authorizer's words: the operator's own permissions are missing, which no spec change can fix.
_RBAC = re.compile(r'cannot \w+ resource "[^"]+"')
# 400s of the JSON decoder name the Go field: "... into Go struct field JobSpec.spec.backoffLimit of type int32".
_GO_FIELD = re.compile(r"Go struct field \w+\.([\w.]+) of type")
# 422s name the field first: "Job.batch \"x\" is invalid: spec.parallelism: Invalid value: ..."
_INVALID_FIELD = re.compile(r"is invalid: ([\w.\[\]/-]+): ")

_CONTAINER = re.compile(r"^spec\.template\.spec\.containers\[\d+\]\.(\w+)")
_POD = re.compile(r"^spec\.template\.spec\.(\w+)")
_POD_META = re.compile(r"^(?:spec\.template\.)?metadata\.(labels|annotations)")
# Job fields and the stage field each comes from.
_JOB_FIELDS = {"parallelism": "workers", "completions": "workers", "completionMode": "workers",
               "backoffLimit": "backoffLimit", "activeDeadlineSeconds": "activeDeadlineSeconds"}
# Pod and container fields and the pod template field each comes from.
_TEMPLATE_FIELDS = {
    "tolerations": "tolerations", "nodeSelector": "nodeSelector", "affinity": "affinity",
    "priorityClassName": "priorityClassName", "serviceAccountName": "serviceAccountName",
    "imagePullSecrets": "imagePullSecrets", "securityContext": "podSecurityContext", "env": "env",
    "envFrom": "envFrom", "labels": "labels", "annotations": "annotations",
    "terminationGracePeriodSeconds": "terminationGracePeriodSeconds",
}
_CONTAINER_FIELDS = {"securityContext": "securityContext", "env": "env", "envFrom": "envFrom"}


@dataclass(frozen=True)
class Refusal:
    """The API server refused to create or change a child object."""

    kind: str
    """The child's kind: Job, PersistentVolumeClaim, ConfigMap, Service."""
    name: str
    stage: str | None
    """The stage the child belongs to (None: the job's workspace claim)."""
    status: int
    message: str
    fields: tuple[str, ...] = ()
    """The child's fields the API server named (its Status details' causes)."""


def is_refusal(status: int, message: str) -> bool:
    """Whether an API error refuses the object for what it is (its spec must change), not for now."""
    return status in REFUSAL_STATUSES and not (status == 403 and _RBAC.search(message))


def child_field(refusal: Refusal) -> str | None:
    """The child's field the API server found at fault, e.g. ``spec.parallelism``."""
    if refusal.fields:
        return refusal.fields[0]
    for pattern in (_INVALID_FIELD, _GO_FIELD):
        if match := pattern.search(refusal.message):
            return match.group(1)
    return None


def spec_field(refusal: Refusal, spec: RLHFJobSpec) -> str:
    """The RLHFJob field behind a refused child, as precisely as it can be told (``spec.stages.ppo.workers``)."""
    stage = f"spec.stages.{refusal.stage}" if refusal.stage else "spec"
    if refusal.kind == "PersistentVolumeClaim":
        if "storageClassName" in (child_field(refusal) or ""):
            return "spec.storage.storageClassName"
        return "spec.storage.size"
    if refusal.kind == "Service":
        return f"{stage}.workers"
    field = child_field(refusal) or ""
    if refusal.kind != "Job" or not field:
        return stage
    if field.startswith("spec.") and (job_field := field[5:].split(".")[0].split("[")[0]) in _JOB_FIELDS:
        return f"{stage}.{_JOB_FIELDS[job_field]}"
    if match := _CONTAINER.match(field):
        name = match.group(1)
        if name == "image":
            return "spec.image"
        if name == "resources":
            return f"{stage}.resources"
        if name in _CONTAINER_FIELDS:
            return _template_field(spec, refusal.stage, _CONTAINER_FIELDS[name])
        return stage
    if (match := _POD_META.match(field)) or (match := _POD.match(field)):
        name = match.group(1)
        if name in _TEMPLATE_FIELDS:
            return _template_field(spec, refusal.stage, _TEMPLATE_FIELDS[name])
    return stage


def _template_field(spec: RLHFJobSpec, stage: str | None, name: str) -> str:
    """The pod template layer that set ``name``: the stage's, else the job's, else the operator's default."""
    snake = next(f for f, info in PodTemplate.model_fields.items() if (info.alias or f) == name)
    stage_spec = getattr(spec.stages, stage) if stage else None
    if stage_spec is not None and stage_spec.template is not None and getattr(stage_spec.template, snake):
        return f"spec.stages.{stage}.template.{name}"
    if spec.template is not None and getattr(spec.template, snake):
        return f"spec.template.{name}"
    return f"spec.template.{name} (here the operator's default pod template, RLHF_DEFAULT_POD_TEMPLATE)"


def refusal_message(refusal: Refusal) -> str:
    """What to tell people: which object the API server refused, and its own words."""
    return f"the API server refused {refusal.kind} {refusal.name} ({refusal.status}): {refusal.message}"


def refusal_reason(refusal: Refusal) -> str:
    """The condition reason: InvalidSpec for an object the API server finds invalid, Forbidden for one an admission
    policy, a LimitRange or a ResourceQuota forbids."""
    return "Forbidden" if refusal.status == 403 else "InvalidSpec"
