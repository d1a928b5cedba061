"""The objects the operator creates, built from plans: compared as dicts and validated against Kubernetes' schema."""

import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from rlhf_contract.stages import parse_stage_config
from rlhf_operator.api import RLHFJob, RLHFJobSpec
from rlhf_operator.plan import make_plan
from rlhf_operator.resources import (
    QUEUE_LABEL,
    SUSPENDED_BY_OPERATOR,
    Owner,
    label_value,
    pod_template,
    stage_config_map,
    stage_job,
    stage_objects,
    stage_service,
    workspace_claim,
)
from rlhf_operator.settings import OperatorSettings

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
OWNER = Owner("demo", "team-a", "uid-1")
SETTINGS = OperatorSettings(trainer_image="trainer:1", service_url="http://op.ns.svc:8080")
OWNED = [{"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "name": "demo", "uid": "uid-1", "controller": True,
          "blockOwnerDeletion": True}]
LABELS = {"app.kubernetes.io/managed-by": "rlhf-operator", "rlhf.dev/job-name": "demo", "rlhf.dev/stage": "sft"}
SFT = {"model": {"builtin": "tiny-gpt2"}, "stages": {"sft": {"dataset": {"builtin": "movie-reviews"}}}}


def planned(spec: dict, name: str = "demo"):
    parsed = RLHFJobSpec.model_validate(spec, by_name=False)
    return parsed, make_plan(parsed, name, "/workspace")


def with_sft(**fields) -> dict:
    spec = copy.deepcopy(SFT)
    spec["stages"]["sft"].update(fields)
    return spec


def sft_job(spec: dict, settings: OperatorSettings = SETTINGS, **kwargs) -> dict:
    parsed, plan = planned(spec)
    return stage_job(OWNER, parsed, plan.stages[0], settings, **kwargs)


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(job: dict) -> dict:
    return pod_spec(job)["containers"][0]


def env(job: dict) -> dict:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container(job)["env"]}


def test_a_stage_job_runs_the_trainer_with_its_config_the_workspace_and_a_status_token():
    assert sft_job(SFT) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo-sft", "namespace": "team-a", "labels": LABELS, "ownerReferences": OWNED},
        "spec": {
            "backoffLimit": 3,
            "completions": 1,
            "parallelism": 1,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3, 4]}},
            ]},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 300,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "trainer",
                        "image": "trainer:1",
                        "args": ["/etc/rlhf/stage.json"],
                        "env": [{"name": "RLHF_STATUS_URL", "value": "http://op.ns.svc:8080/v1/status"},
                                {"name": "RLHF_STATUS_TOKEN_FILE", "value": "/var/run/secrets/rlhf/token"}],
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [
                            {"name": "workspace", "mountPath": "/workspace"},
                            {"name": "config", "mountPath": "/etc/rlhf", "readOnly": True},
                            {"name": "status-token", "mountPath": "/var/run/secrets/rlhf", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "workspace", "persistentVolumeClaim": {"claimName": "demo-workspace"}},
                        {"name": "config", "configMap": {"name": "demo-sft"}},
                        {"name": "status-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "rlhf-operator", "expirationSeconds": 3600, "path": "token"}}]}},
                    ],
                },
            },
        },
    }


def test_the_config_map_holds_the_planned_stage_config_the_trainer_reads():
    parsed, plan = planned(SFT)
    config_map = stage_config_map(OWNER, plan.stages[0])
    assert config_map["metadata"] == {"name": "demo-sft", "namespace": "team-a", "labels": LABELS,
                                      "ownerReferences": OWNED}
    assert parse_stage_config(config_map["data"]["stage.json"]) == plan.stages[0].config


def test_a_workspace_claim_is_created_with_the_spec_size_or_the_operator_defaults():
    parsed, plan = planned({**SFT, "storage": {"size": "5Gi", "storageClassName": "fast"}})
    claim = workspace_claim(OWNER, parsed, plan, SETTINGS)
    assert claim == {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "demo-workspace", "namespace": "team-a", "ownerReferences": OWNED,
                     "labels": {"app.kubernetes.io/managed-by": "rlhf-operator", "rlhf.dev/job-name": "demo"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                 "storageClassName": "fast"},
    }
    parsed, plan = planned(SFT)
    defaults = OperatorSettings(default_storage_class="standard", default_storage_size="7Gi")
    assert workspace_claim(OWNER, parsed, plan, defaults)["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "7Gi"}},
        "storageClassName": "standard"}


