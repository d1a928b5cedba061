"""An RLHFJob's status from its Jobs and the progress its pods push: pure functions, compared as dicts.

The Jobs here are written as kube-apiserver 1.32's Job controller writes them (what kmock cannot show)."""

import pytest
from pydantic import ValidationError

from rlhf_contract.progress import ProgressRecord
from rlhf_operator.api import RLHFJobSpec, RLHFJobStatus
from rlhf_operator.plan import PlanError, make_plan
from rlhf_operator.status import (
    Event,
    JobState,
    StageRun,
    condition_reason,
    finished_stages,
    guardrail_reason,
    invalid_spec_status,
    job_state,
    live_status,
    merge_patch,
    next_status,
    pod_creation_problem,
    progress_patch,
    set_condition,
    spec_problem,
    stage_results,
    trainer_failure,
    transitions,
)

T0, T1, T2, T3 = "2026-11-24T10:00:00Z", "2026-11-24T10:05:00Z", "2026-11-24T10:30:00Z", "2026-11-24T11:00:00Z"
STAGES = ("sft", "reward", "ppo")


def condition(kind: str, reason: str, message: str = "", at: str = T1) -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": at,
            "lastTransitionTime": at}


def job(*conditions: dict, suspend: bool = False, **status) -> dict:
    return {"metadata": {"name": "j"}, "spec": {"suspend": suspend} if suspend else {},
            "status": {**status, "conditions": list(conditions)} if conditions else status}


def run(name: str, state: JobState | None = None, created: str | None = T0, problem=None) -> StageRun:
    return StageRun(name=name, job=f"demo-{name}", output=f"/workspace/{name}", state=state,
                    created=created if state else None, problem=problem)


def runs(*states: JobState | None, problem=None) -> list[StageRun]:
    padded = [*states, *[None] * (len(STAGES) - len(states))]
    return [run(name, state, problem=problem if state and i == len(states) - 1 else None)
            for i, (name, state) in enumerate(zip(STAGES, padded, strict=True))]


RUNNING = JobState("Running", active=1)
DONE = JobState("Succeeded", "Completed", completion_time=T1)


