"""Restart safety: the operator keeps nothing in memory, so stopping it at any point and starting it again
creates nothing twice and loses no status."""

import json

from harness import names, rlhfjob, run_stage, running_operator, wait_idle

from rlhf_operator.plan import make_plan
from rlhf_operator.resources import Owner, stage_config_map


def test_an_operator_restarted_mid_stage_goes_on_without_duplicates_or_lost_status(cluster, api, ns, monkeypatch,
                                                                                   tmp_path):
    with running_operator(cluster, monkeypatch) as first:
        api.create_rlhfjob(ns, rlhfjob("steady"))
        uids = {"steady-sft": api.wait_job(ns, "steady-sft")["metadata"]["uid"]}  # each Job as first created
        api.start_job(ns, "steady-sft")
        pod = api.pod(ns, "steady-sft")
        token = cluster.issue_pod_token(ns, pod)
        last = {"stage": "sft", "kind": "sft", "step": 10, "metrics": {"loss": 2.5},
                "result": {"reason": "Completed", "steps": 10, "metrics": {"train_loss": 2.5}}}
        assert first.push(last, token)[0] == 200
        api.wait_phase(ns, "steady", "Running")
        wait_idle(cluster)

    run_stage(api, ns, "steady-sft")  # the stage finishes while no operator runs
    with running_operator(cluster, monkeypatch):
        uids["steady-reward"] = api.wait_job(ns, "steady-reward")["metadata"]["uid"]
        wait_idle(cluster)
    with running_operator(cluster, monkeypatch):  # and once more, with nothing to do
        wait_idle(cluster)
        run_stage(api, ns, "steady-reward")
        uids["steady-ppo"] = api.wait_job(ns, "steady-ppo")["metadata"]["uid"]
        wait_idle(cluster)  # the Job exists before its status and Events are written: let the operator finish

    status = api.status(ns, "steady")
    assert status["stages"]["sft"]["phase"] == "Succeeded"
    assert status["stages"]["sft"]["results"] == {"trainLoss": 2.5}  # pushed before the restart, kept
    assert (status["phase"], status["stage"]) == ("Running", "ppo")
    assert names(cluster, "batch/v1/jobs") == ["steady-ppo", "steady-reward", "steady-sft"]
    assert names(cluster, "v1/configmaps") == ["steady-ppo", "steady-reward", "steady-sft"]
    assert names(cluster, "v1/persistentvolumeclaims") == ["steady-workspace"]
    # One StageStarted per stage and no Job made again: the restarts did nothing twice.
    assert api.event_reasons(ns, "steady").count("StageStarted") == 3
    assert {job["metadata"]["name"]: job["metadata"]["uid"] for job in cluster.stored("batch/v1/jobs")} == uids


def test_an_operator_stopped_between_creating_a_stages_config_and_its_job_finishes_the_stage(cluster, api, ns,
                                                                                            monkeypatch):
    body = api.create_rlhfjob(ns, rlhfjob("halfway"))
    # What an operator stopped after its first create left: the sft ConfigMap, with content since outdated.
    from rlhf_operator.api import RLHFJobSpec

    spec = RLHFJobSpec.model_validate(body["spec"], by_name=False)
    stage = make_plan(spec, "halfway").stages[0]
    stale = stage_config_map(Owner.of(body), stage)
    stale["data"]["stage.json"] = json.dumps({"outdated": True})
    api.core.create_namespaced_config_map(ns, stale)

    with running_operator(cluster, monkeypatch):
        api.wait_job(ns, "halfway-sft")
        wait_idle(cluster)
    config_map = api.core.read_namespaced_config_map("halfway-sft", ns)
    assert json.loads(config_map.data["stage.json"]) == json.loads(stage.config.to_json())
    assert names(cluster, "batch/v1/jobs") == ["halfway-sft"]
