"""The operator end to end against an emulated API server, driven with the official client as kubectl would be.

The test plays the Job controller (Job status as kube-apiserver 1.32 writes it), the kubelet (pods, projected
tokens) and the trainer (progress pushes with the stage runner's own reporter)."""


import pytest
from harness import DEMO, names, now, rlhfjob, run_stage, wait_for, wait_idle

from rlhf_operator import controller
from rlhf_operator.api import GROUP, PLURAL, VERSION
from rlhf_operator.status import progress_patch
from rlhf_trainer.stage.report import HttpReporter, Reporter


def wait_events(api, ns: str, name: str, *reasons: str) -> list[str]:
    return wait_for(lambda: set(reasons) <= set(seen := api.event_reasons(ns, name)) and seen,
                    what=f"events {reasons} on {name}")


def test_three_stages_run_in_order_and_ppo_progress_reaches_the_status(cluster, api, ns, operator, tmp_path):
    api.create_rlhfjob(ns, rlhfjob("sentiment"))
    api.wait_job(ns, "sentiment-sft")
    status = api.wait_phase(ns, "sentiment", "Running")
    assert (status["stage"], status["stages"]["sft"]["job"]) == ("sft", "sentiment-sft")
    assert names(cluster, "v1/persistentvolumeclaims") == ["sentiment-workspace"]
    assert names(cluster, "v1/configmaps") == ["sentiment-sft"]
    job = api.job(ns, "sentiment-sft")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/rlhf-trainer:test"

    run_stage(api, ns, "sentiment-sft")
    api.wait_job(ns, "sentiment-reward")
    run_stage(api, ns, "sentiment-reward")
    api.wait_job(ns, "sentiment-ppo")
    api.start_job(ns, "sentiment-ppo")

    # The trainer pod pushes its progress with the stage runner's reporter and its projected token.
    pod = api.pod(ns, "sentiment-ppo")
    token_file = tmp_path / "token"
    token_file.write_text(cluster.issue_pod_token(ns, pod))
    reporter = Reporter("ppo", "ppo", [HttpReporter(operator.url + "/v1/status", str(token_file), interval=0)])
    for step in (1, 2, 3):
        reporter.report(step, 40, {"env/reward_mean": 0.1 * step, "objective/kl": 0.01 * step,
                                   "objective/kl_coef": 0.05, "ppo/loss/policy": -0.2, "ppo/loss/value": 0.3,
                                   "objective/entropy": 2.5, "ppo/policy/clipfrac": 0.02})
    # the newest record wins: step 3 is sent, even when 1 and 2 were replaced before they went out
    wait_for(lambda: api.status(ns, "sentiment").get("ppo", {}).get("step") == 3)
    reporter.report(40, 40, {"env/reward_mean": 0.9, "objective/kl": 0.08},
                    result={"reason": "Completed", "steps": 40, "totalSteps": 40, "durationSeconds": 95.0,
                            "metrics": {"rewardBefore": 0.6, "rewardAfter": 0.8, "ppo/policy/clipfrac": 0.02}})
    reporter.close()
    ppo = wait_for(lambda: (p := api.status(ns, "sentiment").get("ppo", {})).get("step") == 40 and p)
    assert {k: v for k, v in ppo.items() if k != "updatedAt"} == {
        "step": 40, "totalSteps": 40, "meanReward": 0.9, "kl": 0.08, "klCoef": 0.05, "policyLoss": -0.2,
        "valueLoss": 0.3, "entropy": 2.5}

    api.complete_job(ns, "sentiment-ppo")
    status = api.wait_phase(ns, "sentiment", "Succeeded")
    assert status["stage"] == "ppo" and status["completionTime"] >= status["startTime"]
    for stage in ("sft", "reward", "ppo"):
        entry = status["stages"][stage]
        assert (entry["phase"], entry["output"], entry["reason"]) == ("Succeeded", f"/workspace/{stage}", "Completed")
        assert entry["completionTime"] >= entry["startTime"]
    ppo = status["stages"]["ppo"]  # named results, not every metric of the trainer
    assert (ppo["steps"], ppo["totalSteps"], ppo["durationSeconds"]) == (40, 40, 95.0)
    assert ppo["results"] == {"rewardBefore": 0.6, "rewardAfter": 0.8}
    assert status["progress"]["step"] == 40 and status["progress"]["percentage"] == 100
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Created": "True", "Running": "False", "Succeeded": "True"}
    assert status["observedGeneration"] == 1
    reasons = wait_events(api, ns, "sentiment", "Succeeded")  # a stage's start may be told before the last's end
    assert sorted(reasons) == ["StageStarted"] * 3 + ["StageSucceeded"] * 3 + ["Succeeded"]
    assert reasons[-1] == "Succeeded"
    assert operator.metric("rlhf_jobs", phase="Succeeded") == 1
    assert operator.metric("rlhf_stage_duration_seconds_count", phase="Succeeded", stage="ppo") == 1
    assert 2 <= operator.metric("rlhf_status_pushes_total") <= 4  # what the newest-wins pusher sent
    assert operator.get("/healthz") == (200, "ok")


