"""Rollout sampling (trainer/generation.py) draws exactly what HF generate draws, or defers to it."""

import pytest
import torch
from ppo_helpers import make_trainer, queries
from transformers import AutoModelForCausalLM

from rlhf_trainer.trainer.generation import fast_sampling_settings, sample_tokens
from rlhf_trainer.trainer.ppo import _pad


def left_padded_prompts(tokenizer):
    return _pad(queries(tokenizer, 4)[:3] + [torch.tensor([7])], tokenizer.pad_token_id, "left")


def both_ways(model, input_ids, attention_mask, cache="dynamic", seed=0, **kwargs):
    """(generate's new tokens, ours) from the same random state."""
    mask = attention_mask.long()
    torch.manual_seed(seed)
    expected = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)[:, input_ids.shape[1]:]
    settings = fast_sampling_settings(model, input_ids.shape[1], **kwargs)
    torch.manual_seed(seed)
    return expected, sample_tokens(model, input_ids, mask, settings, cache=cache)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_tokens_equal_hf_generate_including_eos_stops(tiny_model, tiny_tokenizer, name, cache):
    model = AutoModelForCausalLM.from_pretrained(tiny_model(name)).eval()
    input_ids, attention_mask = left_padded_prompts(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    free, _ = both_ways(model, input_ids, attention_mask, max_new_tokens=10, do_sample=False, pad_token_id=pad)
    eos = free[0, 3].item()  # a token greedy decoding reaches: rows stop (and pad) after it

    expected, ours = both_ways(model, input_ids, attention_mask, cache, max_new_tokens=10, do_sample=False,
                               pad_token_id=pad, eos_token_id=eos)
    assert (expected == pad).any()  # some row did stop early
    assert torch.equal(ours, expected)
    expected, ours = both_ways(model, input_ids, attention_mask, cache, max_new_tokens=10, do_sample=False,
                               pad_token_id=pad, eos_token_id=eos, min_new_tokens=6)
    assert (expected[:, :6] != eos).all()  # EOS held back for the first 6 tokens
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("settings", [
    {"top_k": 0, "top_p": 1.0},  # the PPO seed's settings
    {"top_k": 20, "top_p": 0.8, "temperature": 0.7},
    {"min_length": 12},  # generation_config's top_k=50 applies
])
def test_sampled_tokens_equal_hf_generate_from_the_same_seed(tiny_model, tiny_tokenizer, settings):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-llama")).eval()
    input_ids, attention_mask = left_padded_prompts(tiny_tokenizer)
    expected, ours = both_ways(model, input_ids, attention_mask, seed=3, max_new_tokens=8, do_sample=True,
                               pad_token_id=tiny_tokenizer.pad_token_id, **settings)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("unsupported", [{"repetition_penalty": 1.3}, {"num_beams": 2}, {"no_repeat_ngram_size": 2}])
def test_settings_it_does_not_implement_are_left_to_generate(tiny_model, tiny_tokenizer, unsupported, monkeypatch):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert fast_sampling_settings(model.pretrained_model, 4, max_new_tokens=4, **unsupported) is None
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: calls.append(1) or real(**kwargs))
    trainer.generate(queries(tiny_tokenizer, 2), max_new_tokens=4, **unsupported)
    assert calls == [1]


def test_ppo_generate_gives_the_same_responses_with_and_without_the_fast_loop(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    responses = []
    for fast in (True, False):
        trainer.fast_generation = fast
        torch.manual_seed(5)
        responses.append(trainer.generate(queries(tiny_tokenizer, 4), max_new_tokens=12, do_sample=True, top_k=0,
                                          return_prompt=False))
    assert all(torch.equal(a, b) for a, b in zip(*responses, strict=True))


def test_inverse_cdf_draw_samples_the_same_distribution_and_never_a_zero_probability_token():
    from rlhf_trainer.trainer.generation import inverse_cdf_draw

    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    counts = torch.bincount(inverse_cdf_draw(probs), minlength=6).float() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probs[0], atol=0.015)
