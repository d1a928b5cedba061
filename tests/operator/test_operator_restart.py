"""Restart safety: the operator keeps nothing in memory, so stopping it at any point and starting it again
creates nothing twice and loses no status."""

import json
from collections import Counter

from harness import NS, names, rlhfjob, run_stage, running_operator, wait_idle

from rlhf_operator.plan import make_plan
from rlhf_operator.resources import Owner, stage_config_map


def creates(cluster) -> Counter:
    """How many times each object was created (a second create of a name answers 409 and stores nothing)."""
    return Counter((r.url.path, (r.data or {}).get("metadata", {}).get("name")) for r in cluster.cluster.requests()
                   if r.method.name == "POST" and not r.url.path.endswith(("/events", "/tokenreviews")))


def test_an_operator_restarted_mid_stage_goes_on_without_duplicates_or_lost_status(cluster, api, monkeypatch,
                                                                                   tmp_path):
    with running_operator(cluster, monkeypatch) as first:
        api.create_rlhfjob(NS, rlhfjob("steady"))
        api.wait_job(NS, "steady-sft")
        api.start_job(NS, "steady-sft")
        pod = api.create_pod(NS, "steady-sft")
        token = cluster.cluster.issue_pod_token(NS, pod)
        last = {"stage": "sft", "kind": "sft", "step": 10, "metrics": {"loss": 2.5},
                "result": {"reason": "Completed", "steps": 10, "metrics": {"train_loss": 2.5}}}
        assert first.push(last, token)[0] == 200
        api.wait_phase(NS, "steady", "Running")
        wait_idle(cluster)

    run_stage(api, "steady-sft")  # the stage finishes while no operator runs
    with running_operator(cluster, monkeypatch):
        api.wait_job(NS, "steady-reward")
        wait_idle(cluster)
    with running_operator(cluster, monkeypatch):  # and once more, with nothing to do
        wait_idle(cluster)
        run_stage(api, "steady-reward")
        api.wait_job(NS, "steady-ppo")
        wait_idle(cluster)  # the Job exists before its status and Events are written: let the operator finish

    status = api.status(NS, "steady")
    assert status["stages"]["sft"]["phase"] == "Succeeded"
    assert status["stages"]["sft"]["results"] == {"trainLoss": 2.5}  # pushed before the restart, kept
    assert (status["phase"], status["stage"]) == ("Running", "ppo")
    assert names(cluster, "batch/v1/jobs") == ["steady-ppo", "steady-reward", "steady-sft"]
    assert names(cluster, "v1/configmaps") == ["steady-ppo", "steady-reward", "steady-sft"]
    assert names(cluster, "v1/persistentvolumeclaims") == ["steady-workspace"]
    # One StageStarted per stage: the restarts posted no event twice.
    assert api.event_reasons(NS, "steady").count("StageStarted") == 3
    assert all(count == 1 for (path, name), count in creates(cluster).items() if "/jobs" in path)


def test_an_operator_stopped_between_creating_a_stages_config_and_its_job_finishes_the_stage(cluster, api,
                                                                                            monkeypatch):
    body = api.create_rlhfjob(NS, rlhfjob("halfway"))
    # What an operator stopped after its first create left: the sft ConfigMap, with content since outdated.
    from rlhf_operator.api import RLHFJobSpec

    spec = RLHFJobSpec.model_validate(body["spec"], by_name=False)
    stage = make_plan(spec, "halfway").stages[0]
    stale = stage_config_map(Owner.of(body), stage)
    stale["data"]["stage.json"] = json.dumps({"outdated": True})
    api.core.create_namespaced_config_map(NS, stale)

    with running_operator(cluster, monkeypatch):
        api.wait_job(NS, "halfway-sft")
        wait_idle(cluster)
    config_map = api.core.read_namespaced_config_map("halfway-sft", NS)
    assert json.loads(config_map.data["stage.json"]) == json.loads(stage.config.to_json())
    assert names(cluster, "batch/v1/jobs") == ["halfway-sft"]
