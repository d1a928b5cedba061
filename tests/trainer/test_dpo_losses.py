"""Each DPO loss type against values worked out by hand on fixed numbers (docs/algorithms/dpo.md, step 4).

Two pairs throughout. Pair 0: policy sums chosen -10, rejected -12; reference -11, -11, so rho_c = 1, rho_r = -1,
delta = 2. Pair 1: policy -20, -18; reference -19, -19, so rho_c = -1, rho_r = 1, delta = -2. Completions of 4 and
2 tokens (pair 0), 5 and 5 (pair 1). beta = 0.1 unless a test says otherwise.
"""

import math

import pytest
import torch

from rlhf_trainer.trainer.dpo_losses import (
    LOSSES,
    LossSettings,
    PairTerms,
    f_divergence_score,
    preference_loss,
    wpo_weights,
)


def softplus(x):
    return math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def terms(f_divergence_type="reverse_kl", alpha=0.5, nll=2.5):
    return PairTerms(
        chosen_logps=torch.tensor([-10.0, -20.0]), rejected_logps=torch.tensor([-12.0, -18.0]),
        ref_chosen_logps=torch.tensor([-11.0, -19.0]), ref_rejected_logps=torch.tensor([-11.0, -19.0]),
        chosen_lengths=torch.tensor([4, 5]), rejected_lengths=torch.tensor([2, 5]),
        chosen_token_nll=torch.tensor(nll), f_divergence_type=f_divergence_type, f_alpha_divergence_coef=alpha)


def loss(name, **settings):
    return LOSSES[name](terms(), LossSettings(**settings)).tolist()


def test_sigmoid_is_minus_logsigmoid_of_beta_delta():
    # -log sigmoid(0.2) = log(1 + e^-0.2); pair 1: -log sigmoid(-0.2) = log(1 + e^0.2)
    assert loss("sigmoid") == pytest.approx([softplus(-0.2), softplus(0.2)], rel=1e-6)


def test_sigmoid_and_hinge_ignore_label_smoothing():
    assert loss("sigmoid", label_smoothing=0.3) == loss("sigmoid")
    assert loss("hinge", label_smoothing=0.3) == loss("hinge")


def test_hinge():
    assert loss("hinge") == pytest.approx([0.8, 1.2], rel=1e-6)  # max(0, 1 - 0.2), max(0, 1 + 0.2)
    assert loss("hinge", beta=1.0) == pytest.approx([0.0, 3.0])


def test_ipo_uses_per_token_scores_and_target_one_over_two_beta():
    # pair 0: 1/4 - (-1)/2 = 0.75; target 1/(2*0.1) = 5 -> (0.75 - 5)^2; pair 1: -1/5 - 1/5 = -0.4 -> (-5.4)^2
    assert loss("ipo") == pytest.approx([(0.75 - 5) ** 2, (-0.4 - 5) ** 2], rel=1e-6)


