import dataclasses
import json
from typing import Literal, get_args, get_origin

import pytest
from pydantic import ValidationError

from rlhf_contract.kinds import STAGE_ORDER
from rlhf_contract.settings import TRLTrainingSettings
from rlhf_contract.sources import DatasetSource, ModelSource, RewardSource
from rlhf_contract.stages import STAGE_CONFIGS, parse_stage_config
from rlhf_contract.stages.dpo import DPOSettings
from rlhf_contract.stages.grpo import GRPOGeneration, GRPOSettings
from rlhf_contract.stages.ppo import PPOSettings, PPOStage, PPOStageConfig
from rlhf_contract.stages.sft import SFTStage, TextColumns

ASSIGNED = {"name": "ppo", "job_name": "demo", "workspace": "/ws", "output_dir": "/ws/ppo"}
PPO = {"policy": {"builtin": "tiny-gpt2"}, "reward": {"path": "/ws/reward/model"},
       "dataset": {"builtin": "movie-prompts"}, "steps": 5}


def ppo_config(**changes) -> PPOStageConfig:
    return PPOStageConfig(**{**ASSIGNED, **PPO, **changes})


def test_stage_kinds_and_config_models_agree_in_run_order():
    assert tuple(STAGE_CONFIGS) == STAGE_ORDER == ("sft", "reward", "dpo", "ppo", "grpo")


def test_json_round_trip_keeps_every_field_and_selects_the_kind():
    config = ppo_config(config={"batch_size": 4, "mini_batch_size": 2}, peft={"r": 4})
    text = config.to_json()
    assert json.loads(text)["kind"] == "ppo"
    assert "batchSize" in json.loads(text)["config"]  # camelCase on disk
    again = parse_stage_config(text)
    assert type(again) is PPOStageConfig
    assert again == config


def test_unknown_kind_is_refused():
    with pytest.raises(ValidationError, match="kind"):
        parse_stage_config(json.dumps({**json.loads(ppo_config().to_json()), "kind": "rlaif"}))


def test_ppo_settings_are_the_job_authors_knobs_and_the_library_config_adds_only_bookkeeping():
    from rlhf_trainer.trainer.ppo_config import PPOConfig

    knobs = set(PPOSettings.model_fields)
    assert not knobs & {"steps", "seed", "log_with", "accelerator_kwargs", "project_kwargs", "tracker_kwargs",
                        "tracker_project_name", "exp_name", "model_name", "query_dataset", "reward_model"}
    library = PPOConfig()
    assert all(getattr(library, knob) == getattr(PPOSettings(), knob) for knob in knobs)  # one default each
    assert set(PPOConfig.model_fields) - knobs == {
        "steps", "seed", "log_with", "accelerator_kwargs", "project_kwargs", "tracker_kwargs", "tracker_project_name",
        "exp_name", "model_name", "query_dataset", "reward_model", "remove_unused_columns"}


@pytest.mark.parametrize("knob", ["steps", "seed", "log_with", "accelerator_kwargs"])
def test_library_knobs_are_not_stage_settings(knob):
    with pytest.raises(ValidationError, match=rf"config.{knob}\n  Extra inputs are not permitted"):
        ppo_config(config={knob: 1})


def test_unresolved_from_stage_is_refused_in_a_stage_config():
    with pytest.raises(ValidationError, match=r"reward.fromStage: not resolved"):
        ppo_config(reward={"from_stage": "reward"})


def test_relative_paths_are_refused_in_a_stage_config():
    with pytest.raises(ValidationError, match=r"evaluation.heldOutPrompts.path: 'prompts.jsonl' is not an absolute"):
        ppo_config(evaluation={"held_out_prompts": {"path": "prompts.jsonl"}})


def test_a_stage_config_needs_its_models():
    with pytest.raises(ValidationError, match="reward: not set; the plan resolves it"):
        ppo_config(reward=None)


@pytest.mark.parametrize(
    ("model", "source", "message"),
    [
        (ModelSource, {"name": "gpt2", "path": "/m"}, r"set exactly one of name, path, builtin, fromStage \(got name and path\)"),
        (ModelSource, {}, r"set exactly one of .* \(got none\)"),
        (ModelSource, {"path": "/m", "revision": "main"}, "revision needs name"),
        (ModelSource, {"builtin": "tiny-gpt3"}, "builtin"),
        (RewardSource, {"name": "x", "callable": "m:f"}, "got name and callable"),
        (RewardSource, {"callable": "m:f", "label": "POSITIVE"}, "label needs one of name, path, builtin, fromStage"),
        (RewardSource, {"callable": "not a function"}, "callable"),
        (RewardSource, {"from_stage": "sft"}, "from_stage|fromStage"),
        (DatasetSource, {"path": "rows.txt"}, "cannot tell the format of 'rows.txt'"),
        (DatasetSource, {"path": "rows.jsonl", "split": "test"}, "split needs one of name, builtin"),
        (DatasetSource, {"builtin": "movie-reviews", "split": "validation"}, "builtin datasets have splits train and test"),
        (TextColumns, {"prompt": "q"}, r"set exactly one of text, messages, prompt\+completion \(got prompt\)"),
        (TextColumns, {"text": "t", "prompt": "q", "completion": "a"}, "got text and prompt and completion"),
    ],
)
def test_bad_sources_say_what_to_set(model, source, message):
    with pytest.raises(ValidationError, match=message):
        model.model_validate(source)


