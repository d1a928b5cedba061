"""The sft stage: supervised fine-tuning of a causal language model (the trainer's SFTTrainer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import Kind, Number
from rlhf_contract.schema import Checked
from rlhf_contract.settings import HeldOut, HeldOutStage, LoRA, Training
from rlhf_contract.sources import DatasetSource, ModelSource


class TextColumns(Checked):
    """The columns SFT learns from: exactly one of text, messages, or prompt+completion."""

    choices = (("text",), ("messages",), ("prompt", "completion"))

    text: str | None = Field(None, min_length=1, description="A column of plain text (TRL's dataset_text_field).")
    messages: str | None = Field(
        None, min_length=1,
        description="A column of conversations, lists of {role, content}, rendered with the chat template.")
    prompt: str | None = Field(None, min_length=1, description="A column of prompts, followed by completion.")
    completion: str | None = Field(None, min_length=1, description="A column of completions of prompt.")


class SFTTraining(Training):
    """Optimisation settings of supervised fine-tuning."""

    packing: bool = Field(False, description="Pack several short examples into each sequence of maxSeqLength.")
    completion_only_loss: bool = Field(
        True, description="With prompt+completion or messages: learn only the completions (assistant turns).")


class SFTStage(HeldOutStage):
    """Supervised fine-tuning of a causal language model."""

    model: ModelSource | None = Field(None, description="The model to fine-tune; unset: spec.model.")
    dataset: DatasetSource = Field(description="The training data.")
    columns: TextColumns = Field(
        default_factory=lambda: TextColumns(text="text"), description="What to learn; unset: the text column.")
    training: SFTTraining = Field(default_factory=SFTTraining, description="Optimisation settings.")
    peft: LoRA | None = Field(None, description="Train LoRA adapters; unset: all weights.")
    evaluation: HeldOut | None = Field(None, description="Held-out data to report the loss on.")


class SFTStageConfig(SFTStage, StageAssignment):
    """The sft stage's config."""

    kind: Literal["sft"] = "sft"


KIND = Kind(
    "sft", SFTStage, SFTStageConfig,
    live={
        "loss": Number("loss", "loss", "Training loss, averaged over the steps since the last log."),
        "evalLoss": Number("eval_loss", "eval loss", "Loss on the held-out data, at the latest evaluation."),
        "learningRate": Number("learning_rate", "lr", "Learning rate now."),
    },
    results={
        "evalLoss": Number("eval_loss", "eval loss", "Loss on the held-out data at the end."),
        "trainLoss": Number("train_loss", "train loss", "Training loss, averaged over the whole stage."),
    },
)
