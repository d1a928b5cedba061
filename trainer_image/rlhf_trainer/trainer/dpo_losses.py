"""The DPO family of preference losses, one small function each, side by side (docs/algorithms/dpo.md, step 4).

Every loss takes the `PairTerms` of a micro-batch of B pairs and the `LossSettings`, and returns the per-pair loss
[B]. Notation: beta = settings.beta, eps = settings.label_smoothing, rho = policy - reference log-prob sum of a
completion (its log ratio), u = its f-divergence score (u = rho for reverse KL), delta = u_chosen - u_rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logsigmoid = F.logsigmoid


@dataclass
class LossSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5


@dataclass
class PairTerms:
    """What the losses are made of, for B pairs: summed completion log-probs of the policy and the reference,
    completion lengths (tokens after truncation) and the token mean of the chosen completions' NLL (for sft)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    chosen_token_nll: torch.Tensor  # scalar
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected_logps - self.ref_rejected_logps

    @property
    def chosen_scores(self) -> torch.Tensor:
        return f_divergence_score(self.chosen_logratios, self.f_divergence_type, self.f_alpha_divergence_coef)

    @property
    def rejected_scores(self) -> torch.Tensor:
        return f_divergence_score(self.rejected_logratios, self.f_divergence_type, self.f_alpha_divergence_coef)

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_scores - self.rejected_scores


def f_divergence_score(logratio: torch.Tensor, kind: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    """f'(pi/pi_ref) of f-DPO (Wang et al. 2023, arXiv 2309.16240) as a function of the log ratio rho:
    reverse_kl rho; forward_kl 1 - exp(-rho); js_divergence log 2 + logsigmoid(rho); alpha_divergence
    (exp((alpha - 1) rho) - 1) / (alpha - 1), its exponent clamped at 80 so exp stays finite (rho at alpha = 1)."""
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return 1 - torch.exp(-logratio)
    if kind == "js_divergence":
        return math.log(2) + logsigmoid(logratio)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return logratio
        exponent = ((alpha - 1.0) * logratio).float().clamp(max=80.0)
        return ((torch.exp(exponent) - 1.0) / (alpha - 1.0)).to(logratio.dtype)
    raise ValueError(f"unknown f_divergence_type {kind!r}")


def sigmoid_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7): -logsigmoid(beta * delta). No label smoothing."""
    return -logsigmoid(s.beta * t.delta)


def hinge_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """SLiC's hinge (Zhao et al. 2023, arXiv 2305.10425): max(0, 1 - beta * delta)."""
    return torch.relu(1 - s.beta * t.delta)


def ipo_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17) on per-token average scores, beta as the paper's tau:
    (u_c/|c| - u_r/|r| - 1/(2 beta))^2."""
    return (_per_token_delta(t) - 1 / (2 * s.beta)) ** 2


def robust_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409, Eq. 8), eps = probability a label is flipped:
    (-(1 - eps) logsigmoid(beta delta) + eps logsigmoid(-beta delta)) / (1 - 2 eps)."""
    z, eps = s.beta * t.delta, s.label_smoothing
    return (-(1 - eps) * logsigmoid(z) + eps * logsigmoid(-z)) / (1 - 2 * eps)


