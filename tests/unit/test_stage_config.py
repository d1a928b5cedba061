import json

import pytest
from pydantic import ValidationError

from rlhf_trainer.stage.config import (
    STAGE_CONFIGS,
    STAGE_ORDER,
    DatasetSource,
    ModelSource,
    PPOStage,
    PPOStageConfig,
    RewardSource,
    SFTStage,
    TextColumns,
    parse_stage_config,
)

ASSIGNED = {"name": "ppo", "job_name": "demo", "workspace": "/ws", "output_dir": "/ws/ppo"}
PPO = {"policy": {"builtin": "tiny-gpt2"}, "reward": {"path": "/ws/reward/model"},
       "dataset": {"builtin": "movie-prompts"}, "steps": 5}


def ppo_config(**changes) -> PPOStageConfig:
    return PPOStageConfig(**{**ASSIGNED, **PPO, **changes})


def test_stage_kinds_and_config_models_agree_in_run_order():
    assert tuple(STAGE_CONFIGS) == STAGE_ORDER == ("sft", "reward", "ppo")


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
        parse_stage_config(json.dumps({**json.loads(ppo_config().to_json()), "kind": "dpo"}))


def test_ppo_config_takes_steps_and_seed_from_the_stage():
    config = ppo_config(steps=7, seed=3)
    assert (config.config.steps, config.config.seed) == (7, 3)


def test_ppo_config_steps_that_contradict_the_stage_are_refused():
    with pytest.raises(ValidationError, match=r"config.steps \(300\) differs from steps \(5\); set only steps"):
        ppo_config(config={"steps": 300})


def test_ppo_log_with_is_refused_in_favour_of_report_to():
    with pytest.raises(ValidationError, match="config.logWith: set the stage's reportTo"):
        ppo_config(config={"log_with": "wandb"})


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
