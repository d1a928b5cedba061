import pytest
from pydantic import ValidationError

from rlhf_trainer.trainer.ppo_config import PPOConfig


def test_seed_batch_size_one_works():
    config = PPOConfig(batch_size=1)
    assert config.mini_batch_size == 1
    assert config.backward_batch_size == 1


def test_trl_defaults():
    config = PPOConfig()
    assert (config.learning_rate, config.init_kl_coef, config.target, config.horizon) == (1.41e-5, 0.2, 6, 10000)
    assert (config.batch_size, config.mini_batch_size, config.ppo_epochs, config.vf_coef) == (128, 128, 4, 0.1)
    assert (config.gamma, config.lam, config.cliprange, config.cliprange_value) == (1, 0.95, 0.2, 0.2)


def test_camel_case_input_is_accepted():
    config = PPOConfig.model_validate({"batchSize": 16, "miniBatchSize": 4, "initKlCoef": 0.05})
    assert (config.batch_size, config.mini_batch_size, config.init_kl_coef) == (16, 4, 0.05)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 6, "mini_batch_size": 4}, "mini_batch_size"),
        ({"batch_size": 8, "mini_batch_size": 4, "gradient_accumulation_steps": 3}, "gradient_accumulation_steps"),
        ({"kl_penalty": "reverse"}, "kl_penalty"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"lern_rate": 1e-5}, "lern_rate"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        PPOConfig(**kwargs)