def exo_pair_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """EXO for pairs (Ji et al. 2024, arXiv 2402.00856, Eq. 16): KL(softmax(beta u) || [1 - eps, eps]) =
    sigmoid(z) (logsigmoid(z) - log(1 - eps)) + sigmoid(-z) (logsigmoid(-z) - log eps), z = beta delta."""
    z, eps = s.beta * t.delta, s.label_smoothing
    return (torch.sigmoid(z) * (logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (logsigmoid(-z) - math.log(eps)))


def nca_pair_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """NCA for pairs (Chen et al. 2024, arXiv 2402.05369): -logsigmoid(beta rho_c) - 1/2 logsigmoid(-beta rho_c)
    - 1/2 logsigmoid(-beta rho_r)."""
    chosen, rejected = s.beta * t.chosen_logratios, s.beta * t.rejected_logratios
    return -logsigmoid(chosen) - 0.5 * logsigmoid(-chosen) - 0.5 * logsigmoid(-rejected)


def bco_pair_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """BCO for pairs (Jung et al. 2024, arXiv 2404.04656), without the running reward shift:
    -logsigmoid(beta rho_c) - logsigmoid(-beta rho_r)."""
    return -logsigmoid(s.beta * t.chosen_logratios) - logsigmoid(-s.beta * t.rejected_logratios)


def sppo_hard_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """SPPO with hard win probabilities (Wu et al. 2024, arXiv 2405.00675, Eq. 4.7 with P = 1 / 0):
    (rho_c - 1/(2 beta))^2 + (rho_r + 1/(2 beta))^2."""
    return (t.chosen_logratios - 0.5 / s.beta) ** 2 + (t.rejected_logratios + 0.5 / s.beta) ** 2


def aot_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """AOT, paired (Melnyk et al. 2024, arXiv 2406.05882): the policy's and the reference's chosen - rejected
    log-prob gaps sorted separately over the micro-batch, delta = their sorted difference, then
    -(1 - eps) logsigmoid(beta delta) - eps logsigmoid(-beta delta)."""
    policy, _ = torch.sort(t.chosen_logps - t.rejected_logps)
    reference, _ = torch.sort(t.ref_chosen_logps - t.ref_rejected_logps)
    return _smoothed_logistic(s.beta * (policy - reference), s.label_smoothing)


def aot_unpaired_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """AOT, unpaired (Melnyk et al. 2024, arXiv 2406.05882): delta = sorted rho_c - sorted rho_r over the
    micro-batch, then -(1 - eps) logsigmoid(beta delta) - eps logsigmoid(-beta delta)."""
    chosen, _ = torch.sort(t.chosen_logratios)
    rejected, _ = torch.sort(t.rejected_logratios)
    return _smoothed_logistic(s.beta * (chosen - rejected), s.label_smoothing)


def apo_zero_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 7), for chosen answers better than the model's:
    1 - sigmoid(beta rho_c) + sigmoid(beta rho_r)."""
    return 1 - torch.sigmoid(s.beta * t.chosen_logratios) + torch.sigmoid(s.beta * t.rejected_logratios)


def apo_down_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 8), for chosen answers worse than the model's:
    sigmoid(beta rho_c) + 1 - sigmoid(beta (rho_c - rho_r))."""
    chosen, rejected = t.chosen_logratios, t.rejected_logratios
    return torch.sigmoid(s.beta * chosen) + 1 - torch.sigmoid(s.beta * (chosen - rejected))


def discopop_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """DiscoPOP's log-ratio modulated loss (Chan et al. 2024, arXiv 2406.08414, Eq. 5): z = beta delta,
    m = sigmoid(z / tau), (1 - m) (-logsigmoid(z)) + m exp(-z)."""
    z = s.beta * t.delta
    mix = torch.sigmoid(z / s.discopop_tau)
    return (1 - mix) * -logsigmoid(z) + mix * torch.exp(-z)


def sft_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions (RPO, Pang et al. 2024, arXiv 2404.19733, with
    loss_type=["sigmoid", "sft"]): the token mean over the micro-batch's chosen tokens, the same for every pair."""
    return t.chosen_token_nll.expand(t.chosen_logps.shape[0])


def sigmoid_norm_loss(t: PairTerms, s: LossSettings) -> torch.Tensor:
    """Length-normalised DPO (as in SimPO's normalisation, Meng et al. 2024, arXiv 2405.14734, with the reference
    kept): -logsigmoid(beta (u_c/|c| - u_r/|r|))."""
    return -logsigmoid(s.beta * _per_token_delta(t))


def _per_token_delta(t: PairTerms) -> torch.Tensor:
    return t.chosen_scores / t.chosen_lengths.clamp(min=1) - t.rejected_scores / t.rejected_lengths.clamp(min=1)


def _smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * logsigmoid(z) - eps * logsigmoid(-z)


LOSSES = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sft": sft_loss,
    "sigmoid_norm": sigmoid_norm_loss,
}


def preference_loss(terms: PairTerms, settings: LossSettings, loss_types: list[str],
                    loss_weights: list[float] | None = None, pair_weights: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """sum_k weight_k * mean over pairs (loss_k * pair weight): the loss of one micro-batch."""
    weights = loss_weights or [1.0] * len(loss_types)
    total = torch.zeros((), dtype=terms.chosen_logps.dtype, device=terms.chosen_logps.device)
    for name, weight in zip(loss_types, weights, strict=True):
        per_pair = LOSSES[name](terms, settings)
        if pair_weights is not None:
            per_pair = per_pair * pair_weights
        total = total + weight * per_pair.mean()
    return total


def wpo_weights(token_logps: torch.Tensor, token_log_sum_sq: torch.Tensor, sequence: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """WPO's pair weights (Zhou et al. 2024, arXiv 2406.11827, Eq. 2), detached: per completion
    w = exp(token mean of (log p(token) - log sum_v p_v^2)), and per pair w_chosen * w_rejected.

    ``token_logps`` / ``token_log_sum_sq`` are per scored token, ``sequence`` says which of the 2B completions
    (chosen ones first) each token belongs to, ``lengths`` [2B] their token counts."""
    with torch.no_grad():
        sums = torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
        sums.index_add_(0, sequence, (token_logps - token_log_sum_sq).float())
        weights = torch.exp(sums / lengths.clamp(min=1))
    chosen, rejected = weights.chunk(2)
    return chosen * rejected
