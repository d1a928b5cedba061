"""An RLHFJob's status from what the cluster holds (pure: no kopf, no Kubernetes client, no clock).

The operator reads its stages' Jobs, turns each into a ``JobState`` and computes the next status with
``next_status``; ``transitions`` says which Kubernetes Events that change deserves and ``merge_patch`` what to
send to the status subresource. Progress records pushed by trainer pods become status with ``progress_patch``.
``rlhf run`` uses the same functions to show the status a resource would hold. Times are RFC 3339 strings.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from rlhf_contract.progress import ProgressRecord, numbers
from rlhf_contract.stages import KINDS
from rlhf_operator.plan import PlanError

TERMINAL = ("Succeeded", "Failed")
CONDITION_MESSAGE_LIMIT = 600
INVALID_SPEC = "InvalidSpec"
PROGRESS_REPORTED = "ProgressReported"
NO_PROGRESS = "NoProgressReported"
FORBIDDEN = "Forbidden"
SPEC_REASONS = (INVALID_SPEC, FORBIDDEN)
"""Failed reasons that a change of the spec can mend: the job is planned again when its spec changes."""
COMPLETED = "Completed"
POD_SECURITY = "PodSecurityViolation"
POD_CREATION = "PodCreationFailed"
PUSHED = ("steps", "totalSteps", "durationSeconds", "results")
"""The fields of a stage's status entry that its trainer's last progress record fills in."""
# Reasons the operator gives a stage that has not finished; any other reason on such a stage was reported by its
# pod (the PPO guardrail that is ending it) and is kept.
_PASSING_REASONS = {"Suspended", "Queued", POD_SECURITY, POD_CREATION}



# --- time -----------------------------------------------------------------------------------------------------

def timestamp(moment: datetime) -> str:
    """``2026-11-24T12:00:00Z``, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()


# --- conditions -----------------------------------------------------------------------------------------------

