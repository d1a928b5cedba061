"""Rollout engines: what turns a batch of prompt token lists into sampled completion token lists.

GRPOTrainer talks to one small interface, `RolloutEngine.generate(prompt_ids, seed) -> completion_ids`, so another
engine (vLLM on a GPU, a server) can stand in for the default without touching the trainer. `TransformersRollout`
samples with the training model itself: our sampling loop (`generation.sample_tokens`) where it draws what
``model.generate`` would, else ``generate`` (min_p, repetition_penalty, beams, ...).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Protocol

import torch

from rlhf_trainer.trainer.generation import fast_sampling_settings, sample_tokens
from rlhf_trainer.trainer.grpo_data import pad


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        """One completion per prompt, each kept up to and including its first EOS; reproducible from ``seed``."""


def sampling_kwargs(args, eos_token_ids: list[int], pad_token_id: int) -> dict:
    """``generate`` keyword arguments of a GRPOConfig: sampling with its temperature, top-p/k, min-p, repetition
    penalty and every EOS id; ``generation_kwargs`` override them."""
    kwargs = dict(do_sample=True, max_new_tokens=args.max_completion_length, temperature=args.temperature,
                  top_p=args.top_p, top_k=args.top_k, eos_token_id=eos_token_ids, pad_token_id=pad_token_id)
    if args.min_p is not None:
        kwargs["min_p"] = args.min_p
    if args.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = args.repetition_penalty
    if args.cache_implementation is not None:
        kwargs["cache_implementation"] = args.cache_implementation
    extra = json.loads(args.generation_kwargs) if isinstance(args.generation_kwargs, str) else args.generation_kwargs
    kwargs.update(extra or {})
    return kwargs


def cut_at_eos(tokens: list[int], eos_token_ids: set[int]) -> list[int]:
    """The tokens up to and including the first EOS (all of them when there is none)."""
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[:i + 1]
    return tokens


@contextmanager
def seeded(seed: int, device: torch.device):
    """Draw from a fresh generator state ``seed`` inside, leaving the global RNG as it was: a rollout is the same
    whatever else consumed random numbers (resume, evaluation in between)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class TransformersRollout:
    """Sampling with the (unwrapped) training model, in eval mode (no dropout while sampling)."""

    def __init__(self, model_getter, generation_kwargs: dict, pad_token_id: int, eos_token_ids: list[int]):
        self.model_getter, self.generation_kwargs = model_getter, generation_kwargs
        self.pad_token_id, self.eos_token_ids = pad_token_id, set(eos_token_ids)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        model = self.model_getter()
        device = next(model.parameters()).device
        input_ids, attention_mask = (t.to(device) for t in pad(prompt_ids, self.pad_token_id, "left"))
        kwargs = dict(self.generation_kwargs)
        cache = "static" if kwargs.get("cache_implementation") == "static" else "dynamic"
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        settings = fast_sampling_settings(base, input_ids.shape[1],
                                          **{k: v for k, v in kwargs.items() if k != "cache_implementation"})
        was_training = model.training
        model.eval()
        try:
            with seeded(seed, device):
                if settings is not None:  # a CPU's multinomial is slow; the inverse CDF draws the same distribution
                    draw = "inverse_cdf" if device.type == "cpu" else "multinomial"
                    tokens = sample_tokens(model, input_ids, attention_mask, settings, cache=cache, draw=draw)
                else:
                    tokens = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                    tokens = tokens[:, input_ids.shape[1]:]
        finally:
            model.train(was_training)
        return [cut_at_eos(row, self.eos_token_ids) for row in tokens.tolist()]
