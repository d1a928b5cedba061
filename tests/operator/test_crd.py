"""The generated CRD: structural, installed by a real API server, which accepts every example and refuses what the
operator's own checks (pydantic and the plan) refuse, with the same words.

The API server is the judge of the schema, strict decoding, CEL rules and their cost budget, the status
subresource and pruning (``control_plane``: a real kube-apiserver)."""

import copy
import json
import secrets
from pathlib import Path

import kubernetes
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from rlhf_operator.api import GROUP, PLURAL, VERSION, RLHFJob, RLHFJobStatus
from rlhf_operator.crd import PRINTER_COLUMNS, crd, crd_yaml
from rlhf_operator.plan import PlanError, make_plan

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-tiny.yaml").read_text())
SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def server(control_plane):
    """``server(document)``: what the API server says to creating it (dry run, strict decoding), None if it
    accepts it."""
    custom = kubernetes.client.CustomObjectsApi(control_plane.client())

    def refusal(document):
        body = {**copy.deepcopy(document), "metadata": {"name": f"check-{secrets.token_hex(4)}"}}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body, dry_run="All",
                                                   field_validation="Strict")
        except kubernetes.client.ApiException as e:
            return json.loads(e.body)["message"]
        return None

    return refusal


def operator_error(document):
    """What the operator says about a document (pydantic, then the plan), or None."""
    try:
        job = RLHFJob.model_validate(document, by_name=False)
        make_plan(job.spec, job.metadata.name, "/workspace")
    except (ValidationError, PlanError) as e:
        return str(e)
    return None


GRPO_DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "digit-reversal-tiny.yaml").read_text())
DPO_DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-dpo-tiny.yaml").read_text())


def demo(example=DEMO, **changes):
    document = copy.deepcopy(example)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = document
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return document


# --- the files and the CRD itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["manifests/crd/rlhf.dev_rlhfjobs.yaml", "charts/rlhf-operator/crds/rlhf.dev_rlhfjobs.yaml"])
def test_crd_files_equal_the_generated_crd(path):
    assert (ROOT / path).read_text() == crd_yaml(), f"{path} is stale: run `make crd`"


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_crd_is_a_valid_kubernetes_object(version):
    kubernetes_validate.validate(yaml.safe_load(crd_yaml()), version, strict=True)


def walk(schema, path=""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{path}[{key}]")


def test_schema_is_structural():
    for path, node in walk(SCHEMA):
        int_or_string = node.get("x-kubernetes-int-or-string")
        assert "type" in node or int_or_string, f"{path} has no type"
        assert not {"$ref", "$defs", "oneOf", "allOf", "not", "const", "title", "nullable"} & set(node), path
        assert "anyOf" not in node or int_or_string, f"{path}: a union of types"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) not in (True, False), path
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(flag, True), bool), f"{path}.{flag} must be OpenAPI 3.0's boolean"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object", path


def test_schema_declares_no_defaults_and_describes_them_instead():
    assert all("default" not in node for _, node in walk(SCHEMA))
    steps = SCHEMA["properties"]["spec"]["properties"]["stages"]["properties"]["ppo"]["properties"]["config"]
    assert steps["properties"]["batchSize"]["description"].endswith("Default: 128.")


def test_every_field_is_described():
    undescribed = [path for path, node in walk(SCHEMA) if "description" not in node and path.count(".") > 1
                   and "[" not in path.rsplit(".", 1)[-1]]
    assert undescribed == []


