"""The reward stage: a scalar reward model trained on preference pairs (the trainer's RewardTrainer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import Kind, Number
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


KIND = Kind(
    "reward", RewardStage, RewardStageConfig,
    live={
        "loss": Number("loss", "loss", "Training loss, averaged over the steps since the last log."),
        "evalAccuracy": Number("eval_accuracy", "accuracy", "Share of held-out pairs ranked right, at the latest "
                                                            "evaluation."),
        "evalLoss": Number("eval_loss", "eval loss", "Loss on the held-out pairs, at the latest evaluation."),
    },
    results={
        "evalAccuracy": Number("eval_accuracy", "eval accuracy",
                               "Share of held-out pairs whose chosen text gets the higher reward, at the end."),
        "evalMargin": Number("eval_margin", "eval margin", "Mean reward of chosen minus rejected, held out."),
        "evalLoss": Number("eval_loss", "eval loss", "Loss on the held-out pairs at the end."),
        "trainLoss": Number("train_loss", "train loss", "Training loss, averaged over the whole stage."),
    },
)