def find_condition(conditions: list[dict] | None, kind: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


def set_condition(conditions: list[dict] | None, kind: str, status: bool, reason: str, message: str, now: str,
                  generation: int | None = None) -> list[dict]:
    """``conditions`` with the one of type ``kind`` set (one per type; its lastTransitionTime moves only when its
    status changes)."""
    value = "True" if status else "False"
    old = find_condition(conditions, kind)
    condition = {"type": kind, "status": value, "reason": reason, "message": one_line(message),
                 "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == value else now}
    if generation is not None:
        condition["observedGeneration"] = generation
    if old is None:
        return [*(conditions or []), condition]
    return [condition if c is old else c for c in conditions]


def one_line(text: str, limit: int = CONDITION_MESSAGE_LIMIT) -> str:
    """``text`` on one line (``kubectl describe`` shows a condition's message in a column), cut to ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def condition_reason(text: str) -> str:
    """``text`` as a condition reason (CamelCase: a letter, then letters, digits and underscores)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    reason = "".join(w[0].upper() + w[1:] for w in words)
    return reason if reason[:1].isalpha() else f"Reason{reason}"


# --- a stage's Job --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobState:
    """Where a stage's Job is. Only the Job controller's Complete and Failed conditions end it: the interim
    SuccessCriteriaMet and FailureTarget mean pods may still be terminating."""

    phase: str
    """Running, Succeeded, Failed, Suspended (spec.suspend) or Pending (suspended by someone else: Kueue)."""
    reason: str | None = None
    message: str | None = None
    retries: int = 0
    """Pods that failed and were replaced (the Job's ``failed`` count)."""
    completion_time: str | None = None
    active: int = 0
    """Pods running now."""


def job_state(job: dict, suspended_by_operator: bool = False) -> JobState:
    """The state of a batch/v1 Job; ``suspended_by_operator``: its suspension is the RLHFJob's spec.suspend."""
    status = job.get("status") or {}
    retries, active = status.get("failed", 0), status.get("active", 0)
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if complete := true.get("Complete"):
        return JobState("Succeeded", COMPLETED, complete.get("message") or None, retries,
                        status.get("completionTime") or complete.get("lastTransitionTime"), active)
    if failed := true.get("Failed"):
        return JobState("Failed", failed.get("reason") or "Failed", failed.get("message") or "the Job failed",
                        retries, failed.get("lastTransitionTime"), active)
    if (job.get("spec") or {}).get("suspend"):
        if suspended_by_operator:
            return JobState("Suspended", "Suspended", "spec.suspend is true", retries, active=active)
        return JobState("Pending", "Queued", "the Job is suspended until its queue admits it (Kueue)", retries,
                        active=active)
    return JobState("Running", retries=retries, active=active)


class TrainerFailure(NamedTuple):
    """What a failed trainer container said (its termination message) and its exit code."""

    exit_code: int
    message: str


def trainer_failure(pods: list[dict]) -> TrainerFailure | None:
    """What the trainer said when it last failed: the termination message of the latest container that exited
    with an error (the stage runner writes the cause there; Kubernetes keeps its last 4 KiB)."""
    ended = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state"), container.get("lastState")):
                terminated = (state or {}).get("terminated") or {}
                if terminated.get("exitCode") and (terminated.get("message") or "").strip():
                    ended.append((terminated.get("finishedAt") or "", terminated["exitCode"],
                                  terminated["message"].strip()))
    return TrainerFailure(*max(ended)[1:]) if ended else None


def pod_creation_problem(events: list[dict]) -> tuple[str, str] | None:
    """(reason, message) when the Job controller's last attempt to create a pod failed, from the Job's Events
    (``FailedCreate`` after any ``SuccessfulCreate``): e.g. Pod Security admission rejected the pod."""
    creates = sorted((e for e in events if e.get("reason") in ("SuccessfulCreate", "FailedCreate")), key=_event_time)
    if not creates or creates[-1]["reason"] != "FailedCreate":
        return None
    message = creates[-1].get("message") or "the Job controller cannot create pods"
    return (POD_SECURITY if "violates PodSecurity" in message else POD_CREATION), message


def _event_time(event: dict) -> datetime:
    """When an Event last happened (Events written through the two events APIs fill different fields)."""
    text = (event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            or (event.get("metadata") or {}).get("creationTimestamp") or "1970-01-01T00:00:00Z")
    return parse_time(text)


# --- progress records pushed by trainer pods ------------------------------------------------------------------

def live_status(record: ProgressRecord, now: str) -> dict | None:
    """``status.<kind>`` from a progress record: the kind's live numbers (``rlhf_contract.kinds``)."""
    kind = KINDS.get(record.kind)
    if kind is None or not kind.live:
        return None
    metrics = numbers(record.metrics)
    status: dict[str, Any] = {field: metrics[n.key] for field, n in kind.live.items() if n.key in metrics}
    status["step"] = record.step
    if record.total_steps is not None:
        status["totalSteps"] = record.total_steps
    status["updatedAt"] = now
    return status


def progress(record: ProgressRecord, live: dict | None, now: str) -> dict:
    """``status.progress`` from a progress record: how far its stage is, and its reward and KL where it has them."""
    found: dict[str, Any] = {"stage": record.stage, "step": record.step, "updatedAt": now}
    if record.total_steps:
        found["totalSteps"] = record.total_steps
        found["percentage"] = min(100, int(100 * record.step / record.total_steps))
    if record.estimated_remaining_seconds is not None and record.estimated_remaining_seconds >= 0:
        seconds = round(record.estimated_remaining_seconds)
        found.update(estimatedRemainingSeconds=seconds, eta=_duration(seconds))
    kind = KINDS.get(record.kind)
    for field in ("reward", "kl"):
        live_field = getattr(kind, field, None) if kind else None
        if live and live_field in live:
            found[field] = _shown(live[live_field])
    return found


def _shown(value: float) -> float:
    """``value`` to 4 significant digits: status.progress is what kubectl's columns print (status.<kind> keeps
    every digit)."""
    return float(f"{value:.4g}")


def stage_results(record: ProgressRecord) -> dict[str, Any]:
    """What a stage's last record (the one with its result) puts in its status entry: steps, duration and the
    kind's headline results (``status.stages.<stage>.results``); the trainer's other metrics stay in its
    metrics.jsonl and TensorBoard."""
    result = record.result or {}
    entry = {field: result[key] for field, key in (("steps", "steps"), ("totalSteps", "totalSteps"),
                                                   ("durationSeconds", "durationSeconds"))
             if isinstance(result.get(key), int | float) and not isinstance(result.get(key), bool)}
    kind = KINDS.get(record.kind)
    metrics = numbers(result.get("metrics"))
    if kind is not None and (results := {f: metrics[n.key] for f, n in kind.results.items() if n.key in metrics}):
        entry["results"] = results
    return entry


def guardrail_reason(record: ProgressRecord) -> str | None:
    """The guardrail that ended the stage, from a last record's ``result.reason`` (None: it ran to the end)."""
    reason = (record.result or {}).get("reason")
    if not isinstance(reason, str) or not reason.strip() or reason == COMPLETED:
        return None
    return condition_reason(reason)


def _guardrail_prefix(reason: str) -> str:
    return f"the {reason} guardrail ended the stage"


def ended_by_guardrail(entry: dict) -> bool:
    """Whether a stage's status entry says a guardrail ended it."""
    reason = entry.get("reason")
    return bool(reason) and str(entry.get("message", "")).startswith(_guardrail_prefix(reason))


def progress_patch(record: dict | ProgressRecord, now: str) -> dict:
    """The status merge patch for a progress record (``rlhf_contract.progress``); ValueError for one that is not."""
    record = ProgressRecord.model_validate(record) if isinstance(record, dict) else record
    entry: dict[str, Any] = stage_results(record) if record.result is not None else {}
    if guardrail := guardrail_reason(record):
        entry["reason"] = guardrail
        entry["message"] = f"{_guardrail_prefix(guardrail)} at step {record.step}"
    patch: dict[str, Any] = {"stages": {record.stage: entry}} if entry else {}
    live = live_status(record, now)
    if live is not None:
        patch[record.kind] = live
    patch["progress"] = progress(record, live, now)
    return patch


# --- the whole status -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageRun:
    """What is known of one planned stage."""

    name: str
    job: str
    """Name of its Job."""
    output: str
    """Its directory in the workspace."""
    state: JobState | None = None
    """None: its Job does not exist (not started, or deleted after it finished)."""
    created: str | None = None
    """When its Job was created."""
    problem: tuple[str, str] | None = None
    """(reason, message) when its Job cannot create pods (e.g. Pod Security admission rejects them)."""


def next_status(old: dict | None, runs: list[StageRun], *, generation: int | None, now: str,
                progress_timeout: float | None = None) -> dict:
    """The status of an RLHFJob whose stages (in order) are ``runs``, given its current status ``old``.

    Fields others write (status.progress, status.<kind>, stage results pushed by pods) are kept; a finished stage's entry never
    changes again; stage and job reasons follow the Jobs' (BackoffLimitExceeded, DeadlineExceeded, ...).
    """
    status = copy.deepcopy(old or {})
    stages = status.setdefault("stages", {})
    for run in runs:
        stages[run.name] = _stage_entry(stages.get(run.name) or {}, run)
    entries = [(run, stages[run.name]) for run in runs]

    failed = next(((run, e) for run, e in entries if e["phase"] == "Failed"), None)
    current = next(((run, e) for run, e in entries if e["phase"] != "Succeeded"), None)
    if failed is not None:
        run, entry = failed
        status.update(phase="Failed", stage=run.name)
        status["completionTime"] = status.get("completionTime") or entry.get("completionTime") or now
    elif current is None:
        run, entry = entries[-1]
        status.update(phase="Succeeded", stage=run.name)
        status["completionTime"] = status.get("completionTime") or entry.get("completionTime") or now
    else:
        run, entry = current
        status.update(phase=entry["phase"], stage=run.name)
        status.pop("completionTime", None)
        if (status.get("progress") or {}).get("stage") != run.name:  # a new stage: nothing reported of it yet
            status["progress"] = {"stage": run.name}
    started = [e["startTime"] for _, e in entries if e.get("startTime")]
    if started and not status.get("startTime"):
        status["startTime"] = min(started)
    status["conditions"] = _conditions(status, runs, entries, generation, now)
    if progress_timeout is not None:
        status["conditions"] = _progress_condition(status, runs, generation, now, progress_timeout)
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _stage_entry(old: dict, run: StageRun) -> dict:
    if old.get("phase") in TERMINAL and (run.state is None or run.state.phase == old["phase"]):
        return old  # finished: its record is final (its Job may even be gone)
    entry = {key: value for key, value in old.items() if key in PUSHED}
    state = run.state
    if state is None:
        return {**entry, "phase": "Pending"}
    reported = old.get("reason") if old.get("reason") not in _PASSING_REASONS else None
    entry.update(phase=state.phase, job=run.job)
    if run.created:
        entry["startTime"] = run.created
    if state.retries:
        entry["retries"] = state.retries
    if state.phase == "Succeeded":
        entry.update(completionTime=state.completion_time or run.created, output=run.output,
                     reason=reported or COMPLETED)
        if reported:
            entry["message"] = old.get("message")
        elif "steps" not in entry:  # the trainer's last record, which carries them, never arrived
            entry["message"] = (f"no results reached the operator from the stage's pods; they are in "
                                f"{run.output}/result.json on the workspace claim")
    elif state.phase == "Failed":
        entry["completionTime"] = state.completion_time or run.created
        if reported and state.reason == "PodFailurePolicy":  # the guardrail failed the stage (exit code 3)
            entry.update(reason=reported, message=f"{old.get('message')} ({state.message})")
        else:
            entry.update(reason=state.reason, message=state.message)
    elif state.phase == "Running" and run.problem is not None:
        reason, message = run.problem
        entry.update(phase="Pending", reason=reason, message=message)
    elif state.phase == "Running":
        if reported:
            entry.update(reason=reported, message=old.get("message"))
    else:  # Suspended, or Pending in a queue
        entry.update(reason=state.reason, message=state.message)
    return {key: value for key, value in entry.items() if value is not None}


def _conditions(status: dict, runs: list[StageRun], entries: list[tuple[StageRun, dict]], generation: int | None,
                now: str) -> list[dict]:
    conditions = status.get("conditions") or []
    phase, stage = status["phase"], status["stage"]
    entry = status["stages"][stage]

    def put(kind: str, value: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, kind, value, reason, message, now, generation)

    order = " -> ".join(run.name for run in runs)
    put("Created", True, "Planned", f"{len(runs)} stage(s): {order}")
    if phase == "Running":
        put("Running", True, "StageRunning", f"stage {stage} is running (Job {entry['job']})")
    elif phase in TERMINAL:
        put("Running", False, "Finished", f"the job {phase.lower()}")
    else:
        put("Running", False, entry.get("reason") or phase,
            entry.get("message") or f"stage {stage} is waiting for its Job")
    if phase == "Suspended":
        put("Suspended", True, "Suspended", f"stage {stage} is suspended: spec.suspend is true")
    elif find_condition(conditions, "Suspended"):
        put("Suspended", False, "Resumed", "spec.suspend is false")
    if phase == "Succeeded":
        early = [(run.name, e["reason"]) for run, e in entries if ended_by_guardrail(e)]
        if early:
            name, reason = early[-1]
            put("Succeeded", True, reason, f"all {len(runs)} stage(s) succeeded; {name} ended early: "
                                           f"{status['stages'][name].get('message')}")
        else:
            put("Succeeded", True, COMPLETED, f"all {len(runs)} stage(s) succeeded")
    if phase == "Failed":
        put("Failed", True, entry.get("reason") or "Failed", f"stage {stage} failed: {entry.get('message')}")
    elif find_condition(conditions, "Failed"):
        put("Failed", False, "SpecValid", "the spec is valid now")  # only an invalid spec can be fixed
    return conditions


def unreported_seconds(status: dict, runs: list[StageRun], now: str) -> float | None:
    """How long the running stage's pods have run without a progress report reaching the status (counted from its
    Job's creation or its last report); None when no stage's pods are running."""
    run = next((r for r in runs if r.name == status.get("stage")), None)
    if run is None or run.state is None or run.state.phase != "Running" or not run.state.active:
        return None
    progress = status.get("progress") or {}
    last = progress.get("updatedAt") if progress.get("stage") == run.name else None
    return seconds_between(last or run.created or now, now)


def _progress_condition(status: dict, runs: list[StageRun], generation: int | None, now: str,
                        timeout: float) -> list[dict]:
    """ProgressReported: False once the running stage has gone ``timeout`` seconds without a report (the pods
    cannot reach the operator, or their trainer is stuck), True again with the next report."""
    conditions, stage = status["conditions"], status["stage"]
    silent = unreported_seconds(status, runs, now)
    if silent is not None and silent >= timeout:
        message = (f"no progress of stage {stage} has reached the operator for {_duration(timeout)}: its pods "
                   "push to the operator's service URL (a WARNING in their log says why a push failed); the "
                   "stage's results are in its result.json on the workspace claim")
        return set_condition(conditions, PROGRESS_REPORTED, False, NO_PROGRESS, message, now, generation)
    reported = (status.get("progress") or {}).get("updatedAt")
    if find_condition(conditions, PROGRESS_REPORTED) and reported and silent is not None:
        return set_condition(conditions, PROGRESS_REPORTED, True, "Reported", f"stage {stage} reports its progress",
                             now, generation)
    return conditions


def invalid_spec_status(old: dict | None, path: str, message: str, *, reason: str = INVALID_SPEC,
                        stage: str | None = None, generation: int | None, now: str) -> dict:
    """The status of an RLHFJob whose spec cannot run (or whose ``stage`` the API server refused to create): Failed,
    with the field to fix in the condition."""
    status = copy.deepcopy(old or {})
    status.update(phase="Failed")
    if stage is not None:
        status["stage"] = stage
    status["completionTime"] = status.get("completionTime") or now
    text = f"{path}: {message}"
    conditions = set_condition(status.get("conditions"), "Created", False, reason, text, now, generation)
    status["conditions"] = set_condition(conditions, "Failed", True, reason, text, now, generation)
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def spec_problem(error: ValidationError | PlanError) -> tuple[str, str]:
    """(field path, what is wrong) of a spec that does not parse or plan, for the InvalidSpec condition."""
    if isinstance(error, PlanError):
        return error.path, error.message
    problems = []
    for e in error.errors():
        where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in e["loc"])
        text = "required field is missing" if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            text = "unknown field"
        problems.append((f"spec{where}", text))
    path, message = problems[0]
    if len(problems) > 1:
        message += "; also " + "; ".join(f"{p}: {m}" for p, m in problems[1:])
    return path, message


# --- what changed ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the RLHFJob."""

    type: str
    """Normal or Warning."""
    reason: str
    message: str


def transitions(old: dict | None, new: dict) -> list[Event]:
    """The Events for the change from status ``old`` to ``new``."""
    old = old or {}
    events = []
    old_stages = old.get("stages") or {}
    for name, entry in (new.get("stages") or {}).items():
        before = old_stages.get(name) or {}
        events += _stage_events(name, before, entry)
    silent = find_condition(new.get("conditions"), PROGRESS_REPORTED)
    if silent and silent["status"] == "False" and (find_condition(old.get("conditions"), PROGRESS_REPORTED)
                                                   or {}).get("status") != "False":
        events.append(Event("Warning", NO_PROGRESS, silent["message"]))
    if new.get("phase") != old.get("phase"):
        if new.get("phase") == "Succeeded":
            events.append(Event("Normal", "Succeeded", find_condition(new["conditions"], "Succeeded")["message"]))
        elif new.get("phase") == "Failed":
            condition = find_condition(new["conditions"], "Failed")
            reason = condition["reason"] if condition["reason"] in SPEC_REASONS else "Failed"
            events.append(Event("Warning", reason, condition["message"]))
    return events


def _stage_events(name: str, before: dict, after: dict) -> list[Event]:
    was, now = before.get("phase"), after.get("phase")
    events = []
    if after.get("job") and not before.get("job"):
        events.append(Event("Normal", "StageStarted", f"stage {name} started: Job {after['job']}"))
    if now == "Suspended" and was != "Suspended":
        events.append(Event("Normal", "Suspended", f"stage {name} suspended (spec.suspend)"))
    elif was == "Suspended" and now not in ("Suspended", *TERMINAL):
        events.append(Event("Normal", "Resumed", f"stage {name} resumed"))
    if after.get("retries", 0) > before.get("retries", 0) and now not in TERMINAL:
        events.append(Event("Warning", "StageRetrying", f"stage {name}: {after['retries']} pod failure(s) so far; "
                                                        "retrying from the last complete checkpoint"))
    reason = after.get("reason")
    if reason in (POD_SECURITY, POD_CREATION) and before.get("reason") != reason:
        events.append(Event("Warning", reason, f"stage {name}: {after.get('message')}"))
    if now in TERMINAL and was != now:
        if now == "Succeeded":
            took = (f" in {_duration(seconds_between(after['startTime'], after['completionTime']))}"
                    if after.get("startTime") and after.get("completionTime") else "")
            events.append(Event("Normal", "StageSucceeded", f"stage {name} succeeded{took}; output {after.get('output')}"))
        else:
            events.append(Event("Warning", "StageFailed", f"stage {name} failed: {reason}: {after.get('message')}"))
        if ended_by_guardrail(after):
            kind = "Normal" if now == "Succeeded" else "Warning"
            events.append(Event(kind, f"Guardrail{'Stopped' if now == 'Succeeded' else 'Failed'}",
                                f"stage {name}: {after['message']}"))
    return events


def finished_stages(old: dict | None, new: dict) -> list[tuple[str, str, float]]:
    """(stage, phase, seconds from its Job's creation to its end) of each stage that finished in this change."""
    old_stages = (old or {}).get("stages") or {}
    found = []
    for name, entry in (new.get("stages") or {}).items():
        finished = entry.get("phase") in TERMINAL and (old_stages.get(name) or {}).get("phase") != entry["phase"]
        if finished and entry.get("startTime") and entry.get("completionTime"):
            found.append((name, entry["phase"], seconds_between(entry["startTime"], entry["completionTime"])))
    return found


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``; {} when they are equal. Lists are replaced."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) and isinstance(old[key], dict) \
                else value
    return patch


def apply_patch(doc: Any, patch: Any) -> Any:
    """``doc`` with the JSON merge patch (RFC 7386) ``patch`` applied, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_patch(result.get(key), value)
    return result