def test_resource_names_subresource_and_printer_columns():
    spec = crd()["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == ("rlhf.dev", "RLHFJob", "rlhfjobs")
    assert spec["names"]["shortNames"] == ["rlhf", "rlhfjob"]
    version = spec["versions"][0]
    assert (version["name"], version["subresources"]) == ("v1alpha1", {"status": {}})
    columns = version["additionalPrinterColumns"]
    assert [c["name"].upper() for c in columns if not c.get("priority")] == ["STAGE", "PHASE", "STEP", "REWARD", "KL",
                                                                              "AGE"]
    assert [c["name"].upper() for c in columns if c.get("priority") == 1] == ["PROGRESS", "ETA"]  # -o wide


@pytest.mark.parametrize("column", PRINTER_COLUMNS[:-1], ids=lambda c: c["name"])
def test_printer_columns_read_declared_status_fields(column):
    node = SCHEMA
    for key in column["jsonPath"].strip(".").split("."):
        node = node["properties"][key]
    assert node["type"] == column["type"]
    assert "conditions" not in column["jsonPath"]


def test_a_full_status_is_kept_by_the_server_and_undeclared_fields_are_pruned(control_plane):
    status = {
        "phase": "Running", "stage": "ppo", "observedGeneration": 2,
        "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T01:00:00Z",
        "stages": {"sft": {"phase": "Succeeded", "job": "demo-sft", "startTime": "2026-01-01T00:00:00Z",
                           "completionTime": "2026-01-01T00:10:00Z", "output": "/workspace/sft", "steps": 40,
                           "totalSteps": 40, "durationSeconds": 580.5, "results": {"trainLoss": 1.5, "evalLoss": 1.4},
                           "retries": 1, "reason": "Completed", "message": "done"},
                   "ppo": {"phase": "Running", "results": {"rewardBefore": 0.6, "rewardAfter": 2.4, "vaderBefore": 0.4,
                                                           "vaderAfter": 0.7, "scoreFirstSteps": 0.1,
                                                           "scoreLastSteps": 2.3, "kl": 3.0}}},
        "progress": {"stage": "ppo", "step": 3, "totalSteps": 40, "percentage": 7, "estimatedRemainingSeconds": 70,
                     "eta": "1m10s", "reward": 0.5, "kl": 0.1, "updatedAt": "2026-01-01T00:30:00Z"},
        "sft": {"step": 40, "totalSteps": 40, "loss": 1.5, "evalLoss": 1.4, "learningRate": 1e-4,
                "updatedAt": "2026-01-01T00:10:00Z"},
        "ppo": {"step": 3, "totalSteps": 40, "meanReward": 0.5, "kl": 0.1, "klCoef": 0.05, "policyLoss": -0.1,
                "valueLoss": 0.2, "entropy": 2.1, "updatedAt": "2026-01-01T00:30:00Z"},
        "conditions": [{"type": "Running", "status": "True", "reason": "StageRunning", "message": "ppo",
                        "lastTransitionTime": "2026-01-01T00:20:00Z", "observedGeneration": 2}],
    }
    RLHFJobStatus.model_validate(status)
    custom = kubernetes.client.CustomObjectsApi(control_plane.client())
    name = f"full-status-{secrets.token_hex(3)}"
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL,
                                           {**DEMO, "metadata": {"name": name}, "status": status})
    try:
        assert "status" not in custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
        undeclared = {**status, "ppo": {**status["ppo"], "undeclared": 1.0}, "extra": "x"}
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, name, {"status": undeclared})
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)["status"]
        assert stored == status
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == ("map", ["type"])


# --- the examples ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_api_server_accepts_every_example(server, example):
    assert server(yaml.safe_load(example.read_text())) is None


def test_strict_decoding_names_a_misspelled_field(server):
    assert 'unknown field "spec.stages.ppo.confg"' in server(demo(spec__stages__ppo__confg={}))


# --- what the schema alone rejects, the operator rejects too --------------------------------------------------

