"""Config + Trainer pairs (SFT, reward, PPO). Imported lazily: ``ppo_config`` must stay torch-free."""

from importlib import import_module

_EXPORTS = {
    "PPOConfig": "rlhf_trainer.trainer.ppo_config",
    "PPOTrainer": "rlhf_trainer.trainer.ppo",
    "SFTTrainer": "rlhf_trainer.trainer.sft",
    "RewardTrainer": "rlhf_trainer.trainer.reward",
    "RewardConfig": "rlhf_trainer.trainer.reward",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_trainer.trainer' has no attribute {name!r}")
