"""Reconciling one RLHFJob: read it and its Jobs, create what the plan says comes next, write the status.

Level-triggered and restartable: every decision is derived from the cluster (the RLHFJob's status, its Jobs and
their Events), never from memory, so killing the operator at any moment loses nothing and a second run creates
nothing twice (children have fixed names; a create that meets an existing object uses it). The decisions are
the pure functions of ``rlhf_operator.status`` and the objects those of ``rlhf_operator.resources``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from rlhf_contract.runtime import EXIT_INVALID_INPUT, WORKSPACE
from rlhf_operator.api import RLHFJobSpec
from rlhf_operator.kube import ApiError, Kube
from rlhf_operator.metrics import Metrics
from rlhf_operator.plan import Plan, PlanError, PlannedStage, make_plan
from rlhf_operator.refusals import Refusal, is_refusal, refusal_message, refusal_reason, spec_field
from rlhf_operator.resources import (
    JOB_LABEL,
    QUEUE_LABEL,
    SUSPENDED_BY_OPERATOR,
    Owner,
    label_value,
    stage_objects,
    workspace_claim,
)
from rlhf_operator.settings import OperatorSettings
from rlhf_operator.status import (
    INVALID_SPEC,
    SPEC_REASONS,
    TERMINAL,
    Event,
    JobState,
    StageRun,
    TrainerFailure,
    find_condition,
    finished_stages,
    invalid_spec_status,
    job_state,
    merge_patch,
    next_status,
    parse_time,
    pod_creation_problem,
    set_condition,
    spec_problem,
    timestamp,
    trainer_failure,
    transitions,
    unreported_seconds,
)
from rlhf_operator.workqueue import Retry, WorkQueue

log = logging.getLogger(__name__)

POD_CHECK_SECONDS = 10.0
"""How often a running stage whose Job has no pods is checked for pods the Job controller cannot create."""
STALE_CHILD_SECONDS = 2.0
"""How soon to look again when a child's name is still taken by an object of a deleted RLHFJob."""
SILENT_RECHECK_SECONDS = 30.0
"""How often to look for a report again once a running stage has been silent too long."""
TTL_EXPIRED = "TTLExpired"
CHILD_KINDS = ("Job", "Service", "ConfigMap", "PersistentVolumeClaim")


class StatusChanged(Retry):
    """The RLHFJob changed between reading it and writing its status: decide again, on a fresh read."""