@pytest.mark.parametrize(
    ("document", "where"),
    [
        (demo(spec__stages__sft__training__learningRate=0), "spec.stages.sft.training.learningRate"),
        (demo(spec__stages__ppo__steps=0), "spec.stages.ppo.steps"),
        (demo(spec__stages__sft__training__warmupRatio=1), "spec.stages.sft.training.warmupRatio"),
        (demo(spec__stages__ppo__generation__topP=1.5), "spec.stages.ppo.generation.topP"),
        (demo(spec__stages__sft__distributed__strategy="horovod"), "spec.stages.sft.distributed.strategy"),
        (demo(spec__storage__size="1 Gi"), "spec.storage.size"),
        (demo(spec__model__builtin="tiny-gpt3"), "spec.model.builtin"),
        (demo(spec__stages__ppo__reward__callable="not callable"), "spec.stages.ppo.reward.callable"),
        (demo(spec__stages__ppo__steps=None), "spec.stages.ppo.steps"),
        # what the API server refuses in the objects the operator would create (their fields are bounded)
        (demo(spec__stages__ppo__workers=200000), "spec.stages.ppo.workers"),
        (demo(spec__stages__ppo__backoffLimit=2147483648), "spec.stages.ppo.backoffLimit"),
        (demo(spec__storage__size="-1Gi"), "spec.storage.size"),
        (demo(spec__template={"tolerations": [{"key": "gpu", "operator": "Maybe"}]}),
         "spec.template.tolerations[0].operator"),
        (demo(spec__ttlSecondsAfterFinished=1000000000000000), "spec.ttlSecondsAfterFinished"),
        (demo(spec__stages__sft__seed=2**40), "spec.stages.sft.seed"),
        (demo(spec__template={"labels": {"team": "not a label value"}}), "spec.template.labels.team"),
        (demo(spec__template={"priorityClassName": "High_Priority"}), "spec.template.priorityClassName"),
        (demo(spec__stages__ppo__resources={"limits": {"cpu": "1" * 70}}), "spec.stages.ppo.resources.limits.cpu"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_the_api_server_and_the_operator_reject_the_same_values(server, document, where):
    said = server(document)
    assert said is not None and f"{where}: " in said, said
    assert operator_error(document) is not None


# --- what only CEL can say, the operator says too -------------------------------------------------------------

BAD = [
    (demo(spec__model__name="gpt2"), ".spec.model: set exactly one of name, path, builtin, fromStage"),
    (demo(spec__model={"fromStage": "sft"}), ".spec: model.fromStage: the job's model cannot come from one of"),
    (demo(spec__stages__ppo__reward={"label": "POSITIVE"}), ".spec.stages.ppo.reward: set exactly one of"),
    (demo(spec__stages__ppo__reward={"name": "x", "callable": "m:f"}), ".spec.stages.ppo.reward: set exactly one of"),
    (demo(spec__stages__ppo__reward={"callable": "m:f", "label": "P"}), "label needs one of name, path"),
    (demo(spec__model={"path": "/m", "revision": "v1"}), ".spec.model: revision needs name"),
    (demo(spec__stages__sft__dataset={"path": "reviews.txt"}), "cannot tell the format of path"),
    (demo(spec__stages__sft__dataset={"path": "r.jsonl", "split": "test"}), "split needs one of name, builtin"),
    (demo(spec__stages__sft__dataset={"builtin": "movie-reviews", "split": "dev"}), "builtin datasets have splits"),
    (demo(spec__stages__sft__dataset={"path": "r.csv"}), "evaluation.split: a dataset file has no other split"),
    (demo(spec__stages__sft__columns={"prompt": "q"}), ".spec.stages.sft.columns: set exactly one of text, messages"),
    (demo(spec__stages__sft__evaluation={"split": "test", "fraction": 0.1}), "set exactly one of split, fraction"),
    (demo(spec__stages__reward__model__fromStage="ppo"),
     ".spec.stages: reward.model.fromStage must name a stage that runs before reward"),
    (demo(spec__stages__sft__model={"fromStage": "sft"}), ".spec.stages: sft.model.fromStage: no stage runs before"),
    (demo(spec__stages__reward=None), ".spec.stages: ppo.reward.fromStage must name a stage that runs before ppo"),
    (demo(spec__stages__reward=None, spec__stages__ppo__reward=None),
     ".spec.stages: ppo.reward: not set and no reward stage runs before ppo"),
    (demo(spec__stages={}), ".spec.stages: no stages"),
    (demo(spec__model=None), ".spec: stages.sft.model: no model to start from"),
    (demo(spec__stages__ppo__distributed={"strategy": "fsdp"}), "distributed.strategy: this stage supports ddp"),
    (demo(spec__stages__ppo__distributed={"strategy": "deepspeed-zero3"}), "this stage supports ddp, deepspeed-zero2"),
    (demo(spec__storage__size="0Gi"), ".spec.storage: size must be greater than zero"),
    (demo(spec__template={"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
     "value must be empty when operator is Exists"),
    (demo(spec__template={"tolerations": [{"operator": "Equal", "value": "x"}]}), "operator must be Exists when key is empty"),
    (demo(spec__template={"tolerations": [{"key": "gpu", "tolerationSeconds": 5}]}),
     "effect must be NoExecute when tolerationSeconds is set"),
    (demo(spec__stages__ppo__generation={"minNewTokens": 20}), "minNewTokens exceeds maxNewTokens"),
    (demo(spec__stages__ppo__query={"minTokens": 2}), "minTokens needs maxTokens"),
    (demo(spec__stages__ppo__query={"minTokens": 9, "maxTokens": 8}), "minTokens exceeds maxTokens"),
    (demo(spec__stages__ppo__guardrails={"window": 5}), "window needs minRewardImprovement"),
    (demo(spec__stages__ppo__peft={"r": 4}, spec__stages__ppo__numSharedLayers=2), "numSharedLayers: not with peft"),
    (demo(spec__storage={"existingClaim": "data", "size": "1Gi"}), "not with existingClaim"),
    # grpo
    (demo(GRPO_DEMO, spec__stages__grpo__rewards=[{"verifier": "math-answer", "callable": "m:f"}]),
     ".spec.stages.grpo.rewards[0]: set exactly one of verifier, callable"),
    (demo(GRPO_DEMO, spec__stages__grpo__rewards=[{"callable": "m:f", "label": "P"}]), "label needs one of name"),
    (demo(GRPO_DEMO, spec__stages__grpo__config={"generationBatchSize": 12, "numGenerations": 8}),
     "generationBatchSize must be a multiple of numGenerations"),
    (demo(GRPO_DEMO, spec__stages__grpo__config={"generationBatchSize": 16, "stepsPerGeneration": 2}),
     "set generationBatchSize or stepsPerGeneration, not both"),
    (demo(GRPO_DEMO, spec__stages__grpo__guardrails={"maxKl": 1.0}), "guardrails.maxKl: with config.beta 0"),
    (demo(GRPO_DEMO, spec__stages__grpo__distributed={"strategy": "fsdp"}), "this stage supports ddp"),
    (demo(GRPO_DEMO, spec__stages__sft=None, spec__stages__grpo__policy={"fromStage": "sft"}),
     "grpo.policy.fromStage must name a stage that runs before grpo"),
    (demo(GRPO_DEMO, spec__stages__grpo__policy={"fromStage": "reward"}),
     ".spec.stages: grpo.policy.fromStage must name a stage whose model it can take: sft, dpo, ppo"),
    (demo(GRPO_DEMO, spec__stages__grpo__rewards=[{"verifier": "digit-reversal-exact", "weight": -1}]),
     ".spec.stages.grpo: a reward's weight is at least 0"),
    (demo(GRPO_DEMO, spec__stages__grpo__rewards=[{"verifier": "digit-reversal-exact", "weight": 0}]),
     ".spec.stages.grpo: rewards: every weight is 0, so nothing is maximised"),
    # dpo
    (demo(DPO_DEMO, spec__stages__dpo__config={"lossType": ["sigmoid", "sft"], "lossWeights": [1.0]}),
     "lossWeights needs one weight per lossType"),
    (demo(DPO_DEMO, spec__stages__dpo__dataset={"path": "pairs.jsonl"}),
     "evaluation.heldOut.split: a dataset file has no other split"),
    (demo(DPO_DEMO, spec__stages__dpo__evaluation={"judge": "vader"}), "judge needs heldOutPrompts"),
    (demo(DPO_DEMO, spec__stages__dpo__distributed={"strategy": "fsdp"}),
     "evaluation.judge: the judge samples from the policy, which fsdp and deepspeed-zero3 shard"),
]


@pytest.mark.parametrize(("document", "message"), BAD, ids=[m for _, m in BAD])
def test_the_api_server_and_the_operator_reject_the_same_specs(server, document, message):
    path, _, words = message.partition(": ") if message.startswith(".") else ("", "", message)
    said = server(document)
    assert said is not None and words in said, said
    assert f"{path.removeprefix('.')}: Invalid value: " in said, said
    assert operator_error(document) is not None


# --- what the CRD cannot check (over the CEL cost budget, or known only once planned), the operator refuses

OPERATOR_ONLY = [
    (demo(spec__template={"labels": {"bad key!": "x"}}), "spec.template.labels", "not a valid label or annotation key"),
    (demo(spec__stages__ppo__resources={"limits": {"nvidia.com/gpu": "500m"}}), "spec.stages.ppo.resources",
     "nvidia.com/gpu is an extended resource; use a whole number"),
    (demo(spec__stages__ppo__resources={"requests": {"cpu": 4}, "limits": {"cpu": 2}}), "spec.stages.ppo.resources",
     "requests[cpu] (4) must be less than or equal to limits[cpu] (2)"),
    (demo(spec__stages__ppo__resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1500Mi"}}),
     "spec.stages.ppo.resources", "must be less than or equal to limits[memory]"),
    (demo(spec__stages__ppo__resources={"requests": {"nvidia.com/gpu": 1}}), "spec.stages.ppo.resources",
     "set it in limits, and requests equal to limits"),
    (demo(spec__stages__sft__training__maxSeqLength=512), "spec.stages.sft.training.maxSeqLength",
     "512 is more than the 256 positions of the builtin model tiny-gpt2"),
    (demo(spec__stages__reward__training__maxSeqLength=300), "spec.stages.reward.training.maxSeqLength",
     "300 is more than the 256 positions"),  # the reward model starts from sft's, a builtin
]


@pytest.mark.parametrize(("document", "field", "words"), OPERATOR_ONLY, ids=[w for _, _, w in OPERATOR_ONLY])
def test_what_the_crd_cannot_check_the_operator_refuses_naming_the_field(server, document, field, words):
    assert server(document) is None
    said = operator_error(document)
    assert said is not None and words in said and field in said.replace("\n", "."), said


def test_stages_cannot_change_once_the_job_has_started(control_plane):
    custom = kubernetes.client.CustomObjectsApi(control_plane.client())
    name = f"started-{secrets.token_hex(3)}"
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, {**DEMO, "metadata": {"name": name}})
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name,
                                              {"spec": {"stages": {"ppo": {"steps": 60}}}})  # not started yet
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, name, {"status": {
            "phase": "Running", "startTime": "2026-01-01T00:00:00Z"}})
        with pytest.raises(kubernetes.client.ApiException) as refused:
            custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name,
                                                  {"spec": {"stages": {"ppo": {"steps": 80}}}})
        assert refused.value.status == 422
        assert "spec.stages cannot change once the job has started; create a new RLHFJob" in refused.value.body
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name, {"spec": {"suspend": True}})
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