def test_an_existing_claim_is_mounted_and_none_is_created():
    parsed, plan = planned({**SFT, "storage": {"existingClaim": "shared-data"}})
    assert workspace_claim(OWNER, parsed, plan, SETTINGS) is None
    job = stage_job(OWNER, parsed, plan.stages[0], SETTINGS)
    assert pod_spec(job)["volumes"][0] == {"name": "workspace", "persistentVolumeClaim": {"claimName": "shared-data"}}


def test_a_kept_claim_has_no_owner_so_deleting_the_job_leaves_it():
    parsed, plan = planned({**SFT, "storage": {"keepOnDelete": True}})
    assert "ownerReferences" not in workspace_claim(OWNER, parsed, plan, SETTINGS)["metadata"]


def test_a_multi_worker_stage_is_an_indexed_job_with_a_headless_service_and_torchrun_env():
    spec = with_sft(workers=3, distributed={"numProcesses": 4})
    parsed, plan = planned(spec)
    stage = plan.stages[0]
    job = stage_job(OWNER, parsed, stage, SETTINGS)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 3)
    assert pod_spec(job)["subdomain"] == "demo-sft"
    index = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env(job) == {
        "RLHF_STATUS_URL": "http://op.ns.svc:8080/v1/status", "RLHF_STATUS_TOKEN_FILE": "/var/run/secrets/rlhf/token",
        "MASTER_ADDR": "demo-sft-0.demo-sft", "MASTER_PORT": "29500", "WORLD_SIZE": "3", "NODE_RANK": index,
        "RANK": index, "PET_NNODES": "3", "PET_NODE_RANK": index, "PET_MASTER_ADDR": "demo-sft-0.demo-sft",
        "PET_MASTER_PORT": "29500", "PET_NPROC_PER_NODE": "4"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod_spec(job)["volumes"]
    assert stage_service(OWNER, stage) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "demo-sft", "namespace": "team-a", "labels": LABELS, "ownerReferences": OWNED},
        "spec": {"clusterIP": "None", "selector": LABELS, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]},
    }
    assert workspace_claim(OWNER, parsed, plan, SETTINGS)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert [obj["kind"] for obj in stage_objects(OWNER, parsed, stage, SETTINGS)] == ["ConfigMap", "Service", "Job"]


def test_a_single_worker_stage_has_no_service_and_no_torchrun_env():
    parsed, plan = planned(SFT)
    assert stage_service(OWNER, plan.stages[0]) is None
    assert "completionMode" not in sft_job(SFT)["spec"]
    assert set(env(sft_job(SFT))) == {"RLHF_STATUS_URL", "RLHF_STATUS_TOKEN_FILE"}


def test_stage_settings_become_retries_deadline_and_gpu_resources():
    job = sft_job(with_sft(backoffLimit=5, activeDeadlineSeconds=3600,
                           resources={"requests": {"cpu": 4, "memory": "32Gi"}, "limits": {"nvidia.com/gpu": 8}}))
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert container(job)["resources"] == {"requests": {"cpu": "4", "memory": "32Gi"},
                                           "limits": {"nvidia.com/gpu": "8"}}


