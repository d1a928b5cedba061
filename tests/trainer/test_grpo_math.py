"""GRPO's advantages and loss types on fixed tensors, against values worked out by hand (scalar math)."""

import math

import pytest
import torch

from rlhf_trainer.trainer.grpo_advantages import compute_advantages, nanstd
from rlhf_trainer.trainer.grpo_loss import (
    LossSettings,
    dapo_normaliser,
    entropy_threshold,
    grpo_loss,
    high_entropy_mask,
    k3_kl,
)

NAN = float("nan")

# Two completions of three tokens; the second's last token is padding.
LOGPS = [[-1.0, -2.0, -0.5], [-1.5, -1.0, -3.0]]
OLD = [[-1.2, -1.9, -0.5], [-1.5, -1.4, -2.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -0.5]


def tensors():
    return (torch.tensor(LOGPS, requires_grad=True), torch.tensor(OLD), torch.tensor(ADV),
            torch.tensor(MASK, dtype=torch.float32))


def ratio(i, t):
    return math.exp(LOGPS[i][t] - OLD[i][t])


def clipped_term(i, t, eps=0.2):
    r, a = ratio(i, t), ADV[i]
    return -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)


VALID = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
ROW_SUMS = [sum(clipped_term(i, t) for t in range(3) if MASK[i][t]) for i in range(2)]


def test_hand_worked_clipped_terms():
    # Row 0 (A = 1): ratios e^0.2 = 1.2214 (clipped to 1.2), e^-0.1 = 0.9048, 1 -> -(1.2 + 0.9048 + 1) = -3.1048.
    # Row 1 (A = -0.5): ratios 1, e^0.4 = 1.4918 (unclipped side is smaller) -> 0.5 + 0.7459 = 1.2459.
    assert pytest.approx([-3.104837, 1.245912], abs=1e-6) == ROW_SUMS


def loss_of(loss_type, **kwargs):
    logps, old, adv, mask = tensors()
    settings = LossSettings(loss_type=loss_type, max_completion_length=4, epsilon_high=kwargs.pop("eps_high", 0.2),
                            **kwargs.pop("settings", {}))
    return grpo_loss(settings, logps, old, adv, mask, **kwargs).loss.item()


def test_grpo_averages_each_sequences_token_mean():
    assert loss_of("grpo") == pytest.approx((ROW_SUMS[0] / 3 + ROW_SUMS[1] / 2) / 2, abs=1e-6)
    assert loss_of("grpo") == pytest.approx(-0.205995, abs=1e-6)


def test_bnpo_divides_by_the_micro_batch_tokens():
    assert loss_of("bnpo") == pytest.approx(sum(ROW_SUMS) / 5, abs=1e-6)


def test_dr_grpo_divides_by_rows_times_max_completion_length_not_the_longest_completion():
    assert loss_of("dr_grpo") == pytest.approx(sum(ROW_SUMS) / (2 * 4), abs=1e-6)  # not 2 * 3


def test_dapo_divides_by_the_window_normaliser():
    assert loss_of("dapo", window_normaliser=10.0) == pytest.approx(sum(ROW_SUMS) / 10, abs=1e-6)


def test_luspo_averages_sequence_sums():
    assert loss_of("luspo") == pytest.approx(sum(ROW_SUMS) / 2, abs=1e-6)


def test_gradient_accumulation_divides_every_loss_but_dapos():
    for loss_type in ("grpo", "bnpo", "dr_grpo", "luspo", "sapo"):
        assert loss_of(loss_type, accumulation=4) == pytest.approx(loss_of(loss_type) / 4, abs=1e-7)
    assert loss_of("dapo", accumulation=4, window_normaliser=10.0) == pytest.approx(sum(ROW_SUMS) / 10, abs=1e-6)


def test_cispo_caps_the_detached_weight_and_keeps_log_prob_gradients():
    expected = sum(-min(ratio(i, t), 5.0) * ADV[i] * LOGPS[i][t] for i, t in VALID)
    assert loss_of("cispo", eps_high=5.0, window_normaliser=5.0) == pytest.approx(expected / 5, abs=1e-6)
    # The default epsilon_high (0.2) caps every weight at 0.2 (a trap: set ~5.0).
    capped = sum(-0.2 * ADV[i] * LOGPS[i][t] for i, t in VALID)
    assert loss_of("cispo", window_normaliser=5.0) == pytest.approx(capped / 5, abs=1e-6)


def test_sapo_uses_a_smooth_gate_with_a_temperature_per_advantage_sign():
    def term(i, t):
        tau = 1.0 if ADV[i] > 0 else 1.05
        return -ADV[i] * 4 / (1 + math.exp(-tau * (ratio(i, t) - 1))) / tau

    expected = (sum(term(0, t) for t in range(3)) / 3 + sum(term(1, t) for t in range(2)) / 2) / 2
    assert loss_of("sapo") == pytest.approx(expected, abs=1e-6)