def test_a_failed_pod_is_retried_and_the_stage_goes_on(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("flaky"))
    api.wait_job(ns, "flaky-sft")
    api.start_job(ns, "flaky-sft")
    api.fail_pod(ns, "flaky-sft", failed=1)
    wait_for(lambda: api.status(ns, "flaky")["stages"]["sft"].get("retries") == 1, what="the retry")
    assert api.status(ns, "flaky")["phase"] == "Running"
    wait_events(api, ns, "flaky", "StageRetrying")
    api.complete_job(ns, "flaky-sft")
    api.wait_job(ns, "flaky-reward")
    assert api.status(ns, "flaky")["stages"]["sft"]["retries"] == 1


def test_exhausted_retries_fail_the_job_with_the_jobs_reason_and_nothing_is_recreated(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("doomed"))
    run_stage(api, ns, api.wait_job(ns, "doomed-sft")["metadata"]["name"])
    api.wait_job(ns, "doomed-reward")
    api.fail_job(ns, "doomed-reward", "BackoffLimitExceeded", "Job has reached the specified backoff limit", 4)
    status = api.wait_phase(ns, "doomed", "Failed")
    assert status["stage"] == "reward" and status["completionTime"]
    assert status["stages"]["reward"] | {"startTime": None} == {
        "phase": "Failed", "job": "doomed-reward", "startTime": None, "completionTime": status["completionTime"],
        "retries": 4, "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "BackoffLimitExceeded")
    assert "reward" in failed["message"]
    wait_events(api, ns, "doomed", "StageFailed", "Failed")

    api.batch.delete_namespaced_job("doomed-reward", ns)  # a finished job's children are never re-created
    wait_idle(cluster)
    assert names(cluster, "batch/v1/jobs") == ["doomed-sft"]


def test_a_stage_that_refuses_its_data_fails_at_once_with_the_trainers_message(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("baddata"))
    api.wait_job(ns, "baddata-sft")
    api.start_job(ns, "baddata-sft")
    pod = api.pod(ns, "baddata-sft")
    said = "stage sft: the dataset has no column 'review' (its columns: ['text', 'label'])"
    api.core.patch_namespaced_pod_status(pod["metadata"]["name"], ns, {"status": {"containerStatuses": [{
        "name": "trainer", "image": "trainer", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": said,
                                 "finishedAt": "2026-11-24T12:00:00Z"}}}]}})
    api.fail_job(ns, "baddata-sft", "PodFailurePolicy",
                 "Container trainer for pod x failed with exit code 4 matching FailJob rule at index 1", 1)
    status = api.wait_phase(ns, "baddata", "Failed")
    assert status["stages"]["sft"]["reason"] == "InvalidSpec"  # exit code 4: its config or data must change
    assert status["stages"]["sft"]["message"].endswith(f"the trainer said: {said}")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and said in failed["message"]


