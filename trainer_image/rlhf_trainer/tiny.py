"""Tiny random-init models and a tokenizer, built offline and deterministically.

Tests and the demo reach every API through ``from_pretrained(<local dir>)`` exactly as users do with hub ids;
this module only makes those directories. Nothing here touches the network.

    from rlhf_trainer.tiny import save_builtin
    path = save_builtin("tiny-gpt2", "/tmp/tiny-gpt2")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

from rlhf_contract.builtins import BUILTIN_MAX_POSITIONS, BUILTIN_MODELS
from rlhf_trainer.data import tokenizer_corpus

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VOCAB_SIZE = 1024

# ChatML-like; assistant turns end with EOS (so generation stops there) and are wrapped in
# {% generation %} so `apply_chat_template(..., return_assistant_tokens_mask=True)` marks them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|endoftext|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_AUTO_CLASSES = {
    "causal-lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "seq-cls": AutoModelForSequenceClassification,
}


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the text shipped in ``rlhf_trainer.data``; pad != EOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=BUILTIN_MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, **overrides) -> PretrainedConfig:
    """A config of the given family small enough to train on a CPU in seconds."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=BUILTIN_MAX_POSITIONS, **ids)
    elif family == "llama":
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=BUILTIN_MAX_POSITIONS, tie_word_embeddings=True, **ids,
        )
    elif family == "opt":
        # word_embed_proj_dim != hidden_size on purpose: value heads must use the projected size.
        config = OPTConfig(
            hidden_size=64, word_embed_proj_dim=32, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=BUILTIN_MAX_POSITIONS, **ids,
        )
    elif family == "t5":
        config = T5Config(
            d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id, **ids,
        )
    else:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of gpt2, llama, opt, t5")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_model(family: str = "gpt2", head: str = "causal-lm", *, tokenizer=None, seed: int = 0,
                num_labels: int = 1, **overrides):
    """A random-init tiny model; the same arguments always give the same weights."""
    if head not in _AUTO_CLASSES:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(_AUTO_CLASSES)}")
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_config(family, tokenizer, **overrides)
    if head == "seq-cls":
        config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _AUTO_CLASSES[head].from_config(config)


def save_tiny(directory: str | Path, family: str = "gpt2", head: str = "causal-lm", *, seed: int = 0,
              num_labels: int = 1, **overrides) -> Path:
    """Build a tiny model and its tokenizer and ``save_pretrained`` both into ``directory``."""
    directory = Path(directory)
    tokenizer = build_tokenizer()
    model = build_model(family, head, tokenizer=tokenizer, seed=seed, num_labels=num_labels, **overrides)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_builtin(name: str, directory: str | Path, *, seed: int = 0, **overrides) -> Path:
    """Save the builtin model ``name`` (see ``BUILTIN_MODELS``) into ``directory``."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; builtin models are {', '.join(BUILTIN_MODELS)}")
    family, head = BUILTIN_MODELS[name]
    return save_tiny(directory, family, head, seed=seed, **overrides)