def test_delta_bounds_the_unclipped_ratio():
    # Row 0, token 0: ratio 1.2214, A = 1: the unclipped side becomes 1.1 < 1.2. Row 1, token 1: ratio 1.4918,
    # A = -0.5: min(1.1 * -0.5, 1.2 * -0.5) = -0.6, so its term is 0.6 instead of 0.7459 (bounded).
    with_delta = loss_of("bnpo", settings={"delta": 1.1})
    row0 = -(1.1 + math.exp(-0.1) + 1.0)
    row1 = 0.5 + 0.6
    assert with_delta == pytest.approx((row0 + row1) / 5, abs=1e-6)


def test_sequence_level_ratio_is_the_masked_mean_log_ratio():
    logps, old, adv, mask = tensors()
    out = grpo_loss(LossSettings(loss_type="grpo", importance_sampling_level="sequence"), logps, old, adv, mask)
    expected = [math.exp((0.2 - 0.1 + 0.0) / 3), math.exp((0.0 + 0.4) / 2)]
    assert out.ratio.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_first_pass_ratio_is_exactly_one_and_grpo_loss_is_zero_for_zero_mean_advantages():
    logps, _, _, mask = tensors()
    out = grpo_loss(LossSettings(loss_type="grpo"), logps, None, torch.tensor([0.7, -0.7]),
                    torch.ones_like(mask))
    assert torch.equal(out.ratio, torch.ones_like(out.ratio))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)
    out.loss.backward()
    assert logps.grad.abs().sum() > 0  # the gradient of ratio * A still flows


def test_k3_kl_and_its_bias_correction():
    ref = torch.tensor([[-1.1, -2.0, -0.4], [-1.0, -1.2, -3.0]])
    expected = [[math.exp(r - lp) - (r - lp) - 1 for r, lp in zip(rr, lr, strict=True)]
                for rr, lr in zip(ref.tolist(), LOGPS, strict=True)]
    assert torch.allclose(k3_kl(ref, torch.tensor(LOGPS)), torch.tensor(expected), atol=1e-6)
    assert k3_kl(torch.tensor(LOGPS), torch.tensor(LOGPS)).abs().max().item() == 0.0

    logps, old, adv, mask = tensors()
    plain = grpo_loss(LossSettings(loss_type="bnpo", beta=0.1, use_bias_correction_kl=False), logps, old, adv, mask,
                      ref_logps=ref)
    corrected = grpo_loss(LossSettings(loss_type="bnpo", beta=0.1), logps, old, adv, mask, ref_logps=ref)
    kl_sum = sum(expected[i][t] for i, t in VALID)
    weighted_kl_sum = sum(ratio(i, t) * expected[i][t] for i, t in VALID)
    assert plain.loss.item() == pytest.approx((sum(ROW_SUMS) + 0.1 * kl_sum) / 5, abs=1e-6)
    assert corrected.loss.item() == pytest.approx((sum(ROW_SUMS) + 0.1 * weighted_kl_sum) / 5, abs=1e-6)


def test_bias_corrected_kl_changes_the_gradient_even_on_policy():
    ref = torch.tensor([[-1.1, -2.0, -0.4], [-1.0, -1.2, -3.0]])
    grads = []
    for corrected in (False, True):
        logps, _, _, mask = tensors()
        settings = LossSettings(loss_type="bnpo", beta=1.0, use_bias_correction_kl=corrected)
        grpo_loss(settings, logps, None, torch.zeros(2), mask, ref_logps=ref).loss.backward()
        grads.append(logps.grad.clone())
    # d/dlp of k3 is 1 - exp(ref - lp); with ρ = exp(lp - lp.detach()) it gains + k3 (value 1, gradient 1).
    k3 = k3_kl(ref, torch.tensor(LOGPS))
    assert torch.allclose(grads[1] - grads[0], k3 * torch.tensor(MASK) / 5, atol=1e-6)


def test_off_policy_mask_drops_drifted_negative_advantage_sequences():
    logps, old, adv, mask = tensors()
    # Row 1 (A < 0): mean(old - lp) = (0 + -0.4) / 2 = -0.2; row 0: (-0.2 + 0.1 + 0) / 3. Use behaviour log-probs
    # that drift row 1 by +1 on average.
    behaviour = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, 0.0, -3.0]])
    out = grpo_loss(LossSettings(loss_type="bnpo", off_policy_mask_threshold=0.5), logps, old, adv, mask,
                    behaviour_logps=behaviour)
    assert out.off_policy_mask.flatten().tolist() == [1.0, 0.0]
    assert out.loss.item() == pytest.approx(ROW_SUMS[0] / 5, abs=1e-6)