def test_suspend_suspends_the_running_stage_and_resume_continues_it(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("paused"))
    api.wait_job(ns, "paused-sft")
    api.start_job(ns, "paused-sft")
    api.patch_rlhfjob(ns, "paused", {"spec": {"suspend": True}})
    wait_for(lambda: api.job(ns, "paused-sft")["spec"].get("suspend"), what="the Job to be suspended")
    status = api.wait_phase(ns, "paused", "Suspended")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended")
    assert status["observedGeneration"] == 2

    api.patch_rlhfjob(ns, "paused", {"spec": {"suspend": False}})
    wait_for(lambda: not api.job(ns, "paused-sft")["spec"].get("suspend"), what="the Job to be resumed")
    status = api.wait_phase(ns, "paused", "Running")
    assert next(c for c in status["conditions"] if c["type"] == "Suspended")["reason"] == "Resumed"
    assert not (api.job(ns, "paused-sft")["metadata"].get("annotations") or {})
    wait_events(api, ns, "paused", "Suspended", "Resumed")
    run_stage(api, ns, "paused-sft")
    api.wait_job(ns, "paused-reward")


def test_a_job_created_suspended_starts_its_stage_suspended(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("held", suspend=True))
    assert api.wait_job(ns, "held-sft")["spec"]["suspend"] is True
    api.wait_phase(ns, "held", "Suspended")


def test_a_kueue_queued_stage_waits_for_admission_and_the_operator_never_unsuspends_it(cluster, api, ns, operator):
    queued = rlhfjob("queued", template={"labels": {"kueue.x-k8s.io/queue-name": "gpu-queue"}})
    api.create_rlhfjob(ns, queued)
    job = api.wait_job(ns, "queued-sft")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    status = wait_for(lambda: (s := api.status(ns, "queued")).get("phase") == "Pending" and s)
    assert status["stages"]["sft"]["reason"] == "Queued"

    api.batch.patch_namespaced_job("queued-sft", ns, {"spec": {"suspend": False}})  # Kueue admits it
    api.wait_phase(ns, "queued", "Running")
    api.patch_rlhfjob(ns, "queued", {"spec": {"suspend": True}})
    api.wait_phase(ns, "queued", "Suspended")
    assert api.job(ns, "queued-sft")["spec"]["suspend"] is True
    api.patch_rlhfjob(ns, "queued", {"spec": {"suspend": False}})
    wait_for(lambda: (api.status(ns, "queued")["stages"]["sft"].get("reason") == "Queued"), what="requeued")
    assert api.job(ns, "queued-sft")["spec"]["suspend"] is True  # Kueue unsuspends it when it admits it again


def test_deleting_the_rlhfjob_leaves_its_kept_claim_and_nothing_is_recreated(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("gone", storage={"size": "1Gi", "keepOnDelete": True}))
    api.wait_job(ns, "gone-sft")
    api.wait_phase(ns, "gone", "Running")
    owned = [obj for kind in ("batch/v1/jobs", "v1/configmaps") for obj in cluster.stored(kind, ns)]
    uid = api.rlhfjob(ns, "gone")["metadata"]["uid"]
    assert all(obj["metadata"]["ownerReferences"][0]["uid"] == uid for obj in owned)

    api.delete_rlhfjob(ns, "gone")  # the garbage collector deletes what it owns
    # a CRD new to the garbage collector is watched from its next discovery (every 30 s)
    wait_for(lambda: not cluster.stored("batch/v1/jobs", ns), timeout=45, what="the garbage collector")
    wait_idle(cluster)
    assert names(cluster, "batch/v1/jobs") == names(cluster, "v1/configmaps") == []
    assert names(cluster, "v1/persistentvolumeclaims") == ["gone-workspace"]
    wait_for(lambda: operator.metric("rlhf_jobs", phase="Running") == 0, what="the gauge")


