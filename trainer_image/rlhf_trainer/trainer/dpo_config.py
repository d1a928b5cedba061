"""DPOConfig: `TrainingArguments` plus every DPO knob of TRL 1.16, with its name and default
(docs/algorithms/dpo.md says what each one does to the computation).

    args = DPOConfig(output_dir="out", beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])

Three fields are ours, not TRL's: ``padding_free`` defaults to None (pack pairs without padding wherever the model
keeps packed texts apart: the same numbers, faster), ``share_prompts`` (each pair's prompt run once) and
``chunked_lm_head`` (only completion tokens through the LM head, in chunks). All follow the None/True/False rule
of `resolve_fast_path`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, get_args

from transformers import TrainingArguments

from rlhf_contract.stages.dpo import DPOLoss, FDivergence, TruncationMode

LOSS_TYPES = get_args(DPOLoss)
F_DIVERGENCES = get_args(FDivergence)
TRUNCATION_MODES = get_args(TruncationMode)
# The f-DPO reparameterisation leaves a beta*log Z(x) term that cancels only in the chosen - rejected difference,
# so only the losses built on that difference take another f-divergence.
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
SORTING_LOSS_TYPES = ("aot", "aot_unpaired")
assert {*F_DIVERGENCE_LOSS_TYPES, *SORTING_LOSS_TYPES} <= set(LOSS_TYPES), "a loss type the contract does not know"


@dataclass
class DPOConfig(TrainingArguments):
    """Configuration of `DPOTrainer`: TRL 1.16's DPOConfig fields and defaults.

    Defaults that differ from `TrainingArguments`: ``learning_rate`` 1e-6, ``logging_steps`` 10,
    ``gradient_checkpointing`` True, ``bf16`` True unless ``fp16`` (on a CPU that autocasts to bfloat16: pass
    ``bf16=False`` for fp32).
    """

    # Defaults TRL changes from TrainingArguments
    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={
        "help": "Log every X update steps: an integer, or a float in [0, 1) for a ratio of the total steps."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Recompute activations in the backward pass instead of keeping them: less memory, more compute. "
                "Default: True (unless activation_checkpointing, transformers' new name for it, is set)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "Train in bf16 mixed precision. Default: True unless fp16 is set."})

    # The model
    model_init_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "Keyword arguments for from_pretrained when the trainer's model is a hub id or a path "
                "(float32 unless they give a dtype)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow models and tokenizers that ship their own Python code."})
    router_aux_loss_coef: float | None = field(default=None, metadata={
        "help": "Weight of a Mixture-of-Experts model's load-balancing loss; None: the model config's own, 0.0: off."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Switch dropout off in the policy and the reference model."})

    # The data
    dataset_num_proc: int | None = field(default=None, metadata={
        "help": "Processes used to tokenize the dataset."})
    max_length: int | None = field(default=1024, metadata={
        "help": "Longest prompt + completion in tokens; each row is cut to it (see truncation_mode). None: no cut."})
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "Which end of a row over max_length to keep: 'keep_start'. 'keep_end' is deprecated.",
        "choices": list(TRUNCATION_MODES)})
    padding_free: bool | None = field(default=None, metadata={
        "help": "Pack each batch's prompt+chosen and prompt+rejected sequences whole into rows with no padding "
                "(position ids restarting at each). None (ours; TRL 1.16's default False pads): wherever the model "
                "keeps packed sequences apart. True insists, False pads."})
    pad_to_multiple_of: int | str | None = field(default="auto", metadata={
        "help": "Pad batches to a multiple of this many tokens. 'auto': 128 on Neuron, no padding elsewhere."})
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "Run the reference model once over the datasets before training, keep its log-probs as columns "
                "ref_chosen_logps / ref_rejected_logps, and free it."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Batch size of that pass. None: per_device_train_batch_size (per_device_eval_batch_size for eval)."})

    # The loss
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"], metadata={
        "help": f"Loss(es) to use, one or several of {', '.join(LOSS_TYPES)}; several are added with "
                "loss_weights."})
    loss_weights: list[float] | None = field(default=None, metadata={
        "help": "Weight of each loss in loss_type (e.g. [0.8, 0.2, 1.0] for MPO). None: 1.0 each."})
    ld_alpha: float | None = field(default=None, metadata={
        "help": "LD-DPO's alpha in [0, 1]: weight of the log-probs of completion tokens past the shorter "
                "completion's length. None: no weighting (1.0); 0.0 drops them."})
    f_divergence_type: str = field(default="reverse_kl", metadata={
        "help": f"f-divergence regulariser of f-DPO: {', '.join(F_DIVERGENCES)}. Other than reverse_kl only with "
                f"the loss types {', '.join(F_DIVERGENCE_LOSS_TYPES)}."})
    f_alpha_divergence_coef: float = field(default=0.5, metadata={
        "help": "alpha of the alpha-divergence, used when f_divergence_type='alpha_divergence'."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Label noise for the robust loss (probability a label is flipped, in [0, 0.5); 0.1 is typical) and "
                "epsilon for exo_pair (> 0; 1e-3 is typical); also smooths aot and aot_unpaired. Other losses "
                "ignore it."})
    beta: float = field(default=0.1, metadata={
        "help": "How far the policy may move from the reference: larger beta, less deviation. For ipo it is the "
                "paper's tau (the target margin is 1/(2 beta))."})
    use_weighting: bool = field(default=False, metadata={
        "help": "Weight each pair by WPO's length-normalised probabilities of its completions under the policy."})
    discopop_tau: float = field(default=0.05, metadata={
        "help": "Temperature of the DiscoPOP loss (loss_type='discopop'); the paper uses 0.05."})
    activation_offloading: bool = field(default=False, metadata={
        "help": "Offload activations to the CPU (not supported by this trainer: leave False)."})
    sync_ref_model: bool = field(default=False, metadata={
        "help": "TR-DPO: every ref_model_sync_steps steps set ref = alpha * policy + (1 - alpha) * ref. Not with "
                "PEFT or precompute_ref_log_probs."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={
        "help": "alpha of TR-DPO's reference update (sync_ref_model=True)."})
    ref_model_sync_steps: int = field(default=512, metadata={
        "help": "Steps between TR-DPO's reference updates (sync_ref_model=True)."})

    # Ours
    share_prompts: bool | None = field(default=None, metadata={
        "help": "With padding_free: run each pair's prompt once, its chosen and rejected completions both attending "
                "to it (a 4D attention mask), instead of once per sequence. None: wherever a probe shows the model "
                "gives the padded log-probs that way (keep_start truncation, an attention that takes a 4D mask)."})
    chunked_lm_head: bool | None = field(default=None, metadata={
        "help": "Feed only the completion tokens' hidden states through the LM head, in chunks, never the full "
                "[tokens, vocabulary] logits. None: wherever the model's logits are its LM head's output."})

    # Deprecated in TRL
    pad_token: str | None = field(default=None, metadata={
        "help": "Deprecated: set tokenizer.pad_token and pass the tokenizer as processing_class."})

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        check_loss_settings(self)
        if self.pad_token is not None:
            warnings.warn("pad_token is deprecated: set tokenizer.pad_token and pass the tokenizer as "
                          "processing_class", FutureWarning, stacklevel=3)
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode={self.truncation_mode!r}: use 'keep_start'")
        if self.truncation_mode == "keep_end":
            warnings.warn("truncation_mode='keep_end' is deprecated (TRL removes it in 2.0): use 'keep_start'",
                          FutureWarning, stacklevel=3)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length}: a row needs a prompt token and a completion token")
        if self.activation_offloading:
            raise ValueError("activation_offloading=True is not supported by this DPOTrainer; use "
                             "gradient_checkpointing=True to save activation memory")
        self.bf16 = not self.fp16 if self.bf16 is None else self.bf16
        if self.gradient_checkpointing is None and self.activation_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default, set under the name transformers 5 reads
        super().__post_init__()
        if isinstance(self.pad_to_multiple_of, str) and self.pad_to_multiple_of != "auto":
            text = self.pad_to_multiple_of.lower()
            self.pad_to_multiple_of = None if text in ("none", "null") else int(text)
        if self.pad_to_multiple_of == "auto":
            self.pad_to_multiple_of = 128 if self.device.type == "neuron" else None


def check_loss_settings(args) -> None:
    """Refuse loss settings that cannot work, saying what to change; warn where the robust loss is mis-set."""
    unknown = [name for name in args.loss_type if name not in LOSS_TYPES]
    if unknown or not args.loss_type:
        raise ValueError(f"loss_type {args.loss_type}: each must be one of {', '.join(LOSS_TYPES)}")
    if args.loss_weights is not None and len(args.loss_weights) != len(args.loss_type):
        raise ValueError(f"loss_weights has {len(args.loss_weights)} weights for the {len(args.loss_type)} loss "
                         f"types {args.loss_type}: give one weight per loss type")
    if args.f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"f_divergence_type={args.f_divergence_type!r}: use one of {', '.join(F_DIVERGENCES)}")
    if args.f_divergence_type != "reverse_kl":
        others = [name for name in args.loss_type if name not in F_DIVERGENCE_LOSS_TYPES]
        if others:
            raise ValueError(
                f"f_divergence_type={args.f_divergence_type!r} does not apply to the loss types {others}: it works "
                f"only with {', '.join(F_DIVERGENCE_LOSS_TYPES)}. Use f_divergence_type='reverse_kl' with these.")
    if args.use_weighting and any(name in SORTING_LOSS_TYPES for name in args.loss_type):
        raise ValueError("use_weighting=True cannot be used with 'aot' or 'aot_unpaired': they sort the pairs of a "
                         "batch, so per-pair weights would land on other pairs. Drop use_weighting or the aot loss.")
    if "exo_pair" in args.loss_type and args.label_smoothing <= 0:
        raise ValueError("loss_type 'exo_pair' needs label_smoothing > 0 (its epsilon; the EXO paper uses 1e-3)")
    if "robust" in args.loss_type and not 0 <= args.label_smoothing < 0.5:
        warnings.warn(f"label_smoothing={args.label_smoothing} for the 'robust' loss should lie in [0, 0.5): it is "
                      "the probability that a preference label is flipped", UserWarning, stacklevel=4)
    if args.ld_alpha is not None and not 0 <= args.ld_alpha <= 1:
        raise ValueError(f"ld_alpha={args.ld_alpha}: it must lie in [0, 1] (1.0 weights nothing, 0.0 drops the "
                         "tokens past the shorter completion)")
    if args.beta <= 0 and any(name in ("ipo", "sppo_hard") for name in args.loss_type):
        raise ValueError(f"beta={args.beta}: ipo and sppo_hard divide by beta, so it must be > 0")
