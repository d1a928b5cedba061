"""What a real kube-apiserver (1.32) refuses when an object is created, for the emulator to refuse the same way:
the status code, the Status body and its words, as observed on a real server (shared TESTING.md).

- a Job's validation: Indexed Jobs of more than 100000 pods (422), int32 fields out of range (400, from the JSON
  decoder), non-integer extended resources (422), requests over limits (422), unknown toleration operators (422);
- a PersistentVolumeClaim's validation: a storage request of zero or less (422);
- admission: a LimitRange's maximum storage per claim, and a ResourceQuota's count of Jobs (403).
"""

from __future__ import annotations

from decimal import Decimal

import aiohttp.web

from rlhf_operator.api import is_extended_resource, quantity_value

INT32_MAX = 2**31 - 1
MAX_INDEXED = 100_000


def signed_quantity(value) -> Decimal:
    text = str(value)
    return -quantity_value(text[1:]) if text.startswith("-") else quantity_value(text)


def status(code: int, reason: str, message: str, kind: str, name: str, causes: list[dict] | None = None):
    details = {"name": name, "kind": kind, **({"causes": causes} if causes else {})}
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}
    return aiohttp.web.json_response(body, status=code)


def invalid(kind: str, group: str, name: str, problems: list[tuple[str, str]]):
    """422 Invalid: ``problems`` are (field, what is wrong), as the API server's field errors read."""
    text = ", ".join(f"{field}: {what}" for field, what in problems)
    causes = [{"reason": "FieldValueInvalid", "message": what, "field": field} for field, what in problems]
    return status(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: [{text}]'
                  if len(problems) > 1 else f'{kind}{"." + group if group else ""} "{name}" is invalid: {text}',
                  kind, name, causes)


def refusal(plural: str, obj: dict, stored: dict[str, list[dict]]):
    """The API server's answer refusing to create ``obj`` (a ``plural``), or None; ``stored``: objects by plural."""
    name = obj.get("metadata", {}).get("name", "")
    namespace = obj.get("metadata", {}).get("namespace")
    if plural == "jobs":
        spec = obj.get("spec") or {}
        for field in ("backoffLimit", "parallelism", "completions"):
            if isinstance(spec.get(field), int) and spec[field] > INT32_MAX:
                return status(400, "BadRequest", 'Job in version "v1" cannot be handled as a Job: json: cannot '
                              f"unmarshal number {spec[field]} into Go struct field JobSpec.spec.{field} of type int32",
                              "Job", name)
        if problems := _job_problems(spec):
            return invalid("Job", "batch", name, problems)
        quota = [q for q in stored.get("resourcequotas", []) if q["metadata"].get("namespace") == namespace
                 and "count/jobs.batch" in (q.get("spec") or {}).get("hard", {})]
        for q in quota:
            limit = int(q["spec"]["hard"]["count/jobs.batch"])
            used = sum(1 for j in stored.get("jobs", []) if j["metadata"].get("namespace") == namespace)
            if used + 1 > limit:
                return status(403, "Forbidden", f'jobs.batch "{name}" is forbidden: exceeded quota: '
                              f"{q['metadata']['name']}, requested: count/jobs.batch=1, used: count/jobs.batch={used}, "
                              f"limited: count/jobs.batch={limit}", "jobs", name)
    if plural == "persistentvolumeclaims":
        storage = ((obj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        if storage is not None and signed_quantity(storage) <= 0:
            return invalid("PersistentVolumeClaim", "", name,
                           [("spec.resources[storage]", f'Invalid value: "{storage}": must be greater than zero')])
        for limit_range in stored.get("limitranges", []):
            if limit_range["metadata"].get("namespace") != namespace:
                continue
            for item in (limit_range.get("spec") or {}).get("limits", []):
                most = (item.get("max") or {}).get("storage")
                if item.get("type") == "PersistentVolumeClaim" and most and storage and \
                        signed_quantity(storage) > signed_quantity(most):
                    return status(403, "Forbidden", f'persistentvolumeclaims "{name}" is forbidden: maximum storage '
                                  f"usage per PersistentVolumeClaim is {most}, but request is {storage}",
                                  "persistentvolumeclaims", name)
    return None


def _job_problems(spec: dict) -> list[tuple[str, str]]:
    problems = []
    if spec.get("completionMode") == "Indexed":
        for field in ("parallelism", "completions"):
            if isinstance(spec.get(field), int) and spec[field] > MAX_INDEXED:
                problems.append((f"spec.{field}", f"Invalid value: {spec[field]}: must be less than or equal to "
                                                  f"{MAX_INDEXED} when completion mode is Indexed"))
    pod = (spec.get("template") or {}).get("spec") or {}
    for index, container in enumerate(pod.get("containers") or []):
        resources = container.get("resources") or {}
        where = f"spec.template.spec.containers[{index}].resources"
        for kind in ("requests", "limits"):
            for resource, value in (resources.get(kind) or {}).items():
                if is_extended_resource(resource) and signed_quantity(value) != int(signed_quantity(value)):
                    problems.append((f"{where}.{kind}[{resource}]", f'Invalid value: "{value}": must be an integer'))
        limits = resources.get("limits") or {}
        for resource, value in (resources.get("requests") or {}).items():
            if resource in limits and signed_quantity(value) > signed_quantity(limits[resource]):
                problems.append((f"{where}.requests", f'Invalid value: "{value}": must be less than or equal to '
                                                      f"{resource} limit of {limits[resource]}"))
    for index, toleration in enumerate(pod.get("tolerations") or []):
        if toleration.get("operator") not in (None, "", "Exists", "Equal"):
            problems.append((f"spec.template.spec.tolerations[{index}].operator",
                             f'Unsupported value: "{toleration["operator"]}": supported values: "Equal", "Exists"'))
    return problems
