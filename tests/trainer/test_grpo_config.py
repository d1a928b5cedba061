"""GRPOConfig: TRL 1.16's defaults, the derived generation batch, and refusals that say what to change."""

import pytest

from rlhf_trainer import GRPOConfig


def config(tmp_path, **kwargs):
    return GRPOConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_trl_defaults_and_base_overrides(tmp_path):
    c = config(tmp_path, use_cpu=True)  # bf16 defaults to True: without use_cpu transformers refuses it here
    assert (c.learning_rate, c.beta, c.num_generations, c.max_completion_length, c.loss_type) == (1e-6, 0.0, 8, 512,
                                                                                               "dapo")
    assert (c.scale_rewards, c.epsilon, c.epsilon_high, c.num_iterations, c.temperature) == ("group", 0.2, None, 1,
                                                                                          1.0)
    assert (c.top_p, c.top_k, c.min_p, c.repetition_penalty, c.importance_sampling_level) == (1.0, 0, None, 1.0,
                                                                                           "token")
    assert c.use_bias_correction_kl and not c.disable_dropout and c.shuffle_dataset and not c.remove_unused_columns
    assert (c.logging_steps, c.gradient_checkpointing, c.bf16) == (10, True, True)
    assert config(tmp_path, fp16=False, bf16=False).bf16 is False


def test_generation_batch_defaults_to_the_accumulated_batch(tmp_path):
    c = config(tmp_path, bf16=False, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4)
    assert (c.steps_per_generation, c.generation_batch_size) == (2, 8)
    c = config(tmp_path, bf16=False, per_device_train_batch_size=4, steps_per_generation=3, num_generations=4)
    assert c.generation_batch_size == 12
    c = config(tmp_path, bf16=False, per_device_train_batch_size=4, generation_batch_size=16, num_generations=4)
    assert c.steps_per_generation == 4


def test_scale_rewards_booleans(tmp_path):
    assert config(tmp_path, bf16=False, scale_rewards=True).scale_rewards == "group"
    assert config(tmp_path, bf16=False, scale_rewards=False).scale_rewards == "none"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_generations": 1}, "at least 2"),
    ({"per_device_train_batch_size": 6, "num_generations": 4}, "not a multiple of num_generations"),
    ({"generation_batch_size": 16, "steps_per_generation": 2}, "not both"),
    ({"per_device_train_batch_size": 8, "generation_batch_size": 12}, "multiple of per_device_train_batch_size"),
    ({"loss_type": "ppo"}, "use one of grpo"),
    ({"scale_rewards": "std"}, "'group'"),
    ({"use_vllm": True}, "vLLM"),
])
def test_refusals_say_what_to_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, bf16=False, **kwargs)
