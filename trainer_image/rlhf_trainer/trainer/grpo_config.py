"""GRPOConfig: TRL 1.16's GRPO settings (names, defaults, meanings), on transformers' TrainingArguments.

Every knob is a field with its default and help beside it; ``__post_init__`` derives the generation batch and
refuses combinations that cannot run, saying what to change. See docs/algorithms/grpo.md for what each does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, get_args

from transformers import TrainingArguments

from rlhf_contract.stages.grpo import ImportanceSamplingLevel, RewardAggregation, ScaleRewards
from rlhf_trainer.trainer.grpo_loss import LOSS_TYPES

SCALE_REWARDS = get_args(ScaleRewards)
REWARD_AGGREGATIONS = get_args(RewardAggregation)
IMPORTANCE_SAMPLING_LEVELS = get_args(ImportanceSamplingLevel)


def _one_of(values: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [repr(value) for value in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@dataclass
class GRPOConfig(TrainingArguments):
    """Configuration of `GRPOTrainer` (TRL 1.16's ``GRPOConfig``). Base overrides: ``learning_rate`` 1e-6,
    ``logging_steps`` 10, ``gradient_checkpointing`` True, ``bf16`` True unless ``fp16``, ``remove_unused_columns``
    False (extra dataset columns reach the reward functions)."""

    # Overrides of TrainingArguments' defaults
    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=10, metadata={"help": "Log every X update steps (an integer, or a float in [0, 1) for a ratio of "
                                      "the total training steps)."})
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Trade compute for memory: recompute activations in the backward pass."})
    bf16: bool | None = field(
        default=None, metadata={"help": "Use bf16 (mixed) precision instead of 32-bit. If not set, True unless "
                                        "`fp16` is set (on a CPU without native bf16 this is slow: set False)."})
    remove_unused_columns: bool | None = field(
        default=False, metadata={"help": "Whether to keep only the 'prompt' column. Keep False when a reward "
                                         "function reads other columns."})

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` "
                                        "is a string."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models and tokenizers that ship their own Python code (model, "
                                         "processing class and reward models)."})
    disable_dropout: bool = field(
        default=False, metadata={"help": "Switch dropout off in the model, so that log-probs of the same input "
                                         "agree pass to pass (ratio and KL are noisy with dropout on)."})
    cast_lm_head_to_fp32: bool = field(
        default=False, metadata={"help": "Run the policy's and reference's output layer in float32 (ScaleRL); "
                                         "needs an output layer not tied to the input embeddings."})
    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "Weight of a Mixture-of-Experts model's load-balancing loss (not added by "
                                        "this trainer: leave None)."})
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "DeepSpeed ZeRO-3 only: gather the full weights to generate."})

    # Data and generation
    num_generations: int | None = field(
        default=8, metadata={"help": "Completions sampled per prompt (the group size, G). The generation batch "
                                     "must be a multiple of it."})
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per prompt in evaluation; None: `num_generations`."})
    max_completion_length: int | None = field(
        default=512, metadata={"help": "Maximum length of a generated completion, in tokens."})
    shuffle_dataset: bool | None = field(default=True, metadata={"help": "Whether to shuffle the training dataset."})
    pad_to_multiple_of: int | str | None = field(
        default="auto", metadata={"help": "Pad prompt and completion ids to a multiple of this many tokens; "
                                          "'auto': no padding (TRL pads to 128 only on AWS Neuron)."})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Completions per generation (all processes). None: "
                                        "`per_device_train_batch_size * num_processes * steps_per_generation`."})
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Micro-steps one generation is split into. None: "
                                        "`gradient_accumulation_steps`."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; it also divides the logits whenever completions are "
                                       "scored."})
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling: keep the smallest set of tokens whose probability reaches "
                                       "top_p, in (0, 1]; 1.0 keeps all."})
    top_k: int = field(default=0, metadata={"help": "Keep only the top_k most likely tokens; 0 keeps all."})
    min_p: float | None = field(
        default=None, metadata={"help": "Minimum token probability, scaled by the most likely token's (0.0-1.0; "
                                        "typically 0.01-0.2). None: off."})
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "Penalise tokens already in the prompt or completion (> 1.0) or favour them "
                                       "(< 1.0)."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "More `GenerationConfig` keyword arguments for sampling; they override the "
                                        "fields above on conflict."})
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments for `apply_chat_template` on conversational prompts."})
    cache_implementation: str | None = field(
        default=None, metadata={"help": "KV-cache implementation for generation ('static' preallocates it)."})

    # vLLM: the fields exist for compatibility; generation with vLLM is not available in this trainer yet.
    use_vllm: bool = field(
        default=False, metadata={"help": "Generate with vLLM (not available here yet: leave False)."})
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "With vLLM: correct for the sampler/trainer log-prob mismatch by "
                                        "importance sampling."})
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask", metadata={"help": "With vLLM: 'token_truncate', 'token_mask', "
                                                   "'sequence_truncate' or 'sequence_mask'."})
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "With vLLM: upper bound C_max of the importance-sampling ratio."})
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "With vLLM: lower bound C_min of the importance-sampling ratio."})
    vllm_importance_sampling_cap: float | None = field(
        default=None, metadata={"help": "Deprecated name of vllm_importance_sampling_clip_max."})
    vllm_mode: str = field(default="colocate", metadata={"help": "With vLLM: 'colocate' or 'server'."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "With vLLM: 'vllm' or 'transformers'."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "With vLLM: sleep between generations."})
    vllm_structured_outputs_regex: str | None = field(
        default=None, metadata={"help": "With vLLM: a regex completions must match."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "With vLLM server mode: its URL."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "With vLLM server mode: its host."})
    vllm_server_port: int = field(default=8000, metadata={"help": "With vLLM server mode: its port."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "With vLLM server mode: seconds to wait."})
    vllm_group_port: int = field(default=51216, metadata={"help": "With vLLM server mode: the weight-sync port."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "With vLLM colocated: its share of GPU memory."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "With vLLM: its context length."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "With vLLM colocated: tensor parallel size."})

    # Other generation engines and tools (not available in this trainer: generation runs on the training model)
    use_transformers_continuous_batching: bool = field(
        default=False, metadata={"help": "Generate with transformers' continuous batching (not available here)."})
    transformers_continuous_batching_config: dict | str | None = field(
        default=None, metadata={"help": "With continuous batching: its `ContinuousBatchingConfig` keywords."})
    use_transformers_paged: bool = field(
        default=False, metadata={"help": "Deprecated name of use_transformers_continuous_batching."})
    max_tool_calling_iterations: int | None = field(
        default=None, metadata={"help": "With tools: the most tool-calling turns per completion."})

    # Training
    beta: float = field(
        default=0.0, metadata={"help": "KL coefficient. 0.0 (default): no reference model at all (less memory, "
                                       "faster). DeepSeek-R1 uses 0.001."})
    num_iterations: int = field(
        default=1, metadata={"help": "Optimisation passes per generation batch (μ in the algorithm)."})
    epsilon: float = field(default=0.2, metadata={"help": "Epsilon value for clipping."})
    delta: float | None = field(
        default=None, metadata={"help": "Upper bound on the unclipped ratio (two-sided GRPO, INTELLECT-2); "
                                        "None: off. Use more than 1 + epsilon."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clipping epsilon; None: `epsilon` (DAPO recommends 0.28). For "
                                        "loss_type='cispo' the cap on the weight itself (~5.0)."})
    sapo_temperature_neg: float = field(
        default=1.05, metadata={"help": "SAPO gate temperature for tokens with non-positive advantages."})
    sapo_temperature_pos: float = field(
        default=1.0, metadata={"help": "SAPO gate temperature for tokens with positive advantages."})
    vespo_k_pos: float = field(default=2.0, metadata={"help": "VESPO's power k for A >= 0: how hard sequences "
                                                              "with an importance ratio below 1 are down-weighted."})
    vespo_lambda_pos: float = field(default=3.0, metadata={"help": "VESPO's decay λ for A >= 0: how hard ratios "
                                                                   "above 1 are down-weighted."})
    vespo_k_neg: float = field(default=3.0, metadata={"help": "VESPO's power k for A < 0."})
    vespo_lambda_neg: float = field(default=2.0, metadata={"help": "VESPO's decay λ for A < 0."})
    importance_sampling_level: str = field(
        default="token", metadata={"help": "'token': one importance ratio per token; 'sequence': the mean log "
                                           "ratio of each sequence (GSPO)."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function; None: all 1.0."})
    multi_objective_aggregation: str = field(
        default="sum_then_normalize", metadata={"help": "'sum_then_normalize': weight and sum the rewards, then "
                                                        "scale by `scale_rewards`; 'normalize_then_sum' (GDPO): "
                                                        "standardise each function per group, sum, then "
                                                        "standardise over the batch."})
    scale_rewards: str = field(
        default="group", metadata={"help": "Divide advantages by the reward std of the 'group' (or True), of the "
                                           "'batch', or not at all ('none' or False; Dr. GRPO)."})
    loss_type: str = field(
        default="dapo", metadata={"help": f"{_one_of(LOSS_TYPES)} (default 'dapo'); they differ in the per-token "
                                          "term and the normaliser (docs/algorithms/grpo.md)."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions that hit max_completion_length without EOS out of the "
                                         "loss (they still count in the rewards)."})
    sync_ref_model: bool = field(
        default=False, metadata={"help": "Move the reference towards the policy every `ref_model_sync_steps` "
                                         "steps (TR-DPO)."})
    ref_model_mixup_alpha: float = field(
        default=0.6, metadata={"help": "α of the reference update π_ref = α π_θ + (1 - α) π_ref."})
    ref_model_sync_steps: int = field(
        default=512, metadata={"help": "Optimizer steps between reference updates (τ of TR-DPO)."})
    top_entropy_quantile: float = field(
        default=1.0, metadata={"help": "Keep in the policy term only the top share of tokens by entropy (0.2 in "
                                       "'Beyond the 80/20 rule'); 1.0 keeps all."})
    entropy_coef: float = field(
        default=0.0, metadata={"help": "Weight of an entropy bonus (the mean per-token entropy) subtracted from "
                                       "the loss; 0.0: off. The start value when `use_adaptive_entropy`."})
    use_adaptive_entropy: bool = field(
        default=False, metadata={"help": "Adapt `entropy_coef` each step (Skywork-OR1): up by `entropy_coef_delta` "
                                         "while entropy is at or below `entropy_target`, down otherwise; the bonus "
                                         "applies only while it is."})
    entropy_coef_min: float = field(default=0.0, metadata={"help": "Lower bound of the adaptive entropy coef."})
    entropy_coef_max: float = field(default=1.0, metadata={"help": "Upper bound of the adaptive entropy coef."})
    entropy_coef_delta: float = field(default=0.005, metadata={"help": "Step of the adaptive entropy coef."})
    entropy_target: float = field(default=0.2, metadata={"help": "Target mean entropy (nats) of adaptive control."})
    off_policy_mask_threshold: float | None = field(
        default=None, metadata={"help": "Drop sequences with negative advantage whose mean log-prob drift exceeds "
                                        "this (DeepSeek-V3.2, eq. 9); None: off."})
    use_bias_correction_kl: bool = field(
        default=True, metadata={"help": "Multiply the KL term by the importance ratio (unbiased reverse-KL "
                                        "gradient; changes the gradient even on-policy)."})

    reproduce_trl: bool = field(
        default=False, metadata={"help": "TRL 1.16's numbers exactly, undoing this trainer's corrections: no "
                                         "position ids in scoring (left padding shifts absolute positions), TRL's "
                                         "means and deviations of rewards (an all-equal group can get a tiny "
                                         "advantage), the reference reloaded from the policy's config path, "
                                         "batches shuffled from the global RNG."})

    # Logging
    log_completions: bool = field(
        default=False, metadata={"help": "Print a sample of (prompt, completion, rewards) at every log."})
    num_completions_to_print: int | None = field(
        default=None, metadata={"help": "How many completions to print; None: all."})
    log_unique_prompts: bool = field(
        default=False, metadata={"help": "Print each prompt's first completion only."})
    log_multimodal: bool = field(
        default=True, metadata={"help": "Log images with completions (text-only here: no effect)."})
    log_completions_hub_repo: str | None = field(
        default=None, metadata={"help": "A Hub dataset repository to push completions to (not available here)."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        with warnings.catch_warnings():  # transformers 5 renames it; the field is TRL's public name
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            super().__post_init__()
        self._check_choices()
        processes = self.world_size
        per_step = self.per_device_train_batch_size * processes
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("set generation_batch_size or steps_per_generation, not both: one is derived from the "
                             "other (generation_batch_size = per_device_train_batch_size * processes * "
                             "steps_per_generation)")
        if self.generation_batch_size is None:
            if self.steps_per_generation is None:
                self.steps_per_generation = self.gradient_accumulation_steps
            self.generation_batch_size = per_step * self.steps_per_generation
        else:
            if self.generation_batch_size % per_step:
                raise ValueError(
                    f"generation_batch_size ({self.generation_batch_size}) must be a multiple of "
                    f"per_device_train_batch_size * processes ({self.per_device_train_batch_size} * {processes} = "
                    f"{per_step})")
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations}: GRPO compares completions of one prompt, so "
                             "it needs at least 2")
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"the generation batch ({self.generation_batch_size} completions = per_device_train_batch_size "
                f"{self.per_device_train_batch_size} x {processes} processes x steps_per_generation "
                f"{self.steps_per_generation}) is not a multiple of num_generations ({self.num_generations}): "
                "change one of them so that every prompt's group fits in one generation")
        if self.do_eval and self.eval_strategy != "no":
            generations = self.num_generations_eval or self.num_generations
            if (self.per_device_eval_batch_size * processes) % generations:
                raise ValueError(
                    f"the eval batch ({self.per_device_eval_batch_size} x {processes} processes) must be a multiple "
                    f"of the generations per eval prompt ({generations}): set per_device_eval_batch_size")

    def _check_choices(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: use {_one_of(SCALE_REWARDS)} (True is 'group', "
                             "False 'none')")
        if self.multi_objective_aggregation not in REWARD_AGGREGATIONS:
            raise ValueError(f"multi_objective_aggregation={self.multi_objective_aggregation!r}: use "
                             f"{_one_of(REWARD_AGGREGATIONS)}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance_sampling_level={self.importance_sampling_level!r}: use "
                             f"{_one_of(IMPORTANCE_SAMPLING_LEVELS)}")
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ValueError(f"top_entropy_quantile={self.top_entropy_quantile}: use a value in [0, 1]")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations={self.num_iterations}: use 1 or more")
        engines = {"use_vllm": "vLLM", "use_transformers_continuous_batching": "transformers' continuous batching",
                   "use_transformers_paged": "transformers' continuous batching"}
        for name, engine in engines.items():
            if getattr(self, name):
                raise ValueError(f"{name}=True: generation with {engine} is not available in this trainer; leave it "
                                 "False (generation runs on the training model)")
        if self.log_completions_hub_repo is not None:
            raise ValueError("log_completions_hub_repo: pushing completions to the Hub is not available in this "
                             "trainer; leave it None (log_completions prints them)")
        if self.router_aux_loss_coef is not None:
            raise ValueError("router_aux_loss_coef: this trainer does not add a Mixture-of-Experts load-balancing "
                             "loss; leave it None")
        if not (self.pad_to_multiple_of in ("auto", None) or
                (isinstance(self.pad_to_multiple_of, int) and self.pad_to_multiple_of >= 1)):
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of!r}: use 'auto', None or a positive "
                             "number of tokens")
        if self.auto_find_batch_size:
            raise ValueError("auto_find_batch_size=True would shrink the batch below whole prompt groups: set "
                             "the batch size yourself")
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length}: use 1 or more tokens")