def test_children_are_deleted_when_the_ttl_after_finishing_expires(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("brief", ttlSecondsAfterFinished=1))
    for stage in ("sft", "reward", "ppo"):
        run_stage(api, ns, api.wait_job(ns, f"brief-{stage}")["metadata"]["name"])
    api.wait_phase(ns, "brief", "Succeeded")
    wait_for(lambda: not cluster.stored("batch/v1/jobs", ns), timeout=10, what="the TTL")
    created = wait_for(lambda: (c := next(c for c in api.status(ns, "brief")["conditions"]
                                          if c["type"] == "Created"))["status"] == "False" and c)
    assert created["reason"] == "TTLExpired"
    wait_idle(cluster)
    assert names(cluster, "batch/v1/jobs") == names(cluster, "v1/configmaps") == []
    assert names(cluster, "v1/persistentvolumeclaims") == []
    assert api.status(ns, "brief")["phase"] == "Succeeded"
    wait_events(api, ns, "brief", "TTLExpired")


# Specs the API server admits and the operator refuses (the rest the CRD refuses at admission: test_crd).
@pytest.mark.parametrize(("spec", "field"), [
    ({"template": {"labels": {"bad key!": "x"}}}, "spec.template.labels"),
    ({"stages": {**DEMO["spec"]["stages"], "sft": {**DEMO["spec"]["stages"]["sft"], "training": {"maxSeqLength": 512}}}},
     "spec.stages.sft.training.maxSeqLength"),
], ids=["label-key", "builtin-length"])
def test_an_invalid_spec_fails_with_the_field_named_and_creates_nothing(cluster, api, ns, operator, spec, field):
    api.create_rlhfjob(ns, rlhfjob("bad", **spec))
    status = api.wait_phase(ns, "bad", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith(field), failed["message"]
    assert wait_events(api, ns, "bad", "InvalidSpec") == ["InvalidSpec"]
    wait_idle(cluster)
    assert not cluster.stored("batch/v1/jobs") and not cluster.stored("v1/configmaps")
    assert not cluster.stored("v1/persistentvolumeclaims")


def test_a_fixed_spec_runs(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("fixme", template={"labels": {"bad key!": "x"}}))
    api.wait_phase(ns, "fixme", "Failed")
    api.patch_rlhfjob(ns, "fixme", {"spec": {"template": {"labels": {"bad key!": None, "team": "a"}}}})
    api.wait_job(ns, "fixme-sft")
    status = api.wait_phase(ns, "fixme", "Running")
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["status"] == "False"


def test_pods_rejected_by_pod_security_admission_are_surfaced(cluster, api, ns, monkeypatch):
    from harness import running_operator

    monkeypatch.setattr(controller, "POD_CHECK_SECONDS", 0.1)
    enforce = "pod-security.kubernetes.io/enforce"
    api.core.patch_namespace(ns, {"metadata": {"labels": {enforce: "restricted"}}})
    with running_operator(cluster, monkeypatch):
        api.create_rlhfjob(ns, rlhfjob("rootly", template={"securityContext": {"allowPrivilegeEscalation": True}}))
        # The Job exists; Pod Security admission refuses the pods the Job controller creates for it.
        status = wait_for(lambda: (s := api.status(ns, "rootly")).get("phase") == "Pending" and s, timeout=30)
        running = next(c for c in status["conditions"] if c["type"] == "Running")
        assert (running["status"], running["reason"]) == ("False", "PodSecurityViolation")
        assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in running["message"]
        wait_events(api, ns, "rootly", "PodSecurityViolation")

        api.core.patch_namespace(ns, {"metadata": {"labels": {enforce: None}}})  # the policy was relaxed
        api.wait_phase(ns, "rootly", "Running", timeout=60)  # the Job controller's next try made the pod


def test_a_guardrail_that_ended_ppo_early_is_the_reason_in_the_condition_and_an_event(cluster, api, ns, operator):
    api.create_rlhfjob(ns, rlhfjob("drifty"))
    for stage in ("sft", "reward"):
        run_stage(api, ns, api.wait_job(ns, f"drifty-{stage}")["metadata"]["name"])
    api.wait_job(ns, "drifty-ppo")
    api.start_job(ns, "drifty-ppo")
    pod = api.pod(ns, "drifty-ppo")
    last = {"stage": "ppo", "kind": "ppo", "step": 17, "totalSteps": 40, "metrics": {"objective/kl": 9.5},
            "result": {"reason": "max_kl", "steps": 17}}
    assert operator.push(last, cluster.issue_pod_token(ns, pod))[0] == 200
    api.complete_job(ns, "drifty-ppo")  # action stop: the stage runner saved the policy and exited 0
    status = api.wait_phase(ns, "drifty", "Succeeded")
    assert status["stages"]["ppo"]["reason"] == "MaxKl"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "MaxKl" and "ended the stage at step 17" in succeeded["message"]
    wait_events(api, ns, "drifty", "GuardrailStopped")


def test_a_guardrail_pushed_between_the_operators_read_and_write_is_not_written_over(cluster, api, ns, operator,
                                                                                       monkeypatch):
    api.create_rlhfjob(ns, rlhfjob("racy"))
    for stage in ("sft", "reward"):
        run_stage(api, ns, api.wait_job(ns, f"racy-{stage}")["metadata"]["name"])
    api.wait_job(ns, "racy-ppo")
    api.start_job(ns, "racy-ppo")
    wait_idle(cluster)
    last = {"stage": "ppo", "kind": "ppo", "step": 17, "totalSteps": 40, "result": {"reason": "max_kl", "steps": 17}}
    advance, pushed = controller.Controller._advance, []

    async def advance_then_push(self, body, spec, plan):
        """The trainer's last push lands after the operator read the RLHFJob and saw the Job complete."""
        runs, recheck = await advance(self, body, spec, plan)
        if runs[-1].state is not None and runs[-1].state.phase == "Succeeded" and not pushed:
            pushed.append(api.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURAL, "racy", {"status": progress_patch(last, now())}))
        return runs, recheck

    monkeypatch.setattr(controller.Controller, "_advance", advance_then_push)
    api.complete_job(ns, "racy-ppo")
    status = api.wait_phase(ns, "racy", "Succeeded")
    assert pushed  # the write decided on the stale read was refused (409) and decided again on a fresh one
    assert status["stages"]["ppo"]["reason"] == "MaxKl"


