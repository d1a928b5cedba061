"""Names of the builtin tiny models (torch-free: the stage config validates against them).

``rlhf_trainer.tiny`` builds them; this table is all that code outside the trainer needs to know.
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
