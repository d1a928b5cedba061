"""PPOConfig: every PPO knob with its TRL v0.7.11 default (torch-free).

The knobs a job author sets are the contract's ``PPOSettings`` (a ppo stage's ``config``); this class adds TRL's
bookkeeping fields (trackers, accelerate, names) and the two the stage sets itself (``steps``, ``seed``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rlhf_contract.stages.ppo import PPOSettings


class PPOConfig(PPOSettings):
    """Configuration of `PPOTrainer`. Construct it as in TRL: ``PPOConfig(batch_size=1, learning_rate=1e-5)``."""

    exp_name: str = Field("ppo", description="Name of this experiment (trackers, logs).")
    seed: int = Field(0, description="Seed for torch, numpy and random; each process adds its rank.")
    log_with: Literal["wandb", "tensorboard"] | None = Field(
        None, description="Tracker for accelerate to log to, or none.")
    tracker_project_name: str = Field("trl", description="Project name for the tracker.")
    tracker_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the tracker.")
    accelerator_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for accelerate's Accelerator.")
    project_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for accelerate's ProjectConfiguration.")
    model_name: str | None = Field(None, description="Name of the policy model (informational, for trackers).")
    query_dataset: str | None = Field(None, description="Name of the query dataset (informational).")
    reward_model: str | None = Field(None, description="Name of the reward model (informational).")
    remove_unused_columns: bool = Field(True, description="Drop dataset columns the model does not take.")
    steps: int = Field(20000, ge=1, description="Number of training steps.")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
