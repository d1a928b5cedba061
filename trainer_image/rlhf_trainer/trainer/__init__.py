"""Config + Trainer pairs: ``sft``, ``reward``, ``ppo`` (+ ``ppo_config``, torch-free), ``dpo`` (+ ``dpo_config``).
Import them from ``rlhf_trainer`` (``from rlhf_trainer import PPOTrainer``) or from their modules."""
