"""What the API server refuses, and what the operator knows it would refuse, ends in a clear status naming the
field, never in a silent loop."""

import copy
import time

from harness import DEMO, rlhfjob, wait_for, wait_idle


def with_stage(stage: str, **fields) -> dict:
    stages = copy.deepcopy(DEMO["spec"]["stages"])
    stages[stage].update(fields)
    return {"stages": stages}


# Specs the CRD cannot check (``rlhf_operator.api.Resources``) that the API server would refuse in the stage's Job.
SPECS = {
    "gpu": (with_stage("ppo", resources={"limits": {"nvidia.com/gpu": "500m"}}), "spec.stages.ppo.resources"),
    "cpu": (with_stage("ppo", resources={"requests": {"cpu": 4}, "limits": {"cpu": 2}}), "spec.stages.ppo.resources"),
}


def test_specs_the_api_server_would_refuse_end_failed_naming_the_field_and_create_nothing(cluster, api, ns, operator):
    for name, (spec, _) in SPECS.items():
        api.create_rlhfjob(ns, rlhfjob(name, **spec))
    for name, (_, field) in SPECS.items():
        status = api.wait_phase(ns, name, "Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec", name
        assert failed["message"].startswith(field), (name, failed["message"])
        wait_for(lambda name=name: ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in api.events(ns, name)])
    wait_idle(cluster)
    assert cluster.stored("batch/v1/jobs") == [] and cluster.stored("v1/persistentvolumeclaims") == []


def test_a_claim_a_limit_range_forbids_fails_the_job_with_the_api_servers_words_until_the_spec_changes(
        cluster, api, ns, operator):
    api.core.create_namespaced_limit_range(ns, {"apiVersion": "v1", "kind": "LimitRange", "metadata": {
        "name": "storage"}, "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}}]}})
    api.create_rlhfjob(ns, rlhfjob("big", storage={"size": "50Gi"}))
    status = api.wait_phase(ns, "big", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Forbidden"
    assert failed["message"] == (
        'spec.storage.size: the API server refused PersistentVolumeClaim big-workspace (403): persistentvolumeclaims '
        '"big-workspace" is forbidden: maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 50Gi')
    wait_for(lambda: ("Warning", "Forbidden", failed["message"]) in api.events(ns, "big"))
    time.sleep(2)  # no retry loop: the refused create was tried once, and said once
    assert [reason for kind, reason, _ in api.events(ns, "big") if kind == "Warning"] == ["Forbidden"]

    api.patch_rlhfjob(ns, "big", {"spec": {"storage": {"size": "5Gi"}}})
    api.wait_job(ns, "big-sft")
    status = api.wait_phase(ns, "big", "Running")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("False", "SpecValid")


def test_a_job_a_resource_quota_forbids_names_its_stage_and_quotes_the_api_server(cluster, api, ns, operator):
    api.core.create_namespaced_resource_quota(ns, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {
        "name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    api.create_rlhfjob(ns, rlhfjob("quota"))
    status = api.wait_phase(ns, "quota", "Failed")
    assert status["stage"] == "sft"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Forbidden"
    assert failed["message"].startswith("spec.stages.sft: the API server refused Job quota-sft (403): ")
    assert "exceeded quota: no-jobs" in failed["message"]
