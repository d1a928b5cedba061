"""The reward stage: a scalar reward model trained on preference pairs (the trainer's RewardTrainer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import Kind
from rlhf_contract.settings import HeldOut, HeldOutStage, LoRA, PreferenceColumns, Training
from rlhf_contract.sources import DatasetSource, ModelSource


class RewardStage(HeldOutStage):
    """Reward modelling: a scalar score trained on preference pairs (chosen over rejected)."""

    from_earlier = {"model": ("sft",)}

    model: ModelSource | None = Field(
        None, description="Initial weights (a score head is added); unset: the sft stage's model when the job "
                          "runs one, else spec.model.")
    dataset: DatasetSource = Field(description="The preference pairs.")
    columns: PreferenceColumns = Field(default_factory=PreferenceColumns, description="Where the pairs are.")
    training: Training = Field(default_factory=Training, description="Optimisation settings.")
    peft: LoRA | None = Field(None, description="Train LoRA adapters; unset: all weights.")
    evaluation: HeldOut | None = Field(None, description="Held-out pairs to report the accuracy on.")


class RewardStageConfig(RewardStage, StageAssignment):
    """The reward stage's config."""

    kind: Literal["reward"] = "reward"


KIND = Kind("reward", RewardStage, RewardStageConfig)