def conditions_of(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def conditions_of_messages(status: dict) -> dict[str, str]:
    return {c["type"]: c["message"] for c in status["conditions"]}


# --- a Job as the Job controller writes it ---------------------------------------------------------------------

def test_a_job_is_done_only_once_complete_not_when_success_criteria_are_met():
    met = condition("SuccessCriteriaMet", "CompletionsReached")
    assert job_state(job(met, succeeded=1, active=0)).phase == "Running"  # pods may still be terminating
    complete = condition("Complete", "CompletionsReached", at=T2)
    assert job_state(job(met, complete, succeeded=1, active=0, completionTime=T2)) == JobState(
        "Succeeded", "Completed", None, 0, T2, 0)


@pytest.mark.parametrize("reason", ["BackoffLimitExceeded", "DeadlineExceeded", "PodFailurePolicy"])
def test_a_job_fails_only_once_failed_with_the_job_controllers_reason(reason):
    target = condition("FailureTarget", reason, "Job has reached the specified backoff limit")
    assert job_state(job(target, failed=4)).phase == "Running"
    failed = condition("Failed", reason, "Job has reached the specified backoff limit", at=T2)
    assert job_state(job(target, failed, failed=4)) == JobState(
        "Failed", reason, "Job has reached the specified backoff limit", 4, T2)


def test_retries_are_the_jobs_failed_pods():
    assert job_state(job(active=1, failed=2)) == JobState("Running", retries=2, active=1)


def test_a_suspended_job_is_suspended_when_the_operator_did_it_and_queued_when_kueue_did():
    assert job_state(job(suspend=True), suspended_by_operator=True).phase == "Suspended"
    queued = job_state(job(suspend=True))
    assert (queued.phase, queued.reason) == ("Pending", "Queued")


def create_event(reason: str, at: str, message: str = "", micro: bool = False) -> dict:
    when = {"eventTime": at.replace("Z", ".000000Z")} if micro else {"lastTimestamp": at}
    return {"reason": reason, "message": message, "type": "Warning" if reason == "FailedCreate" else "Normal",
            "metadata": {"name": "e"}, **when}


def test_pods_the_job_controller_failed_to_create_are_a_problem_until_it_creates_one():
    rejected = ('Error creating: pods "demo-sft-x" is forbidden: violates PodSecurity "restricted:latest": '
                'allowPrivilegeEscalation != false')
    assert pod_creation_problem([create_event("FailedCreate", T1, rejected)]) == ("PodSecurityViolation", rejected)
    quota = 'Error creating: pods "demo-sft-x" is forbidden: exceeded quota: gpus'
    assert pod_creation_problem([create_event("FailedCreate", T1, quota)]) == ("PodCreationFailed", quota)
    # Events written through events.k8s.io carry eventTime instead of lastTimestamp.
    healed = [create_event("FailedCreate", T1, rejected), create_event("SuccessfulCreate", T2, micro=True)]
    assert pod_creation_problem(healed) is None
    assert pod_creation_problem([*healed, create_event("FailedCreate", T3, quota, micro=True)])[0] == \
        "PodCreationFailed"
    assert pod_creation_problem([create_event("Completed", T1)]) is None


# --- conditions ------------------------------------------------------------------------------------------------

def test_the_trainers_last_termination_message_explains_a_failed_stage():
    def pod(*states):
        return {"status": {"containerStatuses": [{"name": "trainer", **dict(states)}]}}

    def ended(code, message, at):
        return {"terminated": {"exitCode": code, "message": message, "finishedAt": at}}

    first = pod(("state", ended(1, "CUDA out of memory", "2026-11-24T12:00:00Z")))
    last = pod(("state", ended(4, "stage sft: dataset has no column 'review'\n", "2026-11-24T12:05:00Z")))
    assert trainer_failure([first, last]) == (4, "stage sft: dataset has no column 'review'")
    restarted = pod(("state", {"running": {}}), ("lastState", ended(1, "killed", "2026-11-24T12:01:00Z")))
    assert trainer_failure([restarted]) == (1, "killed")
    assert trainer_failure([pod(("state", ended(0, "done", "2026-11-24T12:00:00Z")))]) is None
    assert trainer_failure([{"status": {}}]) is None


def test_conditions_are_one_per_type_and_move_their_transition_time_only_when_their_status_changes():
    conditions = set_condition(None, "Running", True, "StageRunning", "sft", T0, 1)
    conditions = set_condition(conditions, "Running", True, "StageRunning", "reward", T1, 2)
    assert conditions == [{"type": "Running", "status": "True", "reason": "StageRunning", "message": "reward",
                           "lastTransitionTime": T0, "observedGeneration": 2}]
    conditions = set_condition(conditions, "Running", False, "Suspended", "suspended", T2)
    assert conditions[0]["lastTransitionTime"] == T2
    assert [c["type"] for c in set_condition(conditions, "Failed", True, "X", "", T3)] == ["Running", "Failed"]


def test_condition_reasons_are_camel_case():
    assert condition_reason("max_kl") == "MaxKl"
    assert condition_reason("reward stalled!") == "RewardStalled"
    assert condition_reason("KLExceeded") == "KLExceeded"
    assert condition_reason("3-bad") == "Reason3Bad"


# --- progress records --------------------------------------------------------------------------------------------

PPO_RECORD = {"stage": "ppo", "kind": "ppo", "step": 12, "totalSteps": 200, "time": T1, "metrics": {
    "env/reward_mean": 0.5, "objective/kl": 0.2, "objective/kl_coef": 0.05, "ppo/loss/policy": -0.1,
    "ppo/loss/value": 0.3, "objective/entropy": 2.1, "ppo/policy/clipfrac": 0.02, "tokens/responses_len_mean": 12,
    "note": "text", "flag": True, "bad": float("nan")}}


def record(data: dict) -> ProgressRecord:
    return ProgressRecord.model_validate(data)


def test_ppo_status_maps_trls_stats_keys():
    assert live_status(record(PPO_RECORD), T2) == {"meanReward": 0.5, "kl": 0.2, "klCoef": 0.05, "policyLoss": -0.1,
                                          "valueLoss": 0.3, "entropy": 2.1, "step": 12, "totalSteps": 200,
                                          "updatedAt": T2}


def test_a_stage_ends_with_its_named_results_not_every_metric():
    result = {"reason": "Completed", "steps": 200, "totalSteps": 200, "durationSeconds": 61.5, "metrics": {
        "meanScoreFirstSteps": 0.1, "meanScoreLastSteps": 2.3, "rewardBefore": 0.6, "rewardAfter": 2.4,
        "vaderBefore": 0.4, "vaderAfter": 0.7, "kl": 3.1, "ppo/policy/clipfrac": 0.02}}
    assert stage_results(record({**PPO_RECORD, "result": result})) == {
        "steps": 200, "totalSteps": 200, "durationSeconds": 61.5,
        "results": {"rewardBefore": 0.6, "rewardAfter": 2.4, "vaderBefore": 0.4, "vaderAfter": 0.7,
                    "scoreFirstSteps": 0.1, "scoreLastSteps": 2.3, "kl": 3.1}}
    patch = progress_patch({**PPO_RECORD, "result": result}, T2)
    assert set(patch["stages"]["ppo"]) == {"steps", "totalSteps", "durationSeconds", "results"}


def test_progress_shows_reward_and_kl_with_four_significant_digits_and_keeps_every_digit_in_the_live_status():
    patch = progress_patch({**PPO_RECORD, "metrics": {"env/reward_mean": 1.8757703304290771,
                                                      "objective/kl": 3.2229840755462646}}, T2)
    assert (patch["progress"]["reward"], patch["progress"]["kl"]) == (1.876, 3.223)
    assert (patch["ppo"]["meanReward"], patch["ppo"]["kl"]) == (1.8757703304290771, 3.2229840755462646)


def test_a_running_stage_that_reports_nothing_for_the_timeout_says_so_once_and_recovers_with_a_report():
    start = next_status(None, runs(RUNNING), generation=1, now=T0, progress_timeout=600)
    assert "ProgressReported" not in conditions_of(start)
    silent = next_status(start, runs(RUNNING), generation=1, now=T2, progress_timeout=600)  # 30 min, no report
    assert conditions_of(silent)["ProgressReported"] == ("False", "NoProgressReported")
    assert "no progress of stage sft has reached the operator for 10m00s" in conditions_of_messages(silent)[
        "ProgressReported"]
    assert [e.reason for e in transitions(start, silent)] == ["NoProgressReported"]
    still = next_status(silent, runs(RUNNING), generation=1, now=T3, progress_timeout=600)
    assert transitions(silent, still) == [] and still == silent  # said once, and not written again
    reported = {**still, "progress": {"stage": "sft", "step": 3, "updatedAt": T3}}
    back = next_status(reported, runs(RUNNING), generation=1, now=T3, progress_timeout=600)
    assert conditions_of(back)["ProgressReported"] == ("True", "Reported")


def test_progress_says_how_far_the_stage_is_with_its_reward_kl_and_time_left():
    patch = progress_patch({**PPO_RECORD, "estimatedRemainingSeconds": 3725.4}, T2)
    assert patch["progress"] == {"stage": "ppo", "step": 12, "totalSteps": 200, "percentage": 6,
                                 "estimatedRemainingSeconds": 3725, "eta": "1h02m05s", "reward": 0.5, "kl": 0.2,
                                 "updatedAt": T2}
    assert "stages" not in patch  # while it runs, its entry is the operator's


def test_a_last_record_names_the_guardrail_that_ended_the_stage():
    assert guardrail_reason(record({**PPO_RECORD, "result": {"reason": "Completed"}})) is None
    assert guardrail_reason(record({**PPO_RECORD, "result": {"reason": "max_kl"}})) == "MaxKl"
    assert guardrail_reason(record(PPO_RECORD)) is None
    patch = progress_patch({**PPO_RECORD, "result": {"reason": "max_kl"}}, T2)
    assert patch["stages"]["ppo"]["reason"] == "MaxKl"
    assert patch["stages"]["ppo"]["message"] == "the MaxKl guardrail ended the stage at step 12"


def test_progress_of_a_stage_without_a_reward_has_its_own_live_numbers():
    patch = progress_patch({"stage": "sft", "kind": "sft", "step": 10, "totalSteps": 40,
                            "metrics": {"loss": 1.5, "epoch": 0.1}}, T2)
    assert patch == {"sft": {"loss": 1.5, "step": 10, "totalSteps": 40, "updatedAt": T2},
                     "progress": {"stage": "sft", "step": 10, "totalSteps": 40, "percentage": 25, "updatedAt": T2}}


def test_progress_starts_over_when_the_next_stage_starts():
    status = next_status(None, runs(DONE, RUNNING), generation=1, now=T1)
    status["progress"] = {"stage": "sft", "step": 40, "totalSteps": 40, "percentage": 100}
    assert next_status(status, runs(DONE, RUNNING), generation=1, now=T2)["progress"] == {"stage": "reward"}


def test_condition_messages_are_one_line_for_kubectl_describe():
    trainer_said = "stage sft: dataset row 3\n  'text' is ''\nTraceback ...\n" + "x" * 2000
    status = next_status(None, runs(JobState("Failed", "PodFailurePolicy", trainer_said, 1, T1)), generation=1,
                         now=T1)
    message = conditions_of_messages(status)["Failed"]
    assert "\n" not in message and len(message) <= 600 and message.startswith("stage sft failed: stage sft: dataset")


# --- the whole status ------------------------------------------------------------------------------------------

def test_the_first_stage_running_makes_the_job_running_and_lists_the_stages_to_come():
    status = next_status(None, runs(RUNNING), generation=1, now=T0)
    assert status["phase"] == "Running" and status["stage"] == "sft" and status["startTime"] == T0
    assert status["stages"] == {"sft": {"phase": "Running", "job": "demo-sft", "startTime": T0},
                                "reward": {"phase": "Pending"}, "ppo": {"phase": "Pending"}}
    assert conditions_of(status) == {"Created": ("True", "Planned"), "Running": ("True", "StageRunning")}
    assert status["observedGeneration"] == 1
    RLHFJobStatus.model_validate(status)  # every field is declared in the CRD (else the API server prunes it)


def test_a_stage_that_succeeded_records_its_output_and_the_next_one_runs():
    before = next_status(None, runs(RUNNING), generation=1, now=T0)
    status = next_status(before, runs(DONE, RUNNING), generation=1, now=T1)
    assert status["stages"]["sft"] == {
        "phase": "Succeeded", "job": "demo-sft", "startTime": T0, "completionTime": T1, "output": "/workspace/sft",
        "reason": "Completed",
        "message": "no results reached the operator from the stage's pods; they are in /workspace/sft/result.json "
                   "on the workspace claim"}  # its trainer's last record, with them, did not arrive
    assert (status["phase"], status["stage"]) == ("Running", "reward")
    assert transitions(before, status) == [
        Event("Normal", "StageSucceeded", "stage sft succeeded in 5m00s; output /workspace/sft"),
        Event("Normal", "StageStarted", "stage reward started: Job demo-reward")]
    assert finished_stages(before, status) == [("sft", "Succeeded", 300.0)]


def test_all_stages_succeeded_make_the_job_succeeded_at_the_last_ones_completion():
    before = next_status(None, runs(DONE, DONE, RUNNING), generation=1, now=T1)
    status = next_status(before, runs(DONE, DONE, JobState("Succeeded", "Completed", completion_time=T3)),
                         generation=1, now=T3)
    assert (status["phase"], status["stage"], status["completionTime"]) == ("Succeeded", "ppo", T3)
    assert conditions_of(status) == {"Created": ("True", "Planned"), "Running": ("False", "Finished"),
                                     "Succeeded": ("True", "Completed")}
    assert Event("Normal", "Succeeded", "all 3 stage(s) succeeded") in transitions(before, status)


def test_a_failed_job_fails_the_rlhfjob_with_the_jobs_reason():
    before = next_status(None, runs(DONE, RUNNING), generation=1, now=T1)
    failed = JobState("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", 4, T2)
    status = next_status(before, runs(DONE, failed), generation=1, now=T2)
    assert (status["phase"], status["stage"], status["completionTime"]) == ("Failed", "reward", T2)
    assert status["stages"]["reward"]["reason"] == "BackoffLimitExceeded"
    assert status["stages"]["reward"]["retries"] == 4
    assert conditions_of(status)["Failed"] == ("True", "BackoffLimitExceeded")
    assert transitions(before, status) == [
        Event("Warning", "StageFailed",
              "stage reward failed: BackoffLimitExceeded: Job has reached the specified backoff limit"),
        Event("Warning", "Failed", "stage reward failed: Job has reached the specified backoff limit")]


def test_a_pod_failure_is_a_retry_event_and_a_count():
    before = next_status(None, runs(RUNNING), generation=1, now=T0)
    status = next_status(before, runs(JobState("Running", retries=1, active=1)), generation=1, now=T1)
    assert status["stages"]["sft"]["retries"] == 1 and status["phase"] == "Running"
    assert transitions(before, status) == [Event(
        "Warning", "StageRetrying", "stage sft: 1 pod failure(s) so far; retrying from the last complete checkpoint")]


def test_suspend_and_resume_show_in_phase_condition_and_events():
    running = next_status(None, runs(RUNNING), generation=1, now=T0)
    suspended = next_status(running, runs(JobState("Suspended", "Suspended", "spec.suspend is true")),
                            generation=2, now=T1)
    assert suspended["phase"] == "Suspended"
    assert conditions_of(suspended)["Suspended"] == ("True", "Suspended")
    assert conditions_of(suspended)["Running"] == ("False", "Suspended")
    assert transitions(running, suspended) == [Event("Normal", "Suspended", "stage sft suspended (spec.suspend)")]
    resumed = next_status(suspended, runs(RUNNING), generation=3, now=T2)
    assert resumed["phase"] == "Running" and "reason" not in resumed["stages"]["sft"]
    assert conditions_of(resumed)["Suspended"] == ("False", "Resumed")
    assert transitions(suspended, resumed) == [Event("Normal", "Resumed", "stage sft resumed")]


def test_pods_the_job_controller_cannot_create_are_surfaced_not_waited_on():
    message = ('pods "demo-sft-x" is forbidden: violates PodSecurity "restricted:latest": '
               'allowPrivilegeEscalation != false')
    before = next_status(None, runs(RUNNING), generation=1, now=T0)
    status = next_status(before, runs(JobState("Running"), problem=("PodSecurityViolation", message)),
                         generation=1, now=T1)
    assert status["stages"]["sft"]["phase"] == "Pending" and status["phase"] == "Pending"
    assert status["conditions"][1] == {"type": "Running", "status": "False", "reason": "PodSecurityViolation",
                                       "message": message, "lastTransitionTime": T1, "observedGeneration": 1}
    assert transitions(before, status) == [Event("Warning", "PodSecurityViolation", f"stage sft: {message}")]
    healed = next_status(status, runs(RUNNING), generation=1, now=T2)
    assert healed["phase"] == "Running" and "reason" not in healed["stages"]["sft"]


def test_a_guardrail_that_stopped_ppo_is_the_reason_of_the_stage_and_of_the_succeeded_condition():
    before = next_status(None, runs(DONE, DONE, RUNNING), generation=1, now=T1)
    before["stages"]["ppo"].update(progress_patch({"stage": "ppo", "kind": "ppo", "step": 30,
                                                   "result": {"reason": "max_kl"}}, T2)["stages"]["ppo"])
    still = next_status(before, runs(DONE, DONE, RUNNING), generation=1, now=T2)
    assert still["stages"]["ppo"]["reason"] == "MaxKl"  # kept while the pod exits
    status = next_status(still, runs(DONE, DONE, DONE), generation=1, now=T3)
    assert status["stages"]["ppo"]["reason"] == "MaxKl"
    assert conditions_of(status)["Succeeded"] == ("True", "MaxKl")
    assert Event("Normal", "GuardrailStopped", "stage ppo: the MaxKl guardrail ended the stage at step 30") \
        in transitions(still, status)


def test_a_guardrail_that_failed_ppo_is_the_reason_of_the_failure():
    before = next_status(None, runs(DONE, DONE, RUNNING), generation=1, now=T1)
    before["stages"]["ppo"].update(progress_patch({"stage": "ppo", "kind": "ppo", "step": 30,
                                                   "result": {"reason": "RewardStalled"}}, T2)["stages"]["ppo"])
    failed = JobState("Failed", "PodFailurePolicy", "Container trainer for pod x failed with exit code 3", 1, T3)
    status = next_status(before, runs(DONE, DONE, failed), generation=1, now=T3)
    assert conditions_of(status)["Failed"] == ("True", "RewardStalled")
    assert "exit code 3" in status["stages"]["ppo"]["message"]
    assert [e.reason for e in transitions(before, status)] == ["StageFailed", "GuardrailFailed", "Failed"]


def test_a_finished_stage_keeps_its_record_when_its_job_is_gone():
    done = next_status(None, runs(DONE, RUNNING), generation=1, now=T1)
    status = next_status(done, runs(None, RUNNING), generation=1, now=T2)
    assert status["stages"]["sft"] == done["stages"]["sft"]


def test_status_others_write_is_kept_and_a_recomputed_status_changes_nothing():
    status = next_status(None, runs(DONE, RUNNING), generation=1, now=T1)
    status["ppo"] = {"step": 3}
    status["stages"]["reward"]["results"] = {"evalAccuracy": 0.5}
    again = next_status(status, runs(DONE, RUNNING), generation=1, now=T3)
    assert again == status
    assert merge_patch(status, again) == {} and transitions(status, again) == []


def test_merge_patch_sends_changes_and_nulls_for_removed_fields():
    old = {"phase": "Running", "stages": {"sft": {"phase": "Running", "reason": "Suspended", "results": {"a": 1}}}}
    new = {"phase": "Running", "stages": {"sft": {"phase": "Running", "results": {"a": 1}}}, "stage": "sft"}
    assert merge_patch(old, new) == {"stages": {"sft": {"reason": None}}, "stage": "sft"}


# --- specs that cannot run ---------------------------------------------------------------------------------------

def test_an_invalid_spec_fails_the_job_with_the_field_in_the_condition():
    with pytest.raises(ValidationError) as error:
        RLHFJobSpec.model_validate({"stages": {"ppo": {"dataset": {"builtin": "movie-prompts"}}}}, by_name=False)
    path, message = spec_problem(error.value)
    assert path == "spec.stages.ppo.steps" and message.startswith("required field is missing")
    status = invalid_spec_status(None, path, message, generation=1, now=T0)
    assert status["phase"] == "Failed" and status["completionTime"] == T0
    failed = status["conditions"][1]
    assert (failed["type"], failed["reason"]) == ("Failed", "InvalidSpec")
    assert failed["message"].startswith("spec.stages.ppo.steps: required field is missing")
    assert transitions(None, status) == [Event("Warning", "InvalidSpec", failed["message"])]


def test_a_spec_that_does_not_plan_names_the_field_to_fix():
    spec = RLHFJobSpec.model_validate({"model": {"builtin": "tiny-gpt2"}, "stages": {"ppo": {
        "dataset": {"builtin": "movie-prompts"}, "steps": 2, "reward": {"fromStage": "reward"}}}}, by_name=False)
    with pytest.raises(PlanError) as error:
        make_plan(spec, "demo")
    assert spec_problem(error.value) == ("spec.stages.ppo.reward.fromStage",
                                         "stage 'reward' does not run before 'ppo' (this job has no reward stage)")


def test_a_fixed_spec_clears_the_failure():
    invalid = invalid_spec_status(None, "spec.stages", "no stages", generation=1, now=T0)
    status = next_status(invalid, runs(RUNNING), generation=2, now=T1)
    assert status["phase"] == "Running" and "completionTime" not in status
    assert conditions_of(status)["Failed"] == ("False", "SpecValid")
    assert conditions_of(status)["Created"] == ("True", "Planned")
