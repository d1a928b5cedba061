"""The dpo stage: TRL 1.x's direct preference optimisation on chosen/rejected pairs, no reward model, no sampling;
preference accuracy held out, and a judge of the policy's own writing before and after (docs/algorithms/dpo.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import Kind, Number
from rlhf_contract.schema import Checked, Rule
from rlhf_contract.settings import HeldOut, LoRA, PairColumns, StageSettings, TRLTrainingSettings
from rlhf_contract.sources import DatasetSource, ModelSource

DPOLoss = Literal["sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
TruncationMode = Literal["keep_start", "keep_end"]
FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


class DPOSettings(TRLTrainingSettings):
    """DPO's knobs, with TRL 1.16's DPOConfig names and defaults (the stage sets the seed, output, trackers and
    precision itself)."""

    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate of AdamW.")
    beta: float = Field(0.1, gt=0, description="How far from the reference the policy may go (DPO's beta).")
    loss_type: list[DPOLoss] = Field(
        ["sigmoid"], min_length=1, max_length=4,
        description="The loss, or several summed with lossWeights (RPO: [sigmoid, sft]).")
    loss_weights: list[float] | None = Field(None, min_length=1, max_length=4,
                                             description="One weight per loss type; unset: all 1.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (robust, "
                                                                  "exo_pair, aot).")
    max_length: int = Field(1024, ge=2, description="Most tokens of prompt + completion; longer rows are cut.")
    truncation_mode: TruncationMode = Field("keep_start", description="Which end a cut keeps.")
    precompute_ref_log_probs: bool = Field(
        False, description="Run the reference once over the dataset before training, then free it.")
    precompute_ref_batch_size: int | None = Field(None, ge=1, description="Batch of that pass; unset: the train "
                                                                          "batch.")
    disable_dropout: bool = Field(True, description="Switch dropout off in the policy and the reference.")
    use_weighting: bool = Field(False, description="Weight each pair by its likelihood (WPO).")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="Down-weight tokens past the shorter completion "
                                                                 "(LD-DPO); unset: off.")
    f_divergence_type: FDivergence = Field(
        "reverse_kl", description="The divergence the scores are built from.")
    f_alpha_divergence_coef: float = Field(0.5, description="Alpha of alpha_divergence.")
    discopop_tau: float = Field(0.05, gt=0, description="Temperature of the discopop loss.")
    sync_ref_model: bool = Field(False, description="Move the reference towards the policy now and then (TR-DPO).")
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1, description="Alpha of that move.")
    ref_model_sync_steps: int = Field(512, ge=1, description="Optimizer steps between those moves.")
    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides "
                                                          "numTrainEpochs).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Pairs per process per step.")
    per_device_eval_batch_size: int = Field(8, ge=1, description="Pairs per process per evaluation step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")

    @model_validator(mode="after")
    def _check_weights(self) -> DPOSettings:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(_WEIGHTS.message)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _WEIGHTS]


_WEIGHTS = Rule("!has(self.lossWeights) || size(self.lossWeights) == (has(self.lossType) ? size(self.lossType) : 1)",
                "lossWeights needs one weight per lossType")


class DPOEvaluation(Checked):
    """What the stage measures: preference accuracy on held-out pairs, and, with a judge, how the policy's own
    continuations of held-out prompts are judged before and after DPO."""

    only_with = {"judge": ("held_out_prompts",), "held_out_prompts": ("judge",)}

    held_out: HeldOut | None = Field(None, description="Held-out pairs to report the preference accuracy on.")
    held_out_prompts: DatasetSource | None = Field(None, description="Prompts the policy continues, for the judge.")
    prompt_column: str = Field("query", min_length=1, description="Column of those prompts.")
    judge: Literal["vader"] | None = Field(None, description="vader: VADER's sentiment of the continuations.")
    samples: int = Field(8, ge=1, description="Continuations per held-out prompt.")
    max_new_tokens: int = Field(16, ge=1, description="Most tokens of a continuation.")


class DPOStage(StageSettings):
    """DPO: the policy learns to prefer each chosen text over its rejected one, against a frozen reference (TRL
    1.x's DPOTrainer)."""

    model_field = "policy"
    from_earlier = {"policy": ("sft",)}
    strategies = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")

    policy: ModelSource | None = Field(
        None, description="The policy's initial model (the reference is a frozen copy of it); unset: the sft "
                          "stage's model when the job runs one, else spec.model.")
    dataset: DatasetSource = Field(description="The preference pairs.")
    columns: PairColumns = Field(default_factory=PairColumns, description="Where the pairs are.")
    config: DPOSettings = Field(default_factory=DPOSettings, description="DPO's settings, as TRL's DPOConfig.")
    peft: LoRA | None = Field(
        None, description="Train LoRA adapters; the reference is then the model with them disabled.")
    evaluation: DPOEvaluation | None = Field(None, description="What to measure before and after DPO.")

    @model_validator(mode="after")
    def _check_evaluation(self) -> DPOStage:
        held_out = self.evaluation.held_out if self.evaluation is not None else None
        if held_out is not None and held_out.split is not None and self.dataset.path is not None:
            raise ValueError(_HELD_OUT_SPLIT.message)
        judged = self.evaluation is not None and self.evaluation.judge is not None
        if judged and self.distributed.strategy in SHARDED:
            raise ValueError(_JUDGE_UNSHARDED.message)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _HELD_OUT_SPLIT, _JUDGE_UNSHARDED]


