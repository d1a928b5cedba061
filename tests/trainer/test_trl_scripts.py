"""Scripts written for TRL 1.16 run on rlhf_trainer with only the import changed: its configs have TRL's fields and
defaults, its trainers TRL's parameters, and the scripts of TRL's own GRPO and DPO tests (``trl_scripts.py``, run
offline with each library) train, log every metric TRL logs and change the same parameters, or are refused by
both. What TRL runs and we refuse is listed here, each refusal naming the option."""

import json
from pathlib import Path

import pytest
import trl_reference
from trl_scripts import SCRIPTS

SCRIPT = Path(__file__).with_name("trl_scripts.py")
# Ours only, each documented in the config's docstring or docs/algorithms/.
OUR_FIELDS = {"GRPOConfig": {"reproduce_trl"}, "DPOConfig": {"share_prompts", "chunked_lm_head"}}
OUR_DEFAULTS = {"DPOConfig": {"gradient_checkpointing", "padding_free"}}  # None: on wherever it works
# TRL runs these, we refuse them: the words our error must contain.
REFUSED = {
    "grpo_iterable_dataset": ["train_dataset", "streaming"],
    "dpo_iterable_dataset": ["train_dataset", "streaming"],
}
# Both refuse these (vLLM is not installed for TRL either): the words our error must contain.
BOTH_REFUSE = {
    "grpo_use_vllm": ["use_vllm"],
    "grpo_tools": ["tools"],
    "grpo_reward_processing_classes_must_match": ["reward_processing_classes"],
    "dpo_train_dataset_required": ["train_dataset"],
}


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trl-scripts")
    models = folder / "models.json"
    models.write_text(json.dumps({"policy": tiny_model("tiny-llama"),
                                  "untied": tiny_model("tiny-llama", tie_word_embeddings=False),
                                  "reward": tiny_model("tiny-llama-classifier")}))
    return trl_reference.run_both(SCRIPT, [str(models)], None, folder)


def outcomes(runs, name):
    return [json.loads((runs[library] / f"{name}.json").read_text()) for library in trl_reference.LIBRARIES]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["GRPOConfig", "DPOConfig"])
def test_configs_have_trls_fields_and_defaults(runs, config):
    theirs, ours = (json.loads((runs[library] / "api.json").read_text())[config]
                    for library in trl_reference.LIBRARIES)
    assert not set(theirs) - set(ours), "fields TRL has and we do not"
    assert set(ours) - set(theirs) == OUR_FIELDS[config]
    differ = {field: (theirs[field], ours[field]) for field in theirs
              if theirs[field] != ours[field] and field not in OUR_DEFAULTS.get(config, ())}
    assert not differ, f"defaults (TRL, ours): {differ}"


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["GRPOTrainer", "DPOTrainer"])
def test_trainers_take_trls_parameters_in_trls_order(runs, trainer):
    theirs, ours = (json.loads((runs[library] / "api.json").read_text())[trainer]
                    for library in trl_reference.LIBRARIES)
    assert ours[:len(theirs)] == theirs  # ours may add keyword-only parameters after TRL's


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_as_on_trl(runs, name):
    theirs, ours = outcomes(runs, name)
    if name in REFUSED or name in BOTH_REFUSE:
        assert theirs["ok"] == (name in REFUSED), theirs.get("error")
        assert not ours["ok"], f"{name} runs here; TRL's outcome: {theirs}"
        for word in {**REFUSED, **BOTH_REFUSE}[name]:
            assert word in ours["error"], ours["error"]
        return
    assert theirs["ok"], f"TRL fails {name}:\n{theirs['traceback'][-2000:]}"
    assert ours["ok"], f"{name}:\n{ours['traceback'][-3000:]}"
    assert not set(theirs["logged"]) - set(ours["logged"]), "metrics TRL logs and we do not"
    assert ours["trainable"] == theirs["trainable"]
    assert ours["changed"] == theirs["changed"]
