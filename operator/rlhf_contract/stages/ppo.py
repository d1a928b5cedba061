"""The ppo stage: TRL v0.7's PPO loop (generate, score, ``PPOTrainer.step``) against a reward model or a Python
function, with guardrails and a before/after evaluation on held-out prompts (docs/algorithms/ppo.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import Kind, Number
from rlhf_contract.schema import Checked, Rule, Schema
from rlhf_contract.settings import Guardrails, LoRA, StageSettings
from rlhf_contract.sources import DatasetSource, ModelSource, RewardSource


class Queries(Checked):
    """The prompts PPO answers."""

    only_with = {"min_tokens": ("max_tokens",)}

    column: str = Field("query", min_length=1, description="Column of the prompts.")
    max_tokens: int | None = Field(None, ge=1, description="Truncate each prompt to at most this many tokens.")
    min_tokens: int | None = Field(
        None, ge=1,
        description="With maxTokens: truncate each prompt to a length drawn from [minTokens, maxTokens], as "
                    "TRL's sentiment example makes prompts of 2 to 8 tokens from IMDB reviews.")

    @model_validator(mode="after")
    def _check_range(self) -> Queries:
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"minTokens ({self.min_tokens}) exceeds maxTokens ({self.max_tokens})")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), Rule("!has(self.minTokens) || !has(self.maxTokens) || "
                                           "self.minTokens <= self.maxTokens", "minTokens exceeds maxTokens")]


class Generation(Checked):
    """How PPO samples responses."""

    max_new_tokens: int = Field(16, ge=1, description="Most tokens in a response.")
    min_new_tokens: int | None = Field(
        None, ge=1,
        description="When set, each batch's longest response length is drawn from [minNewTokens, maxNewTokens] "
                    "(TRL's LengthSampler); unset: maxNewTokens. Responses end at EOS either way.")
    temperature: float = Field(1, gt=0, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0: from all.")
    top_p: float = Field(1, gt=0, le=1, description="Sample from the smallest set of tokens with this much mass.")
    do_sample: bool = Field(True, description="Sample (true, as PPO needs) or decode greedily.")

    @model_validator(mode="after")
    def _check_range(self) -> Generation:
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"minNewTokens ({self.min_new_tokens}) exceeds maxNewTokens ({self.max_new_tokens})")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), Rule(f"!has(self.minNewTokens) || self.minNewTokens <= "
                                           f"{cls.cel_value('max_new_tokens')}", "minNewTokens exceeds maxNewTokens")]


class PPOSettings(Schema):
    """PPO's knobs, with TRL v0.7's names and defaults (the library's ``PPOConfig`` adds its own bookkeeping)."""

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
    def _check_batch_sizes(self) -> PPOSettings:
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


class PPOEvaluation(Schema):
    """Scores of the policy's responses to held-out prompts, before and after PPO."""

    held_out_prompts: DatasetSource = Field(description="Prompts PPO does not train on (same query column).")
    judge: Literal["vader", "none"] = Field(
        "none", description="An independent judge besides the reward: vader (VADER sentiment compound score).")


class PPOStage(StageSettings):
    """PPO: the policy answers prompts, the reward scores the answers, PPO updates the policy (TRL v0.7's step)."""

    model_field = "policy"
    from_earlier = {"policy": ("sft", "dpo"), "reward": ("reward",)}
    strategies = ("ddp", "deepspeed-zero2")  # its own loop does not gather sharded weights (FSDP, ZeRO-3) to sample

    policy: ModelSource | None = Field(
        None, description="The policy's initial model (the reference is a frozen copy); unset: the latest policy stage's (sft, dpo) "
                          "model when the job runs one, else spec.model.")
    reward: RewardSource | None = Field(
        None, description="What scores responses; unset: the reward stage's model when the job runs one.")
    dataset: DatasetSource = Field(description="The prompts.")
    query: Queries = Field(default_factory=Queries, description="Where the prompts are and how long they are.")
    steps: int = Field(ge=1, description="PPO steps, each on config.batchSize prompts (the dataset repeats).")
    config: PPOSettings = Field(default_factory=PPOSettings, description="PPO's settings, as TRL's PPOConfig.")
    generation: Generation = Field(default_factory=Generation, description="How responses are sampled.")
    peft: LoRA | None = Field(
        None, description="Train LoRA adapters; the reference is then the model with the adapters disabled.")
    num_shared_layers: int | None = Field(
        None, ge=0, description="Share the policy's first layers with the reference, frozen, to save memory "
                                "(create_reference_model); not with peft.")
    guardrails: Guardrails | None = Field(None, description="Conditions that end the stage early.")
    evaluation: PPOEvaluation | None = Field(None, description="Score held-out prompts before and after PPO.")

    @model_validator(mode="after")
    def _check_shared_layers(self) -> PPOStage:
        if self.num_shared_layers is not None and self.peft is not None:
            raise ValueError("numSharedLayers: not with peft (the reference is the model with adapters disabled)")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(),
                Rule("!has(self.numSharedLayers) || !has(self.peft)", "numSharedLayers: not with peft")]


class PPOStageConfig(PPOStage, StageAssignment):
    """The ppo stage's config."""

    kind: Literal["ppo"] = "ppo"


KIND = Kind(
    "ppo", PPOStage, PPOStageConfig,
    live={
        "meanReward": Number("env/reward_mean", "score", "Mean score of the last step's responses."),
        "kl": Number("objective/kl", "kl", "KL divergence of the policy from the reference."),
        "klCoef": Number("objective/kl_coef", "kl coef", "Current KL penalty coefficient."),
        "policyLoss": Number("ppo/loss/policy", "policy loss", "Policy loss of the last step."),
        "valueLoss": Number("ppo/loss/value", "value loss", "Value loss of the last step."),
        "entropy": Number("objective/entropy", "entropy", "Entropy of the policy's token distribution."),
    },
    results={
        "rewardBefore": Number("rewardBefore", "held-out reward before",
                               "Mean reward of the policy's responses to held-out prompts, before PPO."),
        "rewardAfter": Number("rewardAfter", "held-out reward after", "The same, after PPO."),
        "vaderBefore": Number("vaderBefore", "VADER before", "The judge's mean score of them, before PPO."),
        "vaderAfter": Number("vaderAfter", "VADER after", "The judge's mean score of them, after PPO."),
        "scoreFirstSteps": Number("meanScoreFirstSteps", "score, first steps",
                                  "Mean score of the training responses of the first 5 steps."),
        "scoreLastSteps": Number("meanScoreLastSteps", "score, last steps", "The same, of the last 5 steps."),
        "kl": Number("kl", "kl", "KL of the policy from the reference at the last step."),
    },
    reward="meanReward",
    kl="kl",
)
