import copy
import re

import pytest

from rlhf_contract.kinds import STAGE_ORDER
from rlhf_contract.stages.ppo import PPOStageConfig
from rlhf_contract.stages.reward import RewardStageConfig
from rlhf_contract.stages.sft import SFTStageConfig
from rlhf_operator.api import RLHFJobSpec
from rlhf_operator.plan import MAX_CHILD_NAME, PlanError, child_name, make_plan

SPEC = {
    "model": {"builtin": "tiny-gpt2"},
    "stages": {
        "sft": {"dataset": {"builtin": "movie-reviews"}},
        "reward": {"dataset": {"builtin": "movie-preferences"}, "columns": {"prompt": "prompt"}},
        "ppo": {"dataset": {"builtin": "movie-prompts"}, "steps": 10, "workers": 2,
                "resources": {"limits": {"nvidia.com/gpu": 1}}},
    },
}


def plan(changes=None, *, drop=(), workspace="/workspace"):
    spec = copy.deepcopy(SPEC)
    for stage in drop:
        del spec["stages"][stage]
    for stage, fields in (changes or {}).items():
        target = spec if stage == "spec" else spec["stages"][stage]
        target.update(fields)
    return make_plan(RLHFJobSpec.model_validate(spec), "demo", workspace)


def test_stages_run_in_the_fixed_order_with_their_config_kind():
    result = plan()
    assert [s.name for s in result.stages] == ["sft", "reward", "ppo"]
    assert [type(s.config) for s in result.stages] == [SFTStageConfig, RewardStageConfig, PPOStageConfig]
    assert [s.config.kind for s in result.stages] == ["sft", "reward", "ppo"]


def test_each_stage_writes_to_its_own_directory_of_the_given_workspace():
    result = plan(workspace="/tmp/ws")
    assert [s.config.output_dir for s in result.stages] == ["/tmp/ws/sft", "/tmp/ws/reward", "/tmp/ws/ppo"]
    assert {(s.config.workspace, s.config.job_name) for s in result.stages} == {("/tmp/ws", "demo")}


def test_unset_models_chain_through_the_earlier_stages_outputs():
    result = plan()
    assert result.stage("sft").config.model.builtin == "tiny-gpt2"
    assert result.stage("reward").config.model.path == "/workspace/sft/model"
    assert result.stage("ppo").config.policy.path == "/workspace/sft/model"
    assert result.stage("ppo").config.reward.path == "/workspace/reward/model"
    assert result.stage("ppo").config.reward.from_stage is None


def test_without_an_sft_stage_later_stages_start_from_the_jobs_model():
    result = plan(drop=["sft"])
    assert result.stage("reward").config.model.builtin == "tiny-gpt2"
    assert result.stage("ppo").config.policy.builtin == "tiny-gpt2"


def test_from_stage_becomes_that_stages_model_directory():
    result = plan({"ppo": {"policy": {"fromStage": "sft", "quantization": "8bit"}}}, workspace="/w")
    policy = result.stage("ppo").config.policy
    assert (policy.path, policy.from_stage, policy.quantization) == ("/w/sft/model", None, "8bit")


def test_relative_paths_are_joined_to_the_workspace_and_absolute_ones_kept():
    result = plan({"sft": {"dataset": {"path": "data/../data/reviews.csv"}, "model": {"path": "/models/base"}}})
    config = result.stage("sft").config
    assert (config.dataset.path, config.dataset.format) == ("/workspace/data/reviews.csv", "csv")
    assert config.model.path == "/models/base"


def test_stage_configs_keep_the_stage_settings_and_kubernetes_settings_stay_apart():
    ppo = plan({"ppo": {"config": {"batchSize": 8, "miniBatchSize": 2}}}).stage("ppo")
    assert (ppo.config.steps, ppo.config.config.batch_size) == (10, 8)
    assert ppo.kubernetes.workers == 2
    assert ppo.kubernetes.resources.limits == {"nvidia.com/gpu": 1}
    assert "workers" not in ppo.config.to_json()


def test_child_objects_have_stable_names_per_job_and_stage():
    assert [s.object_name for s in plan().stages] == ["demo-sft", "demo-reward", "demo-ppo"]


@pytest.mark.parametrize("job", ["a" * 253, "x." * 100 + "y", "9lives", "demo.v2"])
def test_child_names_are_short_dns_labels_and_distinct(job):
    names = {child_name(job, stage) for stage in ("sft", "reward", "ppo")}
    assert len(names) == 3
    for name in names:
        assert len(name) <= MAX_CHILD_NAME
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert child_name(job, "sft") == child_name(job, "sft")


def test_long_job_names_that_share_a_prefix_get_different_children():
    assert child_name("a" * 60 + "x", "ppo") != child_name("a" * 60 + "y", "ppo")


@pytest.mark.parametrize(
    ("changes", "drop", "path", "message"),
    [
        ({"ppo": {"reward": {"fromStage": "reward"}}}, ["reward"], "spec.stages.ppo.reward.fromStage",
         "stage 'reward' does not run before 'ppo' (this job has no reward stage)"),
        ({"reward": {"model": {"fromStage": "ppo"}}}, [], "spec.stages.reward.model.fromStage",
         f"stage 'ppo' does not run before 'reward' (stages run in the order {', '.join(STAGE_ORDER)})"),
        ({"sft": {"model": {"fromStage": "sft"}}}, [], "spec.stages.sft.model.fromStage",
         "stage 'sft' does not run before 'sft'"),
        ({}, ["reward"], "spec.stages.ppo.reward",
         "not set, and no reward stage runs before ppo; set it or add a reward stage"),
        ({"spec": {"model": None}}, [], "spec.stages.sft.model",
         "not set, and spec.model is not set either; set it or set spec.model"),
        ({"spec": {"model": None}}, ["sft"], "spec.stages.reward.model",
         "not set, and no sft stage runs before reward and spec.model is not set either"),
        ({}, ["sft", "reward", "ppo"], "spec.stages", "no stages; add at least one of sft, reward, dpo, ppo, grpo"),
    ],
)
def test_specs_that_cannot_run_fail_before_anything_runs_naming_the_field(changes, drop, path, message):
    with pytest.raises(PlanError) as raised:
        plan(changes, drop=drop)
    assert raised.value.path == path
    assert message in raised.value.message
    assert str(raised.value).startswith(f"{path}: ")


def test_the_workspace_must_be_absolute():
    with pytest.raises(ValueError, match="absolute"):
        plan(workspace="relative/ws")
