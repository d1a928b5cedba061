"""The PPO math of rlhf_trainer.core against numbers worked out by hand (or by plain float64 loops)."""

import math

import numpy as np
import pytest
import torch
from transformers.generation import TopKLogitsWarper, TopPLogitsWarper

from rlhf_trainer import core
from rlhf_trainer.core import (
    WANDB_PADDING,
    AdaptiveKLController,
    FixedKLController,
    LengthSampler,
    PPODecorators,
    RunningMoments,
    add_suffix,
    average_torch_dicts,
    clip_by_value,
    clipped_policy_loss,
    clipped_value_loss,
    convert_to_scalar,
    entropy_from_logits,
    flatten_dict,
    gae,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    pad_to_size,
    randn_tensor,
    respond_to_batch,
    set_seed,
    stack_dicts,
    stats_to_np,
    top_k_top_p_filtering,
    whiten,
)

# Every public name of TRL v0.7's trl.core (tags v0.7.1-v0.7.11).
TRL_V07_CORE_NAMES = [
    "WANDB_PADDING", "top_k_top_p_filtering", "flatten_dict", "convert_to_scalar", "stack_dicts", "add_suffix",
    "pad_to_size", "logprobs_from_logits", "whiten", "masked_mean", "masked_var", "masked_whiten", "clip_by_value",
    "entropy_from_logits", "average_torch_dicts", "stats_to_np", "respond_to_batch", "set_seed", "LengthSampler",
    "PPODecorators", "randn_tensor",
]


def test_every_public_name_of_trl_v07_core_is_here():
    assert [name for name in TRL_V07_CORE_NAMES if not hasattr(core, name)] == []


def test_logprobs_of_labels_match_log_softmax():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # p = (1/4, 3/4), then (1/2, 1/2)
    labels = torch.tensor([[1, 0]])
    assert torch.allclose(logprobs_from_logits(logits, labels), torch.tensor([[math.log(0.75), math.log(0.5)]]))
    assert torch.allclose(logprobs_from_logits(logits, labels, gather=False), logits.log_softmax(-1))


def test_masked_mean_and_unbiased_var_ignore_masked_values():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # ((1)^2 + 0 + (1)^2) / (3 - 1)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    rows = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert masked_mean(rows, torch.tensor([[1.0, 0.0], [1.0, 1.0]]), axis=1).tolist() == [1.0, 6.0]


def test_masked_var_of_one_element_is_an_error():
    with pytest.raises(ValueError, match="at least two"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))


def test_masked_whiten_standardises_and_can_keep_the_mean():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    white = masked_whiten(values, mask)
    assert white[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)  # mean 2, unbiased std 1
    assert masked_whiten(values, mask, shift_mean=False)[:3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


def test_whiten_by_hand():
    white = whiten(torch.tensor([0.0, 4.0]))  # mean 2, unbiased variance 8
    assert white.tolist() == pytest.approx([-2 / math.sqrt(8), 2 / math.sqrt(8)])
    assert whiten(torch.tensor([0.0, 4.0]), shift_mean=False).tolist() == pytest.approx(
        [2 - 2 / math.sqrt(8), 2 + 2 / math.sqrt(8)])
    rows = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # all elements at once: mean 3, unbiased variance 14 / 3
    assert whiten(rows).flatten().tolist() == pytest.approx([(v - 3) / math.sqrt(14 / 3) for v in (1, 2, 3, 6)])


# What TRL v0.7's tests/test_core.py checks, in our words: on [1, 2, 3, 4] with the middle two selected, the masked
# statistics are torch's statistics of [2, 3], and masked_whiten is whiten of [2, 3].
TRL_VALUES, TRL_MASK = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])


def test_masked_mean_and_var_are_torchs_on_the_selected_values():
    selected = TRL_VALUES[1:3]
    assert torch.equal(masked_mean(TRL_VALUES, TRL_MASK), torch.mean(selected))
    assert torch.equal(masked_var(TRL_VALUES, TRL_MASK), torch.var(selected))


def test_masked_whiten_is_whiten_of_the_selected_values():
    difference = whiten(TRL_VALUES[1:3]) - masked_whiten(TRL_VALUES, TRL_MASK)[1:3]
    assert difference.abs().max().item() == pytest.approx(0.0, abs=1e-6)


