"""PPOConfig: every PPO knob with its TRL v0.7.11 default (torch-free; the stage config and the CRD reuse it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf_trainer.schema import Schema


class PPOConfig(Schema):
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
    learning_rate: float = Field(1.41e-5, gt=0, description="Adam learning rate.")
    adap_kl_ctrl: bool = Field(True, description="Use the adaptive KL controller (else a fixed coefficient).")
    init_kl_coef: float = Field(0.2, ge=0, description="Initial KL penalty coefficient.")
    kl_penalty: Literal["kl", "abs", "mse", "full"] = Field(
        "kl", description="KL estimate per token: kl (lp - ref), abs, mse (0.5 (lp - ref)^2), full (exact).")
    target: float = Field(6, gt=0, description="Target KL of the adaptive controller.")
    horizon: float = Field(10000, gt=0, description="Horizon of the adaptive controller.")
    gamma: float = Field(1, ge=0, le=1, description="Discount factor of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="Lambda of GAE.")
    cliprange: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    cliprange_value: float = Field(0.2, gt=0, description="Clip range of the value prediction.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    batch_size: int = Field(128, ge=1, description="Episodes per PPO step (per process).")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Episodes per optimisation mini batch; defaults to min(128, batch_size).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Mini batches accumulated per optimizer step.")
    ppo_epochs: int = Field(4, ge=1, description="Optimisation epochs over each batch.")
    max_grad_norm: float | None = Field(None, gt=0, description="Clip gradients to this norm, or none.")
    optimize_device_cache: bool = Field(False, description="Free accelerator memory between phases of a step.")
    early_stopping: bool = Field(False, description="Stop a step's epochs once policy KL exceeds 1.5 target_kl.")
    target_kl: float = Field(1, gt=0, description="KL target of early stopping.")
    ratio_threshold: float = Field(
        10.0, gt=0, description="Skip mini batches whose mean ratio exceeds this (unstable updates).")
    use_score_scaling: bool = Field(False, description="Divide scores by their running standard deviation.")
    use_score_norm: bool = Field(
        False, description="With use_score_scaling, also subtract the running mean (standardise).")
    score_clip: float | None = Field(None, gt=0, description="Clip scores to +-score_clip after scaling.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards (keeping their mean) before GAE.")

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> PPOConfig:
        if self.mini_batch_size is None:
            self.mini_batch_size = min(128, self.batch_size)
        if self.batch_size % self.backward_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size * "
                f"gradient_accumulation_steps ({self.mini_batch_size} * {self.gradient_accumulation_steps} = "
                f"{self.backward_batch_size}); lower mini_batch_size or gradient_accumulation_steps"
            )
        return self

    @property
    def backward_batch_size(self) -> int:
        """Episodes per optimizer step: mini_batch_size * gradient_accumulation_steps."""
        return self.mini_batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
