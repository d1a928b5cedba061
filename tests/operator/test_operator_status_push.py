"""POST /v1/status: only a stage's own pods, with a projected token for the operator's audience, write status."""

import time

import pytest
from harness import rlhfjob, running_operator, wait_for

from rlhf_operator import server

RECORD = {"stage": "ppo", "kind": "ppo", "step": 5, "totalSteps": 40, "metrics": {"env/reward_mean": 0.5}}


@pytest.fixture
def ppo_pod(api, ns, operator):
    """A running pod of the ppo stage of RLHFJob "target" (its sft and reward stages are done)."""
    api.create_rlhfjob(ns, rlhfjob("target"))
    for stage in ("sft", "reward"):
        api.wait_job(ns, f"target-{stage}")
        api.complete_job(ns, f"target-{stage}")
    api.wait_job(ns, "target-ppo")
    return api.pod(ns, "target-ppo")


def rejected(operator, reason: str) -> float:
    return operator.metric("rlhf_status_pushes_rejected_total", reason=reason)


def test_a_push_from_the_stages_pod_with_its_token_is_written(cluster, api, ns, operator, ppo_pod):
    token = cluster.issue_pod_token(ns, ppo_pod)
    assert operator.push(RECORD, token) == (200, {"accepted": True})
    assert api.status(ns, "target")["ppo"]["meanReward"] == 0.5


@pytest.mark.parametrize("token", [None, "not-a-token"], ids=["no token", "bad token"])
def test_a_push_without_a_valid_token_is_rejected_and_counted(cluster, api, ns, operator, ppo_pod, token):
    code, body = operator.push(RECORD, token)
    assert code == 401 and "token" in body["error"]
    assert rejected(operator, "unauthenticated") == 1
    assert "ppo" not in api.status(ns, "target")


def test_a_token_for_another_audience_is_rejected(cluster, api, ns, operator, ppo_pod):
    token = cluster.issue_pod_token(ns, ppo_pod, audience="https://kubernetes.default.svc")
    assert operator.push(RECORD, token)[0] == 401
    assert "ppo" not in api.status(ns, "target")


def test_a_push_from_a_pod_that_is_not_the_stages_is_rejected_and_counted(cluster, api, ns, operator, ppo_pod):
    intruder = api.core.api_client.sanitize_for_serialization(api.core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "intruder", "labels": dict(ppo_pod["metadata"]["labels"])},  # same labels, no owner
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    assert operator.push(RECORD, cluster.issue_pod_token(ns, intruder))[0] == 403

    # A real pod of the job, but of another stage, may not write that stage's progress.
    sft_pod = api.pod(ns, "target-sft")
    code, body = operator.push(RECORD, cluster.issue_pod_token(ns, sft_pod))
    assert code == 403 and "runs stage sft" in body["error"]

    # A pod of another RLHFJob's Job, pushing for its own stage, writes only its own RLHFJob.
    api.create_rlhfjob(ns, rlhfjob("other"))
    other_pod = api.pod(ns, api.wait_job(ns, "other-sft")["metadata"]["name"])
    other = {**RECORD, "stage": "sft", "kind": "sft", "metrics": {"loss": 9.0}}
    assert operator.push(other, cluster.issue_pod_token(ns, other_pod))[0] == 200
    wait_for(lambda: api.status(ns, "other").get("sft", {}).get("loss") == 9.0)
    assert "sft" not in api.status(ns, "target") and api.status(ns, "target")["progress"] == {"stage": "ppo"}

    assert rejected(operator, "forbidden") == 2
    assert "ppo" not in api.status(ns, "target")


def test_a_token_of_a_deleted_pod_is_rejected(cluster, api, ns, operator, ppo_pod):
    token = cluster.issue_pod_token(ns, ppo_pod)
    name = ppo_pod["metadata"]["name"]
    api.core.delete_namespaced_pod(name, ns)
    api.core.patch_namespaced_pod(name, ns, {"metadata": {"finalizers": None}})  # the Job controller's, done
    wait_for(lambda: ppo_pod["metadata"]["uid"] not in [p.metadata.uid for p in api.core.list_namespaced_pod(ns).items],
             what="the pod to go")
    assert operator.push(RECORD, token)[0] == 401  # the API server no longer authenticates a gone pod's token


def test_a_malformed_record_is_rejected(cluster, api, ns, operator, ppo_pod):
    token = cluster.issue_pod_token(ns, ppo_pod)
    assert operator.push({"step": 1}, token)[0] == 400
    assert operator.push({"stage": "ppo", "metrics": [1, 2]}, token)[0] == 400
    assert rejected(operator, "invalid") == 2


def test_pushes_beyond_the_rate_are_throttled(cluster, api, ns, monkeypatch):
    monkeypatch.setattr(server, "PUSH_RATE", 0.001)
    monkeypatch.setattr(server, "PUSH_BURST", 3)
    with running_operator(cluster, monkeypatch) as operator:
        api.create_rlhfjob(ns, rlhfjob("chatty"))
        pod = api.pod(ns, api.wait_job(ns, "chatty-sft")["metadata"]["name"])
        token = cluster.issue_pod_token(ns, pod)
        record = {"stage": "sft", "kind": "sft", "step": 1, "metrics": {"loss": 1.0}}
        assert [operator.push(record, token)[0] for _ in range(5)] == [200, 200, 200, 429, 429]
        assert rejected(operator, "throttled") == 2
        wait_for(lambda: api.status(ns, "chatty").get("sft", {}).get("loss") == 1.0)


def test_a_running_stage_whose_pushes_never_arrive_is_flagged_until_one_does(cluster, api, ns, monkeypatch):
    monkeypatch.setenv("RLHF_PROGRESS_TIMEOUT_SECONDS", "2")
    with running_operator(cluster, monkeypatch) as operator:
        api.create_rlhfjob(ns, rlhfjob("quiet"))
        api.wait_job(ns, "quiet-sft")
        api.start_job(ns, "quiet-sft")

        def reported() -> dict:
            return next((c for c in api.status(ns, "quiet").get("conditions") or []
                         if c["type"] == "ProgressReported"), {})

        flagged = wait_for(lambda: reported().get("status") == "False" and reported(), what="the flag")
        assert flagged["reason"] == "NoProgressReported" and "no progress of stage sft" in flagged["message"]
        wait_for(lambda: ("Warning", "NoProgressReported", flagged["message"]) in api.events(ns, "quiet"),
                 what="the Warning Event")  # posted once the status is written

        token = cluster.issue_pod_token(ns, api.pod(ns, "quiet-sft"))
        record = {"stage": "sft", "kind": "sft", "step": 1, "metrics": {"loss": 1.0}}

        def report() -> dict:  # the trainer reports every half second
            assert operator.push(record, token)[0] == 200
            time.sleep(0.5)
            return reported().get("status") == "True" and reported()

        assert wait_for(report, timeout=30)["reason"] == "Reported"