def test_whiten_gives_mean_zero_and_unit_variance_or_keeps_the_mean():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 5
    white = whiten(values)
    assert white.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert white.var().item() == pytest.approx(1.0, abs=1e-6)
    kept = whiten(values, shift_mean=False)
    assert kept.mean().item() == pytest.approx(values.mean().item())
    assert kept.var().item() == pytest.approx(1.0, abs=1e-6)


def test_entropy_of_uniform_and_certain_distributions():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_clip_by_value_takes_tensor_bounds():
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert clip_by_value(x, torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 2.0])).tolist() == [-1.0, 0.5, 2.0]
    assert clip_by_value(x, tensor_min=-1.0, tensor_max=1.0).tolist() == [-1.0, 0.5, 1.0]  # TRL's keyword names


def test_kl_penalty_modes():
    lp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    assert kl_per_token(lp, ref, "kl").tolist() == [1.0, -2.0]
    assert kl_per_token(lp, ref, "abs").tolist() == [1.0, 2.0]
    assert kl_per_token(lp, ref, "mse").tolist() == [0.5, 2.0]
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    exact = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_per_token(p.log(), q.log(), "full").item() == pytest.approx(exact)
    with pytest.raises(ValueError, match="kl_penalty"):
        kl_per_token(lp, ref, "reverse")


