"""Names of the builtin tiny models and datasets that stage configs may name (torch-free).

The trainer builds them (``rlhf_trainer.tiny``, ``rlhf_trainer.data``); this table is all that the operator and the
CRD need to know. A test keeps the builders and these names in step.
"""

# name -> (family, head). Heads: causal-lm, seq2seq, seq-cls (a scalar score by default, as reward models).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "tiny-gpt2": ("gpt2", "causal-lm"),
    "tiny-llama": ("llama", "causal-lm"),
    "tiny-opt": ("opt", "causal-lm"),
    "tiny-t5": ("t5", "seq2seq"),
    "tiny-gpt2-classifier": ("gpt2", "seq-cls"),
    "tiny-llama-classifier": ("llama", "seq-cls"),
}

BUILTIN_MAX_POSITIONS = 256
"""Positions (the longest sequence) of every builtin model."""

BUILTIN_DATASETS: tuple[str, ...] = ("movie-reviews", "movie-preferences", "movie-prompts", "digit-reversal",
                                     "digit-reversal-sft")
"""Small datasets shipped with the trainer, each with a train and a test split."""

BUILTIN_VERIFIERS: tuple[str, ...] = ("digit-reversal-exact", "digit-reversal-digits", "math-answer")
"""Reward programs shipped with the trainer for its builtin tasks (``rlhf_trainer.rewards``)."""
