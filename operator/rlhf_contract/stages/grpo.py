"""The grpo stage: TRL 1.x's GRPO with rewards that are programs (a verifier, any Python function) or reward
models, each weighted; held-out rewards before and after, guardrails (docs/algorithms/grpo.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.builtins import BUILTIN_VERIFIERS
from rlhf_contract.kinds import Kind, Number
from rlhf_contract.schema import Rule, Schema
from rlhf_contract.settings import Guardrails, LoRA, StageSettings, TRLTrainingSettings
from rlhf_contract.sources import DatasetSource, ModelSource

MAX_REWARDS = 16
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"]
ScaleRewards = Literal["group", "batch", "none"]
RewardAggregation = Literal["sum_then_normalize", "normalize_then_sum"]
ImportanceSamplingLevel = Literal["token", "sequence"]


class RewardFunction(ModelSource):
    """One reward GRPO maximises, with its weight: exactly one of a builtin verifier, a Python function, or a
    reward model (fromStage, name, path or builtin)."""

    choices = (("verifier",), ("callable",), ("name",), ("path",), ("builtin",), ("from_stage",))
    only_with = {"revision": ("name",), "label": ("name", "path", "builtin", "from_stage")}

    verifier: Literal[BUILTIN_VERIFIERS] | None = Field(
        None, description="A checker shipped with the trainer: digit-reversal-exact (1 for the exact answer) and "
                          "digit-reversal-digits (the share of digits right) for the builtin task; math-answer (1 "
                          "where the completion's last number is the answer column's, GSM8K's '#### 42' too).")
    callable: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="A Python function module:function importable in the trainer image, called as TRL's reward "
                    "functions are: fn(prompts, completions, completion_ids, **columns) -> list[float | None], "
                    "the dataset's other columns as keyword arguments; None where it does not apply.")
    from_stage: Literal["reward"] | None = Field(
        None, description="The reward model trained by this job's reward stage.")
    label: str | None = Field(
        None, min_length=1,
        description="For a classifier with several outputs: the label (as in its id2label) whose logit is the "
                    "reward; unset: the single output of a reward model.")
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO normalises (TRL's reward_weights).")


class GRPOGeneration(Schema):
    """How completions are sampled (GRPOConfig's generation knobs, TRL 1.16's defaults)."""

    max_completion_length: int = Field(512, ge=1, description="Most tokens in a completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; it also divides the logits when "
                                                      "completions are scored.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sample from the smallest set of tokens with this much mass.")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0: from all.")
    min_p: float | None = Field(None, ge=0, le=1, description="Minimum token probability, scaled by the most "
                                                              "likely token's; unset: off.")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalise tokens already in the sequence (> 1).")


class GRPOSettings(TRLTrainingSettings):
    """GRPO's knobs, with TRL 1.16's GRPOConfig names and defaults (the stage sets max_steps, seed, output, trackers,
    precision and reward_weights itself; sampling knobs are in generation)."""

    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate of AdamW.")
    per_device_train_batch_size: int = Field(8, ge=1, description="Completions per process per micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    num_generations: int = Field(8, ge=2, description="Completions per prompt (the group).")
    generation_batch_size: int | None = Field(
        None, ge=2, description="Completions per generation, all processes; unset: per-device batch x processes x "
                                "stepsPerGeneration.")
    steps_per_generation: int | None = Field(
        None, ge=1, description="Micro-steps one generation is split into; unset: gradientAccumulationSteps.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes over each generation.")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0: no reference model at all.")
    loss_type: LossType = Field("dapo", description="The loss and its normaliser (docs/algorithms/grpo.md).")
    scale_rewards: ScaleRewards = Field(
        "group", description="Divide advantages by the reward std of the group, of the batch, or not at all.")
    multi_objective_aggregation: RewardAggregation = Field(
        "sum_then_normalize", description="Weight and sum the rewards then normalise, or normalise each first.")
    epsilon: float = Field(0.2, gt=0, description="Clipping epsilon (lower).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clipping epsilon; unset: epsilon. For cispo "
                                                               "the cap on the weight itself (~5.0).")
    delta: float | None = Field(None, gt=0, description="Upper bound on the unclipped ratio; unset: off.")
    importance_sampling_level: ImportanceSamplingLevel = Field(
        "token", description="One importance ratio per token, or per sequence (GSPO).")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at maxCompletionLength out of the loss.")
    top_entropy_quantile: float = Field(1.0, gt=0, le=1, description="Train only on this top share of tokens by "
                                                                     "entropy; 1: all.")
    use_bias_correction_kl: bool = Field(True, description="Multiply the KL term by the importance ratio.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of an entropy bonus; 0: off.")
    off_policy_mask_threshold: float | None = Field(
        None, gt=0, description="Drop negative-advantage sequences drifting more than this; unset: off.")
    sapo_temperature_pos: float = Field(1.0, gt=0, description="SAPO gate temperature, positive advantages.")
    sapo_temperature_neg: float = Field(1.05, gt=0, description="SAPO gate temperature, other advantages.")
    vespo_k_pos: float = Field(2.0, ge=0, description="VESPO power k, non-negative advantages.")
    vespo_lambda_pos: float = Field(3.0, ge=0, description="VESPO decay lambda, non-negative advantages.")
    vespo_k_neg: float = Field(3.0, ge=0, description="VESPO power k, negative advantages.")
    vespo_lambda_neg: float = Field(2.0, ge=0, description="VESPO decay lambda, negative advantages.")
    sync_ref_model: bool = Field(False, description="Move the reference towards the policy now and then (TR-DPO).")
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1, description="Alpha of that move.")
    ref_model_sync_steps: int = Field(512, ge=1, description="Optimizer steps between those moves.")
    disable_dropout: bool = Field(False, description="Switch the policy's dropout off.")
    shuffle_dataset: bool = Field(True, description="Shuffle the prompts.")

    @model_validator(mode="after")
    def _check_generation_batch(self) -> GRPOSettings:
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError(_BOTH.message)
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise ValueError(f"generationBatchSize ({self.generation_batch_size}) must be a multiple of "
                             f"numGenerations ({self.num_generations}): every prompt's group in one generation")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _BOTH, Rule(
            f"!has(self.generationBatchSize) || self.generationBatchSize % {cls.cel_value('num_generations')} == 0",
            "generationBatchSize must be a multiple of numGenerations: every prompt's group in one generation")]


_BOTH = Rule("!has(self.generationBatchSize) || !has(self.stepsPerGeneration)",
             "set generationBatchSize or stepsPerGeneration, not both: one is derived from the other")


class GRPOEvaluation(Schema):
    """The rewards of the policy's completions of held-out prompts, before and after GRPO (sampled with fixed
    seeds, so the two are paired)."""

    held_out_prompts: DatasetSource = Field(description="Prompts GRPO does not train on (same prompt column).")
    samples: int = Field(8, ge=1, description="Completions per held-out prompt.")
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many held-out prompts.")


class GRPOStage(StageSettings):
    """GRPO: the policy answers each prompt several times, the rewards score every answer, and each answer is
    reinforced by how much better it did than its group (TRL 1.x's GRPOTrainer)."""

    model_field = "policy"
    from_earlier = {"policy": ("sft", "dpo", "ppo")}
    strategies = ("ddp",)  # sampling reads the whole model: sharded weights (FSDP, ZeRO) are not gathered for it

    policy: ModelSource | None = Field(
        None, description="The policy's initial model; unset: the latest policy stage's (sft, dpo, ppo) model when the "
                          "job runs one, else spec.model.")
    rewards: list[RewardFunction] = Field(
        min_length=1, max_length=MAX_REWARDS, description="What GRPO maximises: the weighted sum of these.")
    dataset: DatasetSource = Field(description="The prompts, one per row; every other column reaches the rewards.")
    prompt_column: str = Field("prompt", min_length=1, description="Column of the prompts (text or conversation).")
    steps: int = Field(ge=1, description="Optimizer steps (GRPOConfig's max_steps).")
    config: GRPOSettings = Field(default_factory=GRPOSettings, description="GRPO's settings, as TRL's GRPOConfig.")
    generation: GRPOGeneration = Field(default_factory=GRPOGeneration, description="How completions are sampled.")
    peft: LoRA | None = Field(
        None, description="Train LoRA adapters; the reference (beta > 0) is then the model with them disabled.")
    guardrails: Guardrails | None = Field(
        None, description="Conditions that end the stage early (maxKl needs config.beta > 0).")
    evaluation: GRPOEvaluation | None = Field(None, description="Score held-out prompts before and after GRPO.")

    @model_validator(mode="after")
    def _check_guardrails(self) -> GRPOStage:
        if self.guardrails is not None and self.guardrails.max_kl is not None and self.config.beta == 0:
            raise ValueError(_KL_GUARDRAIL_RULE.message)
        return self

    @model_validator(mode="after")
    def _check_weights(self) -> GRPOStage:
        if negative := [i for i, reward in enumerate(self.rewards) if reward.weight < 0]:
            raise ValueError(f"rewards[{negative[0]}].weight: {_NO_NEGATIVE_WEIGHT.message}")
        if all(reward.weight == 0 for reward in self.rewards):
            raise ValueError(_SOME_WEIGHT.message)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _KL_GUARDRAIL_RULE, _NO_NEGATIVE_WEIGHT, _SOME_WEIGHT]