def test_stage_template_overrides_the_job_template_field_by_field_over_the_operator_default():
    default = OperatorSettings(default_pod_template=RLHFJobSpec.model_validate(
        {**SFT, "template": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                             "nodeSelector": {"pool": "gpu"}, "labels": {"team": "default"}}},
        by_name=False).template)
    spec = {**SFT, "template": {
        "priorityClassName": "batch", "serviceAccountName": "trainer", "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"zone": "a"}, "labels": {"team": "nlp", "kueue.x-k8s.io/queue-name": "gpu-queue"},
        "annotations": {"note": "job"}, "env": [{"name": "A", "value": "job"}, {"name": "B", "value": "job"}],
        "envFrom": [{"secretRef": {"name": "hf-token"}}], "affinity": {"nodeAffinity": {}}}}
    spec["stages"]["sft"]["template"] = {
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "rlhf", "effect": "NoSchedule"}],
        "env": [{"name": "B", "value": "stage"}], "annotations": {"stage": "sft"}}
    parsed, plan = planned(spec)
    merged = pod_template(parsed, plan.stages[0], default)
    assert merged.model_dump(by_alias=True, exclude_none=True)["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "rlhf", "effect": "NoSchedule"}]
    assert merged.node_selector == {"pool": "gpu", "zone": "a"}
    assert merged.labels == {"team": "nlp", "kueue.x-k8s.io/queue-name": "gpu-queue"}
    assert merged.annotations == {"note": "job", "stage": "sft"}
    assert [(var.name, var.value) for var in merged.env] == [("A", "job"), ("B", "stage")]

    job = stage_job(OWNER, parsed, plan.stages[0], default)
    pod = pod_spec(job)
    assert (pod["priorityClassName"], pod["serviceAccountName"]) == ("batch", "trainer")
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["nodeSelector"] == {"pool": "gpu", "zone": "a"}
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert container(job)["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert env(job)["B"] == "stage"
    assert job["spec"]["template"]["metadata"]["annotations"] == {"note": "job", "stage": "sft"}
    assert job["spec"]["template"]["metadata"]["labels"] == {**LABELS, "team": "nlp", QUEUE_LABEL: "gpu-queue"}


def test_a_kueue_queued_job_carries_the_queue_label_and_starts_suspended_for_kueue_to_admit():
    job = sft_job({**SFT, "template": {"labels": {QUEUE_LABEL: "gpu-queue"}}})
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert "annotations" not in job["metadata"]  # Kueue's suspension, not the operator's


def test_a_job_created_while_the_rlhfjob_is_suspended_is_suspended_by_the_operator():
    job = sft_job(SFT, suspend=True)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["annotations"] == {SUSPENDED_BY_OPERATOR: "true"}
    assert "suspend" not in sft_job(SFT)["spec"]


def restricted_violations(pod: dict) -> list[str]:
    """What the "restricted" Pod Security Standard (v1.32) forbids in a pod spec, as admission checks it."""
    found = []
    pod_security = pod.get("securityContext") or {}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= allowed_volumes:
            found.append(f"volume {volume['name']}")
    for c in pod["containers"]:
        security = c.get("securityContext") or {}
        if security.get("allowPrivilegeEscalation") is not False:
            found.append("allowPrivilegeEscalation != false")
        if (security.get("capabilities") or {}).get("drop") != ["ALL"]:
            found.append("unrestricted capabilities")
        if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
            found.append("runAsNonRoot != true")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            found.append("runAsUser=0")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append("seccompProfile")
        if security.get("privileged"):
            found.append("privileged")
    return found


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_gives_valid_objects_whose_pods_meet_the_restricted_standard(example):
    job = RLHFJob.model_validate(yaml.safe_load(example.read_text()), by_name=False)
    owner = Owner(job.metadata.name, "team-a", "uid-1")
    plan = make_plan(job.spec, job.metadata.name, "/workspace")
    objects = [workspace_claim(owner, job.spec, plan, SETTINGS)]
    objects += [obj for stage in plan.stages for obj in stage_objects(owner, job.spec, stage, SETTINGS)]
    for obj in filter(None, objects):
        kubernetes_validate.validate(obj, "1.32", strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rlhf-operator"
        assert obj["metadata"]["labels"]["rlhf.dev/job-name"] == job.metadata.name
        if obj["kind"] == "Job":
            assert restricted_violations(pod_spec(obj)) == []


def test_security_contexts_in_the_template_replace_the_restricted_defaults():
    job = sft_job({**SFT, "template": {"securityContext": {"privileged": True},
                                       "podSecurityContext": {"runAsUser": 0}}})
    assert container(job)["securityContext"] == {"privileged": True}
    assert pod_spec(job)["securityContext"] == {"runAsUser": 0}
    assert restricted_violations(pod_spec(job))  # the namespace's Pod Security admission decides, not us


def test_children_of_a_long_named_job_have_short_names_and_valid_label_values():
    name = "a-very-long-rlhf-job-name-" + "x" * 70
    parsed, plan = planned(SFT, name)
    owner = Owner(name, "team-a", "uid-1")
    for obj in stage_objects(owner, parsed, plan.stages[0], SETTINGS):
        assert len(obj["metadata"]["name"]) <= 52
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
        kubernetes_validate.validate(obj, "1.32", strict=True)
    assert label_value(name) == label_value(name) != label_value(name + "y")


def test_the_user_can_override_an_operator_variable_by_name():
    job = sft_job({**SFT, "template": {"env": [{"name": "RLHF_STATUS_URL", "value": "http://elsewhere/v1/status"},
                                               {"name": "HF_HOME", "value": "/workspace/.cache"}]}})
    assert env(job)["RLHF_STATUS_URL"] == "http://elsewhere/v1/status"
    assert json.dumps(container(job)["env"]).count("RLHF_STATUS_URL") == 1
    assert env(job)["HF_HOME"] == "/workspace/.cache"
