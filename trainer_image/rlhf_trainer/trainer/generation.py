"""Rollout sampling for decoder-only models: HF ``generate``'s tokens for the settings PPO uses, with less overhead.

``sample_tokens`` draws from the same distribution as ``model.generate`` (temperature, then top-k, then top-p, as
its logits warpers do; greedy when ``do_sample`` is off) in a plain loop over the model's forward: no logits
processor list, no stopping-criteria objects, no per-step input preparation. With ``cache="static"`` the KV cache
is preallocated and every decoding step has the same shapes, so ``compile=True`` can capture it once
(``torch.compile(mode="reduce-overhead")``: CUDA graphs on a GPU) and replay it for every token.

Settings it does not implement (beam search, repetition penalties, bad words, ...) are not approximated:
`fast_sampling_settings` returns None and the caller uses ``generate``.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

COMPILE_BUCKET = 64  # prompt lengths are rounded up to a multiple of this when the decoding step is compiled
# HF defaults that only the sampling below can honour; any other value of these makes us defer to generate().
_MUST_BE_DEFAULT = (
    "num_beams", "num_return_sequences", "typical_p", "repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty", "output_scores", "return_dict_in_generate",
    "num_beam_groups", "diversity_penalty",
)
_MUST_BE_UNSET = ("min_p", "top_h", "sequence_bias", "guidance_scale", "stop_strings",
                  "watermarking_config", "prompt_lookup_num_tokens", "assistant_early_exit", "output_logits",
                  "max_time")


@dataclass(frozen=True)
class SamplingSettings:
    """What one rollout batch is sampled with."""

    max_new_tokens: int
    min_new_tokens: int  # EOS is not drawn before this many new tokens (HF's min_length / min_new_tokens)
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


def fast_sampling_settings(model: nn.Module, prompt_length: int, **generation_kwargs) -> SamplingSettings | None:
    """The settings ``model.generate(**generation_kwargs)`` would sample with, resolved as it resolves them (call
    arguments, then the model's generation_config, then transformers' defaults); None where ``sample_tokens``
    would not give what ``generate`` gives."""
    if model.config.is_encoder_decoder or not hasattr(model, "_prepare_generation_config"):
        return None
    try:
        config, model_kwargs = model._prepare_generation_config(None, **generation_kwargs)
    except (TypeError, ValueError):
        return None
    defaults = config._get_default_generation_params()
    if (model_kwargs
            or any(getattr(config, name, None) != defaults.get(name) for name in _MUST_BE_DEFAULT)
            or any(getattr(config, name, None) is not None for name in _MUST_BE_UNSET)):
        return None
    max_new_tokens = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_length
    eos = config.eos_token_id
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    min_new_tokens = max(config.min_new_tokens or 0, (config.min_length or 0) - prompt_length, 0)
    return SamplingSettings(max(max_new_tokens, 0), min_new_tokens, bool(config.do_sample), float(config.temperature or 1.0),
                            int(config.top_k or 0), float(config.top_p if config.top_p is not None else 1.0), eos, pad)


def next_tokens(logits: torch.Tensor, settings: SamplingSettings, generated: int = 0,
                draw: str = "multinomial") -> torch.Tensor:
    """One token per row from [B, V] logits after ``generated`` new tokens: argmax, or a draw after temperature,
    top-k and top-p (HF's order); EOS is ruled out before ``min_new_tokens``. ``draw``: ``"multinomial"`` (the
    tokens ``generate`` draws from the same seed) or ``"inverse_cdf"`` (the same distribution, not the same tokens;
    ~20x cheaper than ``multinomial`` on a CPU)."""
    scores = logits.float()
    if generated < settings.min_new_tokens and settings.eos_token_ids:
        scores[:, list(settings.eos_token_ids)] = -float("inf")
    if not settings.do_sample:
        return scores.argmax(-1)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if 0 < settings.top_k < scores.shape[-1]:
        kth = scores.topk(settings.top_k).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = scores.sort(descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - settings.top_p
        remove[:, -1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    if draw == "inverse_cdf":
        return inverse_cdf_draw(scores.softmax(-1))
    return scores.softmax(-1).multinomial(1).squeeze(1)


def inverse_cdf_draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of [B, V] probabilities: the first whose cumulative probability exceeds a uniform draw
    (float64 sums; a zero-probability index is never drawn)."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    u = torch.minimum(torch.rand(total.shape, dtype=torch.float64, device=probs.device) * total,
                      torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def sample_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  settings: SamplingSettings, cache: str = "dynamic", compile: bool = False,
                  draw: str = "multinomial") -> torch.Tensor:
    """Continue left-padded prompts [B, P]; returns the new tokens [B, <= max_new_tokens], pad after each EOS.

    Stops when every row has produced an EOS. ``cache``: ``"dynamic"`` (grows with the sequence) or ``"static"``
    (preallocated; fixed shapes per step). ``compile`` compiles the decoding step, with a static cache. ``draw``:
    see `next_tokens`.
    """
    # Inference mode skips autograd's bookkeeping that no_grad still does (a tenth of a small model's decoding
    # time on a CPU); the clone, made outside it, is a tensor that training may use as input.
    with torch.inference_mode():
        tokens = _sample(model, input_ids, attention_mask, settings, cache, compile, draw)
    return tokens.clone()


def _sample(model, input_ids, attention_mask, settings, cache, compile, draw) -> torch.Tensor:
    from transformers import DynamicCache, StaticCache

    if compile:  # each new shape is a new compilation: pad prompts on the left to a multiple of COMPILE_BUCKET
        extra = -input_ids.shape[1] % COMPILE_BUCKET
        input_ids = F.pad(input_ids, (extra, 0), value=settings.pad_token_id)
        attention_mask = F.pad(attention_mask, (extra, 0), value=0)
    batch, prompt_length = input_ids.shape
    total = prompt_length + settings.max_new_tokens
    if settings.max_new_tokens == 0:
        return input_ids.new_empty((batch, 0))
    device = input_ids.device
    static = cache == "static" or compile  # a growing cache would change the step's shapes every token
    kv = StaticCache(config=model.config, max_cache_len=total) if static else DynamicCache(config=model.config)
    # The mask covers every position up front: causality keeps each step from looking ahead, and a fixed-size
    # mask keeps the step's shapes fixed for the static cache.
    mask = torch.cat([attention_mask.long(), attention_mask.new_ones((batch, settings.max_new_tokens)).long()], 1)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache_argument = _cache_argument(model)
    logits = model(input_ids=input_ids, attention_mask=mask if static else mask[:, :prompt_length],
                   position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_argument: kv}).logits[:, -1]
    step = _decode_step(model, compile)
    decode_mask = _decode_masks(model, mask, static)
    eos = torch.tensor(settings.eos_token_ids, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    position = positions[:, -1:]
    tokens = []
    for index in range(settings.max_new_tokens):
        token = next_tokens(logits, settings, index, draw)
        token = torch.where(unfinished, token, settings.pad_token_id)
        tokens.append(token)
        if len(eos):
            unfinished &= ~torch.isin(token, eos)
        if index + 1 == settings.max_new_tokens or not unfinished.any():
            break
        position = position + 1
        length = prompt_length + index + 1
        logits = step(token[:, None], decode_mask(length), position, kv)
    return torch.stack(tokens, 1)


def _decode_masks(model: nn.Module, mask: torch.Tensor, static: bool):
    """The attention mask of the decoding step that has ``length`` keys. A one-token query under full causal
    attention sees every earlier key, so for SDPA the 4D mask is the padding mask itself: given ready-made, it
    spares the model building a causal mask for every token. Sliding windows, other attention kernels and the
    static cache (whose keys include unwritten slots) get the 2D mask and the model's own masking."""
    config = model.config
    full_attention = (getattr(config, "sliding_window", None) is None
                      and getattr(config, "attention_chunk_size", None) is None
                      and all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ()))
    if static:
        return lambda length: mask
    if config._attn_implementation != "sdpa" or not full_attention:
        return lambda length: mask[:, :length]
    keys = mask.bool()[:, None, None, :]
    return lambda length: keys[..., :length]


def _decode_step(model: nn.Module, compile: bool):
    """One token per row through the model with the cache: its next-token logits [B, V]."""
    cache_argument = _cache_argument(model)

    def step(token, mask, position, kv):
        output = model(input_ids=token, attention_mask=mask, position_ids=position, use_cache=True,
                       **{cache_argument: kv})
        return output.logits[:, -1]

    if not compile:
        return step
    if model not in _COMPILED_STEPS:  # one compilation per model, reused by every rollout
        _COMPILED_STEPS[model] = torch.compile(step, mode="reduce-overhead", dynamic=False)
    return _COMPILED_STEPS[model]


_COMPILED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_argument(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` since transformers 5.2x, ``past_key_values`` before."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it through
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