def test_robust():
    eps = 0.1
    expected = [((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps) for z in (0.2, -0.2)]
    # -(1-eps) log sig(z) + eps log sig(-z) = (1-eps) softplus(-z) - eps softplus(z)
    assert loss("robust", label_smoothing=eps) == pytest.approx(expected, rel=1e-6)
    assert loss("robust", label_smoothing=0.0) == pytest.approx(loss("sigmoid"), rel=1e-6)


def test_exo_pair():
    eps = 1e-3
    expected = [sig(z) * (-softplus(-z) - math.log(1 - eps)) + sig(-z) * (-softplus(z) - math.log(eps))
                for z in (0.2, -0.2)]
    assert loss("exo_pair", label_smoothing=eps) == pytest.approx(expected, rel=1e-6)


def test_nca_pair():
    # pair 0: r_c = 0.1, r_r = -0.1; pair 1: r_c = -0.1, r_r = 0.1
    expected = [softplus(-rc) + 0.5 * softplus(rc) + 0.5 * softplus(rr) for rc, rr in ((0.1, -0.1), (-0.1, 0.1))]
    assert loss("nca_pair") == pytest.approx(expected, rel=1e-6)


def test_bco_pair():
    expected = [softplus(-rc) + softplus(rr) for rc, rr in ((0.1, -0.1), (-0.1, 0.1))]
    assert loss("bco_pair") == pytest.approx(expected, rel=1e-6)


def test_sppo_hard():
    # (rho_c - 5)^2 + (rho_r + 5)^2
    assert loss("sppo_hard") == pytest.approx([(1 - 5) ** 2 + (-1 + 5) ** 2, (-1 - 5) ** 2 + (1 + 5) ** 2])


def test_aot_sorts_policy_and_reference_gaps_separately():
    # policy gaps: 2, -2 -> sorted -2, 2; reference gaps 0, 0 -> delta = -2, 2 (pair order lost: sorted)
    eps = 0.1
    expected = [(1 - eps) * softplus(-z) + eps * softplus(z) for z in (-0.2, 0.2)]
    assert loss("aot", label_smoothing=eps) == pytest.approx(expected, rel=1e-6)


def test_aot_unpaired_sorts_chosen_and_rejected_ratios_separately():
    # rho_c sorted: -1, 1; rho_r sorted: -1, 1 -> delta 0, 0
    assert loss("aot_unpaired") == pytest.approx([math.log(2)] * 2, rel=1e-6)


def pairs(policy_gaps, ref_gaps):
    n = len(policy_gaps)
    return PairTerms(torch.tensor(policy_gaps), torch.zeros(n), torch.tensor(ref_gaps), torch.zeros(n),
                     torch.ones(n), torch.ones(n), torch.tensor(0.0))


def test_aot_sorting_mixes_pairs_within_the_micro_batch():
    # alone: pair A (policy gap 2, reference gap 0) -> delta 2; pair B (0, 3) -> delta -3. Together the sorted
    # gaps are [0, 2] and [0, 3] -> delta 0 and -1: neither pair's own delta.
    settings = LossSettings(beta=1.0)
    alone = [LOSSES["aot"](pairs([2.0], [0.0]), settings).item(), LOSSES["aot"](pairs([0.0], [3.0]), settings).item()]
    assert alone == pytest.approx([softplus(-2), softplus(3)], rel=1e-6)
    together = LOSSES["aot"](pairs([2.0, 0.0], [0.0, 3.0]), settings).tolist()
    assert together == pytest.approx([softplus(0), softplus(1)], rel=1e-6)


def test_apo_zero_and_apo_down():
    assert loss("apo_zero") == pytest.approx([1 - sig(0.1) + sig(-0.1), 1 - sig(-0.1) + sig(0.1)], rel=1e-6)
    assert loss("apo_down") == pytest.approx([sig(0.1) + 1 - sig(0.2), sig(-0.1) + 1 - sig(-0.2)], rel=1e-6)


def test_discopop():
    tau = 0.05
    expected = [(1 - sig(z / tau)) * softplus(-z) + sig(z / tau) * math.exp(-z) for z in (0.2, -0.2)]
    assert loss("discopop", discopop_tau=tau) == pytest.approx(expected, rel=1e-6)


def test_sft_is_the_chosen_token_nll_for_every_pair():
    assert loss("sft") == pytest.approx([2.5, 2.5])


def test_sigmoid_norm_divides_by_completion_lengths():
    # pair 0: 1/4 + 1/2 = 0.75; pair 1: -0.2 - 0.2 = -0.4
    assert loss("sigmoid_norm") == pytest.approx([softplus(-0.075), softplus(0.04)], rel=1e-6)


def test_every_loss_type_has_a_test_here():
    tested = {"sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
    assert set(LOSSES) == tested


def test_loss_weights_combine_means_over_pairs():
    # RPO: sigmoid + 0.5 * sft
    combined = preference_loss(terms(), LossSettings(), ["sigmoid", "sft"], [1.0, 0.5]).item()
    assert combined == pytest.approx((softplus(-0.2) + softplus(0.2)) / 2 + 0.5 * 2.5, rel=1e-6)
    default = preference_loss(terms(), LossSettings(), ["sigmoid", "hinge"]).item()
    assert default == pytest.approx((softplus(-0.2) + softplus(0.2)) / 2 + 1.0, rel=1e-6)


def test_pair_weights_scale_each_pair():
    weighted = preference_loss(terms(), LossSettings(), ["hinge"], pair_weights=torch.tensor([0.5, 0.0])).item()
    assert weighted == pytest.approx(0.8 * 0.5 / 2, rel=1e-6)


@pytest.mark.parametrize(("kind", "expected"), [
    ("reverse_kl", 1.0),
    ("forward_kl", 1 - math.exp(-1)),
    ("js_divergence", math.log(2) - softplus(-1)),
    ("alpha_divergence", (math.exp(-0.5) - 1) / -0.5),
])
def test_f_divergence_scores(kind, expected):
    assert f_divergence_score(torch.tensor([1.0]), kind, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_f_divergence_changes_delta_of_sigmoid():
    # forward KL: u_c = 1 - e^-1, u_r = 1 - e^1 on pair 0
    delta = (1 - math.exp(-1)) - (1 - math.exp(1))
    value = LOSSES["sigmoid"](terms("forward_kl"), LossSettings())[0].item()
    assert value == pytest.approx(softplus(-0.1 * delta), rel=1e-6)


def test_alpha_divergence_exponent_is_clamped():
    assert torch.isfinite(f_divergence_score(torch.tensor([-1000.0]), "alpha_divergence", 0.5)).all()


def test_wpo_weights_are_exp_of_mean_aligned_logps_per_completion():
    # 2 pairs -> 4 completions: tokens per completion 2, 1, 1, 2
    logps = torch.tensor([-1.0, -3.0, -2.0, -0.5, -1.0, -2.0])
    log_sum_sq = torch.tensor([-0.5, -1.0, -1.0, -0.5, -0.5, -1.0])
    sequence = torch.tensor([0, 0, 1, 2, 3, 3])
    weights = wpo_weights(logps, log_sum_sq, sequence, torch.tensor([2, 1, 1, 2]))
    w = [math.exp((-0.5 - 2.0) / 2), math.exp(-1.0), math.exp(0.0), math.exp((-0.5 - 1.0) / 2)]
    assert weights.tolist() == pytest.approx([w[0] * w[2], w[1] * w[3]], rel=1e-6)
