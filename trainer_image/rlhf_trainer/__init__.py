"""rlhf_trainer: SFT, reward modelling and PPO with the API TRL v0.7 users know; GRPO and DPO with TRL 1.16's.

Names are imported lazily: ``import rlhf_trainer`` is cheap, and torch is loaded by the first name that needs it.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "PPOConfig": "rlhf_trainer.trainer.ppo_config",
    "PPOTrainer": "rlhf_trainer.trainer.ppo",
    "SFTTrainer": "rlhf_trainer.trainer.sft",
    "RewardTrainer": "rlhf_trainer.trainer.reward",
    "RewardConfig": "rlhf_trainer.trainer.reward",
    "GRPOConfig": "rlhf_trainer.trainer.grpo_config",
    "GRPOTrainer": "rlhf_trainer.trainer.grpo",
    "DPOConfig": "rlhf_trainer.trainer.dpo_config",
    "DPOTrainer": "rlhf_trainer.trainer.dpo",
    "AutoModelForCausalLMWithValueHead": "rlhf_trainer.models",
    "AutoModelForSeq2SeqLMWithValueHead": "rlhf_trainer.models",
    "PreTrainedModelWrapper": "rlhf_trainer.models",
    "create_reference_model": "rlhf_trainer.models",
    "respond_to_batch": "rlhf_trainer.core",
    "set_seed": "rlhf_trainer.core",
    "LengthSampler": "rlhf_trainer.core",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_trainer' has no attribute {name!r}")