_HELD_OUT_SPLIT = Rule(
    "!has(self.evaluation) || !has(self.evaluation.heldOut) || !has(self.evaluation.heldOut.split) || "
    "!has(self.dataset.path)", "evaluation.heldOut.split: a dataset file has no other split; use its fraction")


SHARDED = ("fsdp", "deepspeed-zero3")  # each process holds a part of the weights: it cannot sample on its own
_JUDGE_UNSHARDED = Rule(
    "!has(self.evaluation) || !has(self.evaluation.judge) || !has(self.distributed) || "
    "!has(self.distributed.strategy) || !(self.distributed.strategy in ['fsdp', 'deepspeed-zero3'])",
    "evaluation.judge: the judge samples from the policy, which fsdp and deepspeed-zero3 shard; use ddp or "
    "deepspeed-zero2, or drop the judge")


class DPOStageConfig(DPOStage, StageAssignment):
    """The dpo stage's config."""

    kind: Literal["dpo"] = "dpo"


KIND = Kind(
    "dpo", DPOStage, DPOStageConfig,
    live={
        "loss": Number("loss", "loss", "Loss of the latest steps."),
        "rewardAccuracy": Number("rewards/accuracies", "accuracy",
                                 "Share of pairs whose chosen text the policy prefers more than the reference does."),
        "rewardMargin": Number("rewards/margins", "margin", "Mean implicit reward of chosen minus rejected."),
        "chosenLogps": Number("logps/chosen", "chosen log-p", "Mean log-probability of the chosen completions."),
        "rejectedLogps": Number("logps/rejected", "rejected log-p",
                                "Mean log-probability of the rejected completions."),
    },
    results={
        "vaderBefore": Number("vaderBefore", "VADER before",
                              "The judge's mean score of the policy's continuations of held-out prompts, before."),
        "vaderAfter": Number("vaderAfter", "VADER after", "The same, after DPO."),
        "evalAccuracy": Number("eval_rewards/accuracies", "eval accuracy",
                               "Share of held-out pairs the policy prefers the chosen text of, at the end."),
        "evalMargin": Number("eval_rewards/margins", "eval margin", "Mean implicit reward margin, held out."),
        "trainLoss": Number("train_loss", "train loss", "Training loss, averaged over the whole stage."),
    },
)