class ChildRefused(Exception):
    """The API server refused a child object for what it is (its spec must change)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal_message(refusal))
        self.refusal = refusal


class Controller:
    def __init__(self, kube: Kube, settings: OperatorSettings, metrics: Metrics,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.kube, self.settings, self.metrics, self.clock = kube, settings, metrics, clock
        self.queue = WorkQueue(self.reconcile, on_error=metrics.reconcile_errors.inc)

    def trigger(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    async def close(self) -> None:
        await self.queue.close()

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one RLHFJob one step closer to done; returns when to look again (seconds) or None. Errors (and a
        status write that lost a race) make the work queue try again with backoff."""
        body = await self.kube.get_rlhfjob(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.queue.forget((namespace, name))
            return None
        old = body.get("status") or {}
        generation = body["metadata"].get("generation")
        now = self.clock()
        if old.get("phase") in TERMINAL and not _invalid_spec_changed(old, generation):
            return await self._finished(body, now)
        try:
            spec = RLHFJobSpec.model_validate(body.get("spec") or {}, by_name=False)
            plan = make_plan(spec, name, WORKSPACE)
        except (ValidationError, PlanError) as e:
            path, message = spec_problem(e)
            await self._write(body, invalid_spec_status(old, path, message, generation=generation,
                                                        now=timestamp(now)))
            return None

        try:
            runs, recheck = await self._advance(body, spec, plan)
        except ChildRefused as e:  # nothing is retried until the spec changes
            refusal = e.refusal
            await self._write(body, invalid_spec_status(
                old, spec_field(refusal, spec), refusal_message(refusal), reason=refusal_reason(refusal),
                stage=refusal.stage, generation=generation, now=timestamp(now)))
            return None
        timeout = self.settings.progress_timeout_seconds
        new = next_status(old, runs, generation=generation, now=timestamp(now), progress_timeout=timeout)
        await self._write(body, new)
        if new["phase"] in TERMINAL:
            return _ttl_left(spec.ttl_seconds_after_finished, new, now)
        if (silent := unreported_seconds(new, runs, timestamp(now))) is not None:  # look again for a report
            wait = timeout - silent if silent < timeout else min(timeout, SILENT_RECHECK_SECONDS)
            recheck = min(recheck or wait, wait)
        return recheck

    async def _advance(self, body: dict, spec: RLHFJobSpec, plan: Plan) -> tuple[list[StageRun], float | None]:
        """Start the next stage, (un)suspend the running one, and say where each stage is."""
        owner = Owner.of(body)
        recorded = (body.get("status") or {}).get("stages") or {}
        jobs = {stage.name: await self.kube.get("Job", owner.namespace, stage.object_name) for stage in plan.stages}
        problems: dict[str, tuple[str, str]] = {}
        failures: dict[str, str] = {}
        recheck = None
        for stage in plan.stages:
            job = jobs[stage.name]
            if job is not None and not _owned_by(job, owner):
                # A Job of an RLHFJob of the same name deleted a moment ago: wait for the garbage collector.
                jobs[stage.name], recheck = None, STALE_CHILD_SECONDS
                break
            if job is None and (recorded.get(stage.name) or {}).get("phase") == "Succeeded":
                continue  # done; its Job was deleted since
            if job is None:
                jobs[stage.name] = await self._start(owner, spec, plan, stage)
                break
            state = _state(job)
            if state.phase == "Succeeded":
                continue
            if state.phase == "Failed":
                if said := await self._trainer_failure(job):
                    failures[stage.name] = said
                break
            job = jobs[stage.name] = await self._apply_suspend(job, spec.suspend)
            if _waiting_for_pods(job):
                if problem := await self._pod_creation_problem(job):
                    problems[stage.name] = problem
                recheck = POD_CHECK_SECONDS
            break
        runs = [StageRun(name=stage.name, job=stage.object_name, output=stage.config.output_dir,
                         state=_state(job, failures.get(stage.name)) if (job := jobs[stage.name]) else None,
                         created=job["metadata"].get("creationTimestamp") if job else None,
                         problem=problems.get(stage.name))
                for stage in plan.stages]
        return runs, recheck

    async def _trainer_failure(self, job: dict) -> TrainerFailure | None:
        """The failed trainer's own words, from the termination message of the Job's pods."""
        meta = job["metadata"]
        pods = await self.kube.list("Pod", meta["namespace"], label_selector=f"batch.kubernetes.io/job-name={meta['name']}")
        return trainer_failure([pod for pod in pods if _owned_by_uid(pod, meta["uid"])])

    async def _start(self, owner: Owner, spec: RLHFJobSpec, plan: Plan, stage: PlannedStage) -> dict:
        """Create a stage's objects (and the workspace claim); returns its Job."""
        claim = workspace_claim(owner, spec, plan, self.settings)
        objects = [*([claim] if claim else []), *stage_objects(owner, spec, stage, self.settings, suspend=spec.suspend)]
        created = {}
        for obj in objects:
            try:
                created[obj["kind"]] = await self._ensure(obj)
            except ApiError as e:
                if not is_refusal(e.status, e.message):
                    raise
                stage_name = None if obj["kind"] == "PersistentVolumeClaim" else stage.name
                raise ChildRefused(Refusal(obj["kind"], obj["metadata"]["name"], stage_name, e.status, e.message,
                                           e.fields)) from e
        log.info("%s/%s: started stage %s (Job %s)", owner.namespace, owner.name, stage.name, stage.object_name)
        return created["Job"]

    async def _ensure(self, obj: dict) -> dict:
        """Create ``obj``; if it exists (a run before this one created it), use that one. A ConfigMap is
        brought up to date: its Job does not exist yet, so nothing has read it."""
        meta = obj["metadata"]
        try:
            return await self.kube.create(obj)
        except ApiError as e:
            if e.status != 409:
                raise
        existing = await self.kube.get(obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: try again later
            raise ApiError(409, "Conflict", f"{obj['kind']} {meta['name']} exists and does not")
        owner_uids = {ref["uid"] for ref in meta.get("ownerReferences", [])}
        if owner_uids and not owner_uids & {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}:
            raise ApiError(409, "Conflict", f"{obj['kind']} {meta['name']} belongs to another owner (an RLHFJob of "
                                            "the same name deleted a moment ago?); waiting for it to go")
        if obj["kind"] == "ConfigMap" and existing.get("data") != obj["data"]:
            return await self.kube.patch("ConfigMap", meta["namespace"], meta["name"], {"data": obj["data"]})
        return existing

    async def _apply_suspend(self, job: dict, suspend: bool) -> dict:
        """Suspend the running stage's Job for spec.suspend, or resume one the operator suspended. A Job that
        Kueue suspended stays Kueue's to unsuspend."""
        meta = job["metadata"]
        ours = (meta.get("annotations") or {}).get(SUSPENDED_BY_OPERATOR) == "true"
        if suspend == ours:
            return job
        if suspend:
            patch = {"metadata": {"annotations": {SUSPENDED_BY_OPERATOR: "true"}}, "spec": {"suspend": True}}
        else:
            patch = {"metadata": {"annotations": {SUSPENDED_BY_OPERATOR: None}}}
            if QUEUE_LABEL not in (meta.get("labels") or {}):
                patch["spec"] = {"suspend": False}
        log.info("%s/%s: %s", meta["namespace"], meta["name"], "suspending" if suspend else "resuming")
        return await self.kube.patch("Job", meta["namespace"], meta["name"], patch)

    async def _pod_creation_problem(self, job: dict) -> tuple[str, str] | None:
        """(reason, message) when the Job controller's last attempt to create a pod failed (e.g. Pod Security
        admission rejected it: the pod template breaks the namespace's enforced standard)."""
        try:
            return pod_creation_problem(await self.kube.job_events(job))
        except ApiError as e:  # e.g. no RBAC to list Events: this check is worth a warning, not a stuck job
            log.warning("cannot read the Events of Job %s/%s: %s", job["metadata"]["namespace"],
                        job["metadata"]["name"], e)
            return None

    async def _write(self, body: dict, new: dict) -> None:
        """Write the status change through the status subresource, then post its Events."""
        old = body.get("status") or {}
        patch = merge_patch(old, new)
        if not patch:
            return
        meta = body["metadata"]
        try:
            written = await self.kube.patch_rlhfjob_status(meta["namespace"], meta["name"], patch,
                                                           meta.get("resourceVersion"))
        except ApiError as e:
            # e.g. a trainer pushed the guardrail that ended its stage after this read: never write over it
            if e.status == 409:
                raise StatusChanged from e
            raise
        meta["resourceVersion"] = written["metadata"]["resourceVersion"]
        for event in transitions(old, new):
            await self.kube.post_event(body, event)
        for stage, phase, seconds in finished_stages(old, new):
            self.metrics.stage_seconds.labels(stage, phase).observe(seconds)

    async def _finished(self, body: dict, now: datetime) -> float | None:
        """A finished job: nothing is ever created again; its children go when its TTL expires."""
        old, meta = body["status"], body["metadata"]
        if old.get("observedGeneration") != meta.get("generation"):
            await self._write(body, {**old, "observedGeneration": meta.get("generation")})
        ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
        created = find_condition(old.get("conditions"), "Created")
        if created and created.get("reason") == TTL_EXPIRED:
            return None
        left = _ttl_left(ttl, old, now)
        if left is None or left > 0:
            return left
        deleted = await self._delete_children(body)
        message = f"deleted {len(deleted)} object(s) {ttl}s after the job finished: {', '.join(deleted) or 'none'}"
        new = {**old, "conditions": set_condition(old.get("conditions"), "Created", False, TTL_EXPIRED, message,
                                                  timestamp(now), meta.get("generation"))}
        await self._write(body, new)
        await self.kube.post_event(body, Event("Normal", TTL_EXPIRED, message))
        return None

    async def _delete_children(self, body: dict) -> list[str]:
        """Delete what the RLHFJob owns (a claim it does not own, kept or existing, stays)."""
        meta = body["metadata"]
        deleted = []
        for kind in CHILD_KINDS:
            for obj in await self.kube.list(kind, meta["namespace"],
                                            label_selector=f"{JOB_LABEL}={label_value(meta['name'])}"):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == meta["uid"] for ref in refs):
                    await self.kube.delete(kind, meta["namespace"], obj["metadata"]["name"])
                    deleted.append(f"{kind} {obj['metadata']['name']}")
        return deleted


def _state(job: dict, trainer: TrainerFailure | None = None) -> JobState:
    state = job_state(job, (job["metadata"].get("annotations") or {}).get(SUSPENDED_BY_OPERATOR) == "true")
    if trainer:
        # exit code 4: the stage's check refused its config or data, which only a new spec mends
        reason = INVALID_SPEC if trainer.exit_code == EXIT_INVALID_INPUT else state.reason
        state = replace(state, reason=reason, message=f"{state.message}; the trainer said: {trainer.message}")
    return state


def _owned_by(obj: dict, owner: Owner) -> bool:
    return _owned_by_uid(obj, owner.uid)


def _owned_by_uid(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _waiting_for_pods(job: dict) -> bool:
    """The Job controller has started the Job (startTime) but no pod of it is running."""
    status = job.get("status") or {}
    return _state(job).phase == "Running" and bool(status.get("startTime")) and not status.get("active")


def _invalid_spec_changed(status: dict, generation: int | None) -> bool:
    """A job failed for its spec (or the API server refused what it became), and the spec changed since: plan it
    again."""
    failed = find_condition(status.get("conditions"), "Failed")
    return bool(failed and failed.get("reason") in SPEC_REASONS and status.get("observedGeneration") != generation)


def _ttl_left(ttl, status: dict, now: datetime) -> float | None:
    """Seconds until a finished job's TTL expires (0: expired); None without a TTL. Read from the stored spec as
    written: a TTL no calendar holds (stored before the CRD bounded it) never expires."""
    if not isinstance(ttl, int) or ttl < 0 or not status.get("completionTime"):
        return None
    try:
        expiry = parse_time(status["completionTime"]) + timedelta(seconds=ttl)
    except OverflowError:
        return None
    return max(0.0, (expiry - now).total_seconds())
