"""What the API server refuses ends in a clear status, never in a silent loop; what is transient is retried with
backoff. The emulator refuses what a real kube-apiserver (1.32) refuses (``apiserver_rules``)."""

import copy
import json
import time
import urllib.error
import urllib.request

import pytest
from harness import DEMO, NS, operator_requests, rlhfjob, wait_for, wait_idle

from rlhf_operator.api import RLHFJobSpec
from rlhf_operator.plan import make_plan
from rlhf_operator.resources import Owner, stage_job, workspace_claim
from rlhf_operator.settings import OperatorSettings


def with_stage(stage: str, **fields) -> dict:
    stages = copy.deepcopy(DEMO["spec"]["stages"])
    stages[stage].update(fields)
    return {"stages": stages}


def post(cluster, path: str, body: dict) -> tuple[int, dict]:
    """A create as kubectl sends it (raw JSON: the kubernetes client would check some fields itself)."""
    request = urllib.request.Request(cluster.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def demo_objects():
    spec = RLHFJobSpec.model_validate(DEMO["spec"], by_name=False)
    plan = make_plan(spec, "demo", "/workspace")
    owner, settings = Owner("demo", NS, "uid-1"), OperatorSettings()
    return stage_job(owner, spec, plan.stage("ppo"), settings), workspace_claim(owner, spec, plan, settings)


def job_with(change) -> dict:
    job, _ = demo_objects()
    change(job["spec"])
    return job


def container(spec: dict) -> dict:
    return spec["template"]["spec"]["containers"][0]


# The six refusals seen on a real API server (kube-apiserver 1.32), as the operator's Job and claim would carry them.
SIX = [
    ("jobs", job_with(lambda s: s.update(completionMode="Indexed", completions=200000, parallelism=200000)), 422,
     "spec.parallelism: Invalid value: 200000: must be less than or equal to 100000 when completion mode is Indexed"),
    ("jobs", job_with(lambda s: s.update(backoffLimit=2147483648)), 400,
     "cannot unmarshal number 2147483648 into Go struct field JobSpec.spec.backoffLimit of type int32"),
    ("persistentvolumeclaims", None, 422, 'spec.resources[storage]: Invalid value: "-1Gi": must be greater than zero'),
    ("jobs", job_with(lambda s: container(s).update(resources={"limits": {"nvidia.com/gpu": "500m"}})), 422,
     'spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]: Invalid value: "500m": must be an integer'),
    ("jobs", job_with(lambda s: container(s).update(resources={"requests": {"cpu": "4"}, "limits": {"cpu": "2"}})), 422,
     'spec.template.spec.containers[0].resources.requests: Invalid value: "4": must be less than or equal to cpu '
     "limit of 2"),
    ("jobs", job_with(lambda s: s["template"]["spec"].update(tolerations=[{"key": "gpu", "operator": "Maybe"}])), 422,
     'spec.template.spec.tolerations[0].operator: Unsupported value: "Maybe": supported values: "Equal", "Exists"'),
]


@pytest.mark.parametrize(("plural", "body", "code", "message"), SIX, ids=[m.split(":")[0] for *_, m in SIX])
def test_the_emulator_refuses_the_creates_a_real_api_server_refuses(cluster, plural, body, code, message):
    if body is None:
        _, body = demo_objects()
        body["spec"]["resources"]["requests"]["storage"] = "-1Gi"
    group = "/apis/batch/v1" if plural == "jobs" else "/api/v1"
    answer, status = post(cluster, f"{group}/namespaces/{NS}/{plural}", body)
    assert (answer, status["code"], status["kind"]) == (code, code, "Status")
    assert message in status["message"]
    assert not cluster.cluster.stored(f"{group.removeprefix('/apis').removeprefix('/api').strip('/')}/{plural}")


# The same six as RLHFJob specs (stored without the CRD's checks, as by an older CRD), and the TTL that overflowed.
SPECS = {
    "workers": (with_stage("ppo", workers=200000), "spec.stages.ppo.workers"),
    "backoff": (with_stage("ppo", backoffLimit=2147483648), "spec.stages.ppo.backoffLimit"),
    "storage": ({"storage": {"size": "-1Gi"}}, "spec.storage.size"),
    "gpu": (with_stage("ppo", resources={"limits": {"nvidia.com/gpu": "500m"}}), "spec.stages.ppo.resources"),
    "cpu": (with_stage("ppo", resources={"requests": {"cpu": 4}, "limits": {"cpu": 2}}), "spec.stages.ppo.resources"),
    "toleration": ({"template": {"tolerations": [{"key": "gpu", "operator": "Maybe"}]}},
                   "spec.template.tolerations[0].operator"),
    "ttl": ({"ttlSecondsAfterFinished": 1000000000000000}, "spec.ttlSecondsAfterFinished"),
}


def test_specs_the_api_server_would_refuse_end_failed_naming_the_field_and_create_nothing(cluster, api, operator):
    for name, (spec, _) in SPECS.items():
        api.create_rlhfjob(NS, rlhfjob(name, **spec))
    for name, (_, field) in SPECS.items():
        status = api.wait_phase(NS, name, "Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec", name
        assert failed["message"].startswith(field), (name, failed["message"])
        wait_for(lambda name=name: ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in api.events(NS, name)])
    wait_idle(cluster)
    assert cluster.cluster.stored("batch/v1/jobs") == [] and cluster.cluster.stored("v1/persistentvolumeclaims") == []


def creates(cluster, plural: str) -> int:
    return sum(1 for r in operator_requests(cluster) if r.action is not None and r.action.name == "CREATE"
               and r.resource is not None and r.resource.plural == plural)


def test_a_claim_a_limit_range_forbids_fails_the_job_with_the_api_servers_words_until_the_spec_changes(
        cluster, api, operator):
    api.core.create_namespaced_limit_range(NS, {"apiVersion": "v1", "kind": "LimitRange", "metadata": {
        "name": "storage"}, "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}}]}})
    api.create_rlhfjob(NS, rlhfjob("big", storage={"size": "50Gi"}))
    status = api.wait_phase(NS, "big", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Forbidden"
    assert failed["message"] == (
        'spec.storage.size: the API server refused PersistentVolumeClaim big-workspace (403): persistentvolumeclaims '
        '"big-workspace" is forbidden: maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 50Gi')
    wait_for(lambda: ("Warning", "Forbidden", failed["message"]) in api.events(NS, "big"))
    time.sleep(2)  # no retry loop: the refused create was tried once
    assert creates(cluster, "persistentvolumeclaims") == 1

    api.patch_rlhfjob(NS, "big", {"spec": {"storage": {"size": "5Gi"}}})
    api.wait_job(NS, "big-sft")
    status = api.wait_phase(NS, "big", "Running")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("False", "SpecValid")


def test_a_job_a_resource_quota_forbids_names_its_stage_and_quotes_the_api_server(cluster, api, operator):
    api.core.create_namespaced_resource_quota(NS, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {
        "name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    api.create_rlhfjob(NS, rlhfjob("quota"))
    status = api.wait_phase(NS, "quota", "Failed")
    assert status["stage"] == "sft"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Forbidden"
    assert failed["message"].startswith("spec.stages.sft: the API server refused Job quota-sft (403): ")
    assert "exceeded quota: no-jobs" in failed["message"]


def test_server_errors_are_retried_with_backoff_and_the_job_starts(cluster, api, operator):
    cluster.cluster.fail_next("jobs", 500, times=2)
    cluster.cluster.fail_next("configmaps", 429)
    api.create_rlhfjob(NS, rlhfjob("flaky"))
    api.wait_job(NS, "flaky-sft", timeout=20)
    assert api.wait_phase(NS, "flaky", "Running")["stage"] == "sft"
    assert creates(cluster, "jobs") == 3
    assert operator.metric("rlhf_reconcile_errors_total") >= 3


def test_a_status_write_that_keeps_losing_its_race_backs_off_instead_of_looping(cluster, api, operator):
    cluster.cluster.fail_next("rlhfjobs/status", 409, times=1000)
    api.create_rlhfjob(NS, rlhfjob("racy"))
    time.sleep(3)
    refused = len([r for r in operator_requests(cluster) if r.subresource == "status"])
    assert 2 <= refused <= 8  # backoff 0.5, 1, 2 s (and a watch event or two): a hot loop would make hundreds
    cluster.cluster.failures.clear()
    assert api.wait_phase(NS, "racy", "Running", timeout=20)["stage"] == "sft"