def test_high_entropy_mask_keeps_the_top_quantile():
    entropies = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]])
    mask = torch.tensor(MASK, dtype=torch.float32)
    valid = entropies[mask.bool()]  # 0.1 0.9 0.5 0.7 0.3
    threshold = entropy_threshold(valid, 0.4)  # the 0.6 quantile of 5 values: 0.3 + ... linear -> 0.58
    assert threshold.item() == pytest.approx(0.58, abs=1e-6)
    assert high_entropy_mask(entropies, mask, threshold).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_dapo_normaliser_spans_the_accumulation_window():
    # 120 active tokens over 2 processes, GA 4, one generation per 2 optimizer steps (steps_per_generation 8).
    assert dapo_normaliser(120, 2, 4, 8) == 30.0


# ---- advantages ----

def advantages(rows, g, scale="group", aggregation="sum_then_normalize", weights=None):
    rewards = torch.tensor(rows, dtype=torch.float32)
    if rewards.dim() == 1:
        rewards = rewards[:, None]
    w = torch.tensor(weights or [1.0] * rewards.shape[1])
    return compute_advantages(rewards, w, g, scale, aggregation)


def test_group_scaling_uses_the_unbiased_group_std():
    out = advantages([1, 0, 0, 1, 2, 2, 2, 2], 4)
    sigma = math.sqrt(4 * 0.25 / 3)  # unbiased: a population std would rescale by sqrt(4/3)
    expected = 0.5 / (sigma + 1e-4)
    assert out.advantages.tolist() == pytest.approx([expected, -expected, -expected, expected, 0, 0, 0, 0], abs=1e-6)
    assert out.frac_zero_std == 0.5


def test_batch_scaling_and_no_scaling():
    batch = advantages([1, 0, 0, 1, 2, 2, 2, 2], 4, scale="batch")
    sigma = math.sqrt((2 * 0.0625 + 2 * 1.5625 + 4 * 0.5625) / 7)  # mean 1.25
    a = 0.5 / (sigma + 1e-4)
    assert batch.advantages.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], abs=1e-6)
    assert batch.frac_zero_std == 0.0
    none = advantages([1, 0, 0, 1, 2, 2, 2, 2], 4, scale="none")
    assert none.advantages.tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert none.frac_zero_std == 0.5  # σ of the group still feeds the metric


def test_all_equal_group_gives_exactly_zero_advantage_and_std():
    values = [0.1] * 8 + [0.7] * 8  # non-dyadic: a plain fp32 mean can be an ulp off
    out = advantages(values, 8)
    assert torch.equal(out.advantages, torch.zeros(16))
    assert out.frac_zero_std == 1.0
    assert nanstd(torch.full((8,), 0.1)).item() == 0.0


def test_none_rewards_are_skipped_and_unscorable_rows_get_zero_advantage():
    rows = [[1.0, NAN], [0.0, 2.0], [NAN, NAN], [1.0, 1.0]]  # row 2: every function returned None
    out = advantages(rows, 4, weights=[1.0, 0.5])
    r = [1.0, 1.0, NAN, 1.5]  # a None term counts as 0, no renormalisation
    assert out.rewards.tolist()[:2] == [1.0, 1.0] and math.isnan(out.rewards[2].item())
    mean = (1.0 + 1.0 + 1.5) / 3
    sigma = math.sqrt(((1 - mean) ** 2 * 2 + (1.5 - mean) ** 2) / 2)
    expected = [(v - mean) / (sigma + 1e-4) for v in r]
    expected[2] = 0.0
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)


def test_normalize_then_sum_standardises_each_function_then_the_batch():
    rows = [[1.0, 0.0], [0.0, 0.0], [1.0, 4.0], [0.0, 2.0]]
    out = advantages(rows, 2, aggregation="normalize_then_sum", weights=[1.0, 2.0])
    s = math.sqrt(0.5)  # unbiased std of a pair {a, b} is |a - b| / sqrt(2)
    f1 = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4), -0.5 / (s + 1e-4)]
    f2 = [0.0, 0.0, 1.0 / (2 * s + 1e-4), -1.0 / (2 * s + 1e-4)]
    summed = [a + 2 * b for a, b in zip(f1, f2, strict=True)]
    mean = sum(summed) / 4
    sigma = math.sqrt(sum((v - mean) ** 2 for v in summed) / 3)
    assert out.advantages.tolist() == pytest.approx([(v - mean) / (sigma + 1e-4) for v in summed], abs=1e-5)