def test_dataset_format_comes_from_the_extension_and_split_defaults_to_train():
    assert DatasetSource(path="data/rows.parquet").format == "parquet"
    assert DatasetSource(name="stanfordnlp/imdb").split == "train"
    assert DatasetSource(path="data/rows.parquet").split is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"generation": {"min_new_tokens": 20, "max_new_tokens": 10}}, r"minNewTokens \(20\) exceeds maxNewTokens"),
        ({"query": {"min_tokens": 4}}, "minTokens needs maxTokens"),
        ({"guardrails": {"min_reward_improvement": 0.1}}, "minRewardImprovement needs window"),
        ({"peft": {}, "num_shared_layers": 2}, "numSharedLayers: not with peft"),
    ],
)
def test_bad_ppo_settings_are_refused(changes, message):
    with pytest.raises(ValidationError, match=message):
        PPOStage(**{**PPO, **changes})


def test_held_out_split_of_a_file_is_refused():
    with pytest.raises(ValidationError, match="a dataset file has no other split; use evaluation.fraction"):
        SFTStage(dataset={"path": "/d/rows.jsonl"}, evaluation={"split": "test"})


def test_sft_learns_the_text_column_by_default():
    assert SFTStage(dataset={"builtin": "movie-reviews"}).columns == TextColumns(text="text")


def test_grpo_settings_are_grpoconfig_knobs_with_trls_defaults():
    from rlhf_trainer.trainer.grpo_config import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    for model in (GRPOSettings(), GRPOGeneration()):
        for knob, value in model.model_dump().items():
            expected = defaults["warmup_steps" if knob == "warmup_ratio" else knob]
            assert value == expected, (knob, value, expected)


def test_dpo_settings_are_dpoconfig_knobs_with_trls_defaults():
    from rlhf_trainer.trainer.dpo_config import DPOConfig

    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(DPOConfig)}
    # where the library spells a default differently: a warm-up fraction is transformers 5's warmup_steps below 1,
    # "no step limit" is -1 there, and its gradient_checkpointing=None means on
    assert (defaults["max_steps"], defaults["gradient_checkpointing"]) == (-1, None)
    defaults.update(max_steps=None, gradient_checkpointing=True)
    for knob, value in DPOSettings().model_dump().items():
        expected = defaults["warmup_steps" if knob == "warmup_ratio" else knob]
        assert value == expected, (knob, value, expected)


def literal_fields(stage: str, *models) -> list[tuple[str, str, tuple, bool]]:
    """(stage, field, allowed values, whether a list) of each field of ``models`` typed a Literal or a list of one."""
    found = []
    for model in models:
        for name, info in model.model_fields.items():
            kind, many = info.annotation, get_origin(info.annotation) is list
            if many:
                (kind,) = get_args(kind)
            if get_origin(kind) is Literal:
                found.append((stage, name, get_args(kind), many))
    return found


VOCABULARIES = literal_fields("grpo", GRPOSettings, GRPOGeneration) + literal_fields("dpo", DPOSettings)
NEEDS = {("dpo", "loss_type", "exo_pair"): {"label_smoothing": 1e-3}}
REFUSALS = {"lr_scheduler_type": "is not a valid SchedulerType"}  # transformers' message names the type


def test_vocabularies_are_found():
    found = {(stage, name) for stage, name, *_ in VOCABULARIES}
    assert {("grpo", "loss_type"), ("grpo", "scale_rewards"), ("dpo", "loss_type"), ("dpo", "truncation_mode")} <= found


@pytest.mark.filterwarnings("ignore:truncation_mode='keep_end' is deprecated:FutureWarning")
@pytest.mark.parametrize(("stage", "name", "allowed", "many"), VOCABULARIES,
                         ids=[f"{stage}-{name}" for stage, name, *_ in VOCABULARIES])
def test_trainer_configs_take_the_contracts_values_and_refuse_others(tmp_path, stage, name, allowed, many):
    from rlhf_trainer import DPOConfig, GRPOConfig

    def config(value, **more):
        value = [value] if many else value
        args = {"grpo": GRPOConfig, "dpo": DPOConfig}[stage](
            output_dir=str(tmp_path), report_to="none", bf16=False, **{name: value}, **more)
        return getattr(args, name)

    for value in allowed:
        assert config(value, **NEEDS.get((stage, name, value), {})) == ([value] if many else value)
    with pytest.raises(ValueError, match=REFUSALS.get(name, name)):
        config("unknown")


def test_the_contracts_schedulers_are_some_of_transformers():
    from transformers import SchedulerType

    schedulers = set(get_args(TRLTrainingSettings.model_fields["lr_scheduler_type"].annotation))
    assert schedulers < {scheduler.value for scheduler in SchedulerType}


def test_every_builtin_verifier_and_dataset_has_its_program():
    from rlhf_contract.builtins import BUILTIN_DATASETS, BUILTIN_VERIFIERS
    from rlhf_trainer.data import load_builtin
    from rlhf_trainer.rewards import VERIFIERS

    assert set(VERIFIERS) == set(BUILTIN_VERIFIERS)
    for name in BUILTIN_DATASETS:
        assert load_builtin(name, "train") and load_builtin(name, "test")


def test_math_answer_compares_the_final_numbers():
    from rlhf_trainer.rewards import math_answer

    answers = ["She has 3 + 4 = 7 apples.\n#### 7", "#### 1,200", "#### 2.5", "no number here"]
    completions = ["So the answer is 7.", "It costs $1,200 in all", "about 3", "42"]
    assert math_answer(["q"] * 4, completions, answers) == [1.0, 1.0, 0.0, None]