def gae_by_hand(values, rewards, gamma, lam):
    """Textbook GAE in float64 Python over one contiguous episode."""
    advantages, last = [0.0] * len(values), 0.0
    for t in reversed(range(len(values))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        last = rewards[t] + gamma * next_value - values[t] + gamma * lam * last
        advantages[t] = last
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_gae_matches_the_textbook_recursion():
    values, rewards = [0.5, -0.2, 0.3], [0.1, 0.0, 1.0]
    expected_adv, expected_ret = gae_by_hand(values, rewards, 0.9, 0.8)
    # a second, right-padded row: the padding must not leak in
    v = torch.tensor([values, [0.4, 0.7, 9.0]], dtype=torch.float64)
    r = torch.tensor([rewards, [0.0, 2.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    advantages, returns = gae(v, r, mask, 0.9, 0.8)
    assert advantages[0].tolist() == pytest.approx(expected_adv)
    assert returns[0].tolist() == pytest.approx(expected_ret)
    assert advantages[1].tolist() == pytest.approx([*gae_by_hand([0.4, 0.7], [0.0, 2.0], 0.9, 0.8)[0], 0.0])


def test_gae_skips_masked_holes_inside_a_response():
    v = torch.tensor([[0.5, 7.0, 0.3]], dtype=torch.float64)
    r = torch.tensor([[0.1, 5.0, 1.0]], dtype=torch.float64)
    advantages, _ = gae(v, r, torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64), 0.9, 0.8)
    expected, _ = gae_by_hand([0.5, 0.3], [0.1, 1.0], 0.9, 0.8)
    assert advantages[0].tolist() == pytest.approx([expected[0], 0.0, expected[1]])


def test_clipped_losses_match_float64_loops():
    lp = torch.tensor([[-1.0, -0.5, -2.0]], dtype=torch.float64)
    old = torch.tensor([[-1.2, -0.1, -2.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, ratio, clipfrac = clipped_policy_loss(lp, old, adv, mask, cliprange=0.2)
    by_hand, clipped = [], 0
    for t in range(2):
        rho = math.exp(lp[0, t].item() - old[0, t].item())
        a = adv[0, t].item()
        by_hand.append(max(-a * rho, -a * min(max(rho, 0.8), 1.2)))
        clipped += -a * min(max(rho, 0.8), 1.2) > -a * rho
    assert loss.item() == pytest.approx(sum(by_hand) / 2)
    assert clipfrac.item() == pytest.approx(clipped / 2)
    assert ratio[0, 0].item() == pytest.approx(math.exp(0.2))

    values = torch.tensor([[1.0, 0.0, 4.0]], dtype=torch.float64)
    old_values = torch.tensor([[0.5, 0.1, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[2.0, -1.0, 0.0]], dtype=torch.float64)
    vf_loss, vf_clipfrac = clipped_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # token 0: v_clip = 0.7 -> max(1.0, 1.69); token 1: v_clip = 0.0 (inside) -> max(1, 1)
    assert vf_loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert vf_clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_arithmetic():
    ctl = AdaptiveKLController(0.2, target=6, horizon=10000)
    ctl.update(9.0, n_steps=256)  # error clipped from 0.5 to 0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    ctl.update(5.4, n_steps=100)  # error -0.1
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    fixed = FixedKLController(0.3)
    fixed.update(100.0, n_steps=1000)
    assert fixed.value == 0.3


def test_running_moments_track_everything_seen():
    running = RunningMoments()
    assert running.update(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))
    running.update(torch.tensor([4.0, 5.0]))
    assert running.mean == pytest.approx(3.0)
    assert running.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))


def test_flatten_stack_and_numpy_helpers():
    assert flatten_dict({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}
    stacked = stack_dicts([{"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0])}])
    assert stacked["x"].tolist() == [[1.0, 2.0], [3.0, WANDB_PADDING]]
    converted = stats_to_np({"s": torch.tensor(2.5), "v": torch.tensor([1.0, 2.0]), "f": 1.0})
    assert converted["s"] == 2.5 and isinstance(converted["v"], np.ndarray) and converted["f"] == 1.0


def test_stack_dicts_flattens_and_takes_integer_tensors():
    stacked = stack_dicts([{"ids": torch.tensor([[5, 6], [7, 8]])}, {"ids": torch.tensor([9])}])
    assert stacked["ids"].tolist() == [[5, 6, 7, 8], [9, -1, -1, -1]]


def test_stats_to_np_keeps_dtypes_and_makes_numbers_floats():
    converted = stats_to_np({
        "f64": torch.tensor([0.1, 0.2], dtype=torch.float64), "i64": torch.tensor([1, 2]),
        "bf16": torch.tensor([1.5], dtype=torch.bfloat16), "zero_d": torch.tensor(3), "n": 4, "np": np.float32(0.5),
        "name": "policy",
    })
    assert converted["f64"].dtype == np.float64 and converted["f64"].tolist() == [0.1, 0.2]
    assert converted["i64"].dtype == np.int64
    assert converted["bf16"].dtype == np.float32 and converted["bf16"].tolist() == [1.5]
    assert [type(converted[k]) for k in ("zero_d", "n", "np")] == [float, float, float]
    assert converted["name"] == "policy"


def test_convert_to_scalar_unwraps_one_element_values_only():
    converted = convert_to_scalar({"a": torch.tensor(1.5), "b": np.array([2.0]), "c": torch.tensor([1.0, 2.0]),
                                   "d": np.array(7), "e": "text"})
    assert (converted["a"], converted["b"], converted["d"], converted["e"]) == (1.5, 2.0, 7, "text")
    assert type(converted["a"]) is float and torch.equal(converted["c"], torch.tensor([1.0, 2.0]))


def test_add_suffix_and_average_torch_dicts():
    assert add_suffix({"loss": 1, "kl": 2}, "/mean") == {"loss/mean": 1, "kl/mean": 2}
    averaged = average_torch_dicts([{"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(1.0)},
                                    {"a": torch.tensor([3.0, 6.0]), "b": torch.tensor(0.0)}])
    assert averaged["a"].tolist() == [2.0, 4.0] and averaged["b"].item() == 0.5


def test_pad_to_size_pads_the_end_of_a_dimension():
    ids = torch.tensor([[1, 2]])
    assert pad_to_size(ids, 4).tolist() == [[1, 2, 50256, 50256]]  # GPT-2's EOS by default
    assert pad_to_size(ids, 3, padding=0).tolist() == [[1, 2, 0]]
    assert pad_to_size(ids, 2).tolist() == [[1, 2]]
    assert pad_to_size(ids, 2, dim=0, padding=9).tolist() == [[1, 2], [9, 9]]
    with pytest.raises(ValueError, match="already 2 long"):
        pad_to_size(ids, 1)


def test_top_k_keeps_the_k_best():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = top_k_top_p_filtering(logits, top_k=2)
    assert torch.isinf(kept).tolist() == [[True, False, False, True]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    kept = top_k_top_p_filtering(probs.log(), top_p=0.6)  # 0.5 alone is below 0.6, 0.5 + 0.3 reaches it
    assert torch.isinf(kept).tolist() == [[True, False, False]]
    assert not torch.isinf(top_k_top_p_filtering(probs.log(), top_p=1.0)).any()


@pytest.mark.parametrize(("top_k", "top_p", "keep"), [(0, 1.0, 1), (3, 1.0, 1), (0, 0.5, 1), (0, 0.05, 3),
                                                       (5, 0.8, 1), (2, 0.9, 4), (50, 0.3, 1)])
def test_top_k_top_p_filtering_equals_the_transformers_warpers(top_k, top_p, keep):
    # TRL v0.7's version applied transformers' top-k warper, then its top-p warper
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(top_k + keep), dtype=torch.float64) * 3
    expected = logits
    if top_k > 0:
        expected = TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=keep)(None, expected)
    expected = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=keep)(None, expected)
    assert torch.equal(top_k_top_p_filtering(logits, top_k, top_p, min_tokens_to_keep=keep), expected)


def test_length_sampler_draws_from_a_half_open_range():
    set_seed(0)
    sampler = LengthSampler(2, 5)
    assert {sampler() for _ in range(200)} == {2, 3, 4}
    with pytest.raises(ValueError, match="min_value < max_value"):
        LengthSampler(5, 5)


def test_set_seed_makes_sampling_repeatable():
    set_seed(3)
    first = (torch.rand(2).tolist(), np.random.rand(), LengthSampler(0, 1000)())
    set_seed(3)
    assert (torch.rand(2).tolist(), np.random.rand(), LengthSampler(0, 1000)()) == first


class _Bigram(torch.nn.Module):
    """A causal 'model' whose next token is always (last token + 1) % 10."""

    def forward(self, input_ids):
        return (torch.nn.functional.one_hot((input_ids + 1) % 10, 10).float() * 50,)


def test_respond_to_batch_samples_new_tokens_only():
    queries = torch.tensor([[1, 2], [7, 8]])
    responses = respond_to_batch(_Bigram(), queries, txt_len=3, top_k=1)
    assert responses.tolist() == [[3, 4, 5], [9, 0, 1]]


def test_ppo_decorators_free_memory_after_the_block_only_when_switched_on(monkeypatch):
    calls = []
    monkeypatch.setattr(core, "free_accelerator_memory", lambda: calls.append("freed"))
    monkeypatch.setattr(PPODecorators, "optimize_device_cache", False)
    with PPODecorators.empty_device_cache():
        pass
    assert calls == []

    PPODecorators.optimize_device_cache = True
    with PPODecorators.empty_device_cache():
        assert calls == []  # after the block, not before
    assert calls == ["freed"]

    @PPODecorators.empty_device_cache()
    def forward_pass(x):
        return x + 1

    assert forward_pass(1) == 2 and forward_pass(2) == 3 and calls == ["freed"] * 3
    with pytest.raises(RuntimeError), PPODecorators.empty_device_cache():
        raise RuntimeError("out of memory")
    assert len(calls) == 4  # an out-of-memory error is when freeing matters most


@pytest.mark.skipif(not torch.accelerator.is_available(), reason="needs an accelerator")
def test_ppo_decorators_hand_cached_accelerator_memory_back(monkeypatch):
    monkeypatch.setattr(PPODecorators, "optimize_device_cache", True)
    device = torch.accelerator.current_accelerator()
    with PPODecorators.empty_device_cache():
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        del block
        assert torch.accelerator.memory_reserved() >= 64 * 2**20  # freed by Python, still cached by torch
    assert torch.accelerator.memory_reserved() < 64 * 2**20


def test_randn_tensor_draws_what_the_generators_draw():
    noise = randn_tensor((2, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(noise, torch.randn((2, 3), generator=torch.Generator().manual_seed(7)))
    assert noise.device.type == "cpu" and noise.dtype == torch.float32
    # one generator per row: each row is what its own generator draws for a batch of one
    rows = randn_tensor((2, 3), generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
                        dtype=torch.float64)
    for i, seed in enumerate((1, 2)):
        expected = torch.randn((1, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.equal(rows[i : i + 1], expected)
    assert torch.equal(randn_tensor((2, 3), generator=[torch.Generator().manual_seed(7)]), noise)
    with pytest.raises(ValueError, match="one per row"):
        randn_tensor((3, 2), generator=[torch.Generator(), torch.Generator()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_randn_tensor_with_a_cpu_generator_gives_the_same_noise_on_the_gpu():
    noise = randn_tensor((4, 5), generator=torch.Generator().manual_seed(3), device="cuda")
    assert noise.device.type == "cuda"
    assert torch.equal(noise.cpu(), torch.randn((4, 5), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="cuda generator cannot make a cpu tensor"):
        randn_tensor((2,), generator=torch.Generator(device="cuda"), device="cpu")