def test_a_rlhfjob_recreated_under_the_same_name_waits_for_the_old_ones_jobs_to_go(cluster, api, ns, operator):
    # The previous "again" was just deleted; its Job is still going (held here by a finalizer).
    old = api.create_rlhfjob(ns, rlhfjob("again", suspend=True))
    stale = api.wait_job(ns, "again-sft")
    api.batch.patch_namespaced_job("again-sft", ns, {"metadata": {"finalizers": ["test.rlhf.dev/hold"]}})
    api.delete_rlhfjob(ns, "again")
    wait_for(lambda: api.job(ns, "again-sft")["metadata"].get("deletionTimestamp"), what="the collector")

    api.create_rlhfjob(ns, rlhfjob("again"))
    status = wait_for(lambda: (s := api.status(ns, "again")).get("stage") and s)
    assert (status["phase"], status["stages"]["sft"]["phase"]) == ("Pending", "Pending")
    wait_idle(cluster)
    assert api.job(ns, "again-sft")["metadata"]["uid"] == stale["metadata"]["uid"]

    api.batch.patch_namespaced_job("again-sft", ns, {"metadata": {"finalizers": None}})  # the old Job goes
    uid = api.rlhfjob(ns, "again")["metadata"]["uid"]
    assert uid != old["metadata"]["uid"]
    wait_for(lambda: (job := api.job(ns, "again-sft")) and job["metadata"]["ownerReferences"][0]["uid"] == uid,
             what="the new RLHFJob's own Job")
    assert api.wait_phase(ns, "again", "Running")["stages"]["sft"]["phase"] == "Running"
