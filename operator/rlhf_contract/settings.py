"""Settings every stage kind shares, or several do: how it trains, on what, on how many processes, when it
saves checkpoints, what ends it early (torch-free)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rlhf_contract.kinds import StageKind
from rlhf_contract.schema import INT32_MAX, Checked, Rule, Schema

STRATEGIES = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")



# --- what a stage reads ----------------------------------------------------------------------------------------

class PairColumns(Schema):
    """The columns of preference pairs: a chosen and a rejected text, with an optional shared prompt."""

    chosen: str = Field("chosen", min_length=1, description="Column of the preferred text.")
    rejected: str = Field("rejected", min_length=1, description="Column of the other text.")
    prompt: str | None = Field(
        None, min_length=1, description="Column of a prompt put before both texts; unset: they are complete.")


class PreferenceColumns(PairColumns):
    """The columns a reward model learns from: a pair, and optionally how much chosen is preferred."""

    margin: str | None = Field(
        None, min_length=1, description="Column of how much chosen is preferred, added to the loss as a margin.")


# --- how a stage trains ----------------------------------------------------------------------------------------

class TRLTrainingSettings(Checked):
    """The transformers TrainingArguments knobs that TRL 1.x's configs (GRPOConfig, DPOConfig) share, with their
    defaults there."""

    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    ] = Field("linear", description="Learning rate schedule after warm-up.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of the steps spent warming up the rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip gradients to this norm.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass.")
    logging_steps: int = Field(10, ge=1, description="Record metrics every this many steps.")


class Training(Schema):
    """Optimisation settings of a supervised stage (mapped onto transformers' TrainingArguments)."""

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate of AdamW.")
    num_train_epochs: float = Field(1, gt=0, description="Passes over the dataset.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides numTrainEpochs).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Training examples per process per step.")
    per_device_eval_batch_size: int = Field(8, ge=1, description="Evaluation examples per process per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    warmup_ratio: float = Field(0, ge=0, lt=1, description="Fraction of the steps spent warming up the rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    ] = Field("linear", description="Learning rate schedule after warm-up.")
    weight_decay: float = Field(0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1, gt=0, description="Clip gradients to this norm.")
    max_seq_length: int = Field(
        512, ge=1, description="Truncate examples to this many tokens; for a builtin model (256 positions) the "
                               "default is 256.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    logging_steps: int = Field(10, ge=1, description="Record metrics every this many steps.")


class HeldOut(Checked):
    """Data held out for evaluation: exactly one of split (another split of the dataset) or fraction (of its rows)."""

    choices = (("split",), ("fraction",))

    split: str | None = Field(None, min_length=1, description="Another split of the same dataset, e.g. test.")
    fraction: float | None = Field(None, gt=0, lt=1, description="Hold out this fraction of the dataset's rows.")
    steps: int | None = Field(None, ge=1, description="Evaluate every this many steps; unset: once, at the end.")


class LoRA(Schema):
    """Train LoRA adapters instead of all weights (peft)."""

    r: int = Field(8, ge=1, description="Rank of the adapters.")
    lora_alpha: float = Field(16, gt=0, description="Scale of the adapters' output (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Modules to adapt, e.g. [q_proj, v_proj]; unset: peft's default for the "
                                        "architecture.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    modules_to_save: list[str] | None = Field(
        None, min_length=1, description="Modules trained in full besides the adapters (a reward model's score "
                                        "head always is).")
    merge: bool = Field(
        True, description="Save the model with the adapters merged in, a plain model later stages load like any "
                          "other; false: save only the adapters.")


class Distributed(Schema):
    """How the stage's processes share the work."""

    num_processes: int = Field(1, ge=1, description="Processes per worker, usually one per GPU.")
    strategy: Literal[STRATEGIES] = Field(
        "ddp", description="Data parallel (ddp), fully sharded (fsdp), or DeepSpeed ZeRO stage 2 or 3 (needs the "
                           "deepspeed extra of the trainer image).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Mixed-precision training.")


class Checkpointing(Schema):
    """When the stage saves checkpoints; a restarted stage resumes from the latest complete one."""

    save_steps: int = Field(100, ge=1, description="Save a checkpoint every this many optimizer (PPO) steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept, the newest.")


class Guardrails(Checked):
    """Conditions that end PPO early: the policy drifting too far from the reference, or the score stalling."""

    only_with = {"min_reward_improvement": ("window",), "window": ("min_reward_improvement",)}

    max_kl: float | None = Field(
        None, gt=0, description="End when the KL to the reference exceeds this for forSteps steps in a row.")
    for_steps: int = Field(1, ge=1, description="Consecutive steps over maxKl that end the stage.")
    min_reward_improvement: float | None = Field(
        None, description="End when the mean score of the last window steps is not at least this much above "
                          "that of the window steps before them.")
    window: int | None = Field(None, ge=1, description="Steps per window of minRewardImprovement.")
    action: Literal["stop", "fail"] = Field(
        "stop", description="stop: save the policy and succeed; fail: save a checkpoint and fail. Either way the "
                            "guardrail is the reason in result.json.")


# --- every stage ----------------------------------------------------------------------------------------------

class StageSettings(Checked):
    """Fields every stage has.

    ``model_field`` names the stage's main model, which defaults to the job's model (``spec.model``);
    ``from_earlier`` maps model fields to the stages whose output they default to, the latest of them that the job
    runs earlier (a policy defaults to DPO's output when the job runs DPO, else to SFT's).
    ``strategies``: the distributed strategies the kind's trainer supports.
    """

    model_field: ClassVar[str] = "model"
    from_earlier: ClassVar[dict[str, tuple[StageKind, ...]]] = {}
    strategies: ClassVar[tuple[str, ...]] = STRATEGIES

    seed: int = Field(0, ge=0, le=INT32_MAX, description="Seed of every random generator; each process adds its rank.")
    distributed: Distributed = Field(default_factory=Distributed, description="Processes and parallelism.")
    report_to: list[str] | None = Field(
        None, description="Trackers to log to, as transformers' report_to (tensorboard, wandb, mlflow, ...); "
                          "unset: TensorBoard under the stage's directory when installed; [] for none.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="When to save checkpoints.")

    @model_validator(mode="after")
    def _check_strategy(self) -> StageSettings:
        if self.distributed.strategy not in self.strategies:
            raise ValueError(self._strategy_message())
        return self

    @classmethod
    def _strategy_message(cls) -> str:
        return (f"distributed.strategy: this stage supports {', '.join(cls.strategies)}; the others are not "
                "supported (or tested) with its trainer yet")

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        rules = super().cel_rules()
        if cls.strategies != STRATEGIES:
            allowed = ", ".join(f"'{s}'" for s in cls.strategies)
            rules.append(Rule(f"!has(self.distributed) || !has(self.distributed.strategy) || "
                              f"self.distributed.strategy in [{allowed}]", cls._strategy_message()))
        return rules


class HeldOutStage(StageSettings):
    """A stage that may hold out part of its dataset for evaluation (``dataset``, ``evaluation: HeldOut``)."""

    @model_validator(mode="after")
    def _check_held_out_split(self) -> HeldOutStage:
        if self.evaluation is not None and self.evaluation.split is not None and self.dataset.path is not None:
            raise ValueError(HELD_OUT_SPLIT_RULE.message)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), HELD_OUT_SPLIT_RULE]


HELD_OUT_SPLIT_RULE = Rule(
    "!has(self.evaluation) || !has(self.evaluation.split) || !has(self.dataset.path)",
    "evaluation.split: a dataset file has no other split; use evaluation.fraction")
