"""The PPO math of rlhf_trainer.core against numbers worked out by hand (or by plain float64 loops)."""

import math

import numpy as np
import pytest
import torch

from rlhf_trainer.core import (
    AdaptiveKLController,
    FixedKLController,
    LengthSampler,
    RunningMoments,
    clip_by_value,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    flatten_dict,
    gae,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    respond_to_batch,
    set_seed,
    stack_dicts,
    stats_to_np,
    top_k_top_p_filtering,
)


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


def test_entropy_of_uniform_and_certain_distributions():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_clip_by_value_takes_tensor_bounds():
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert clip_by_value(x, torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 2.0])).tolist() == [-1.0, 0.5, 2.0]


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
    assert stacked["x"].shape == (2, 2) and math.isnan(stacked["x"][1, 1])
    converted = stats_to_np({"s": torch.tensor(2.5), "v": torch.tensor([1.0, 2.0]), "f": 1.0})
    assert converted["s"] == 2.5 and isinstance(converted["v"], np.ndarray) and converted["f"] == 1.0


def test_top_k_keeps_the_k_best():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = top_k_top_p_filtering(logits, top_k=2)
    assert torch.isinf(kept).tolist() == [[True, False, False, True]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    kept = top_k_top_p_filtering(probs.log(), top_p=0.6)  # 0.5 alone is below 0.6, 0.5 + 0.3 reaches it
    assert torch.isinf(kept).tolist() == [[True, False, False]]
    assert not torch.isinf(top_k_top_p_filtering(probs.log(), top_p=1.0)).any()


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
