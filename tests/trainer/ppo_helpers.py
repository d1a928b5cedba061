"""Small builders shared by the PPO tests."""

import warnings

import torch

from rlhf_trainer import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    PPOConfig,
    PPOTrainer,
)

PROMPTS = ["the movie was", "I think", "a film about", "this is"]


def load_policy(path, seq2seq=False, **kwargs):
    cls = AutoModelForSeq2SeqLMWithValueHead if seq2seq else AutoModelForCausalLMWithValueHead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(path, **kwargs)


def make_trainer(path, tokenizer, seq2seq=False, ref_model=None, model_kwargs=None, **config):
    config = {"batch_size": 4, "mini_batch_size": 2, **config}
    model = load_policy(path, seq2seq, **(model_kwargs or {}))
    return PPOTrainer(PPOConfig(**config), model, ref_model, tokenizer)


def queries(tokenizer, n):
    return [torch.tensor(tokenizer.encode(PROMPTS[i % len(PROMPTS)])) for i in range(n)]


def rollout(trainer, tokenizer, n, new_tokens=6, **generation_kwargs):
    """n queries of different lengths and sampled responses of exactly ``new_tokens`` tokens."""
    qs = queries(tokenizer, n)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": True, "top_k": 0,
              **generation_kwargs}
    return qs, trainer.generate(qs, return_prompt=False, **kwargs)


def train_toy(trainer, tokenizer, steps, n, new_tokens=8, target_rank=3):
    """The toy task: the score is how often a response uses one target token.

    The target is the ``target_rank``-th most frequent token of the untrained policy's samples, so that it is
    sampled now and then from the start. Returns (target, mean score of each step, the last step's stats).
    """
    qs = queries(tokenizer, n)
    kwargs = {"max_new_tokens": new_tokens, "do_sample": True, "top_k": 0, "top_p": 1.0}
    sampled = torch.cat(trainer.generate(qs, return_prompt=False, **kwargs))
    target = torch.bincount(sampled).argsort(descending=True)[target_rank].item()
    mean_scores, stats = [], None
    for _ in range(steps):
        responses = trainer.generate(qs, return_prompt=False, **kwargs)
        scores = [(r == target).float().mean() for r in responses]
        stats = trainer.step(qs, responses, scores)
        mean_scores.append(stats["ppo/mean_scores"])
    return target, mean_scores, stats