_NO_NEGATIVE_WEIGHT = Rule(
    "self.rewards.all(r, !has(r.weight) || r.weight >= 0.0)",
    "a reward's weight is at least 0 (to penalise something, make its function return lower values)")
_SOME_WEIGHT = Rule("self.rewards.exists(r, !has(r.weight) || r.weight > 0.0)",
                    "rewards: every weight is 0, so nothing is maximised; give at least one reward a weight above 0")


_KL_GUARDRAIL_RULE = Rule(
    "!has(self.guardrails) || !has(self.guardrails.maxKl) || (has(self.config) && has(self.config.beta) && "
    "self.config.beta > 0.0)",
    "guardrails.maxKl: with config.beta 0 there is no reference and no KL to watch; set config.beta")


class GRPOStageConfig(GRPOStage, StageAssignment):
    """The grpo stage's config."""

    kind: Literal["grpo"] = "grpo"


KIND = Kind(
    "grpo", GRPOStage, GRPOStageConfig,
    live={
        "reward": Number("reward", "reward", "Mean reward (weighted sum) of the latest completions."),
        "kl": Number("kl", "kl", "Mean KL of the policy from the reference (beta > 0)."),
        "completionLength": Number("completions/mean_length", "length", "Mean completion length, in tokens."),
        "rewardStd": Number("reward_std", "reward std", "Standard deviation of the rewards."),
        "clipRatio": Number("clip_ratio/region_mean", "clip ratio", "Share of tokens whose ratio was clipped."),
        "fracRewardZeroStd": Number("frac_reward_zero_std", "zero-std groups",
                                    "Share of completions in groups whose rewards were all equal (no signal)."),
        "entropy": Number("entropy", "entropy", "Mean entropy of the policy's next-token distribution."),
        "loss": Number("loss", "loss", "Loss of the latest steps."),
    },
    results={
        "rewardBefore": Number("rewardBefore", "held-out reward before",
                               "Mean reward of completions of held-out prompts, before GRPO."),
        "rewardAfter": Number("rewardAfter", "held-out reward after", "The same, after GRPO."),
        "rewardFirstSteps": Number("rewardFirstSteps", "reward, first steps",
                                   "Mean training reward of the first 5 logged steps."),
        "rewardLastSteps": Number("rewardLastSteps", "reward, last steps", "The same, of the last 5."),
    },
    reward="reward",
    kl="kl",
)
