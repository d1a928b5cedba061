"""GRPO's loss on one micro-batch, as pure tensor functions (docs/algorithms/grpo.md, "Loss").

Shapes: per-token tensors are [B, T] over completion tokens; ``mask`` [B, T] is 1 on tokens the loss sees
(completion mask × env mask); ``advantages`` is [B]. Each loss type is a small function giving the per-token policy
term, and an aggregation turning per-token terms into the micro-batch's loss. Nothing here talks to other processes:
the trainer passes the one cross-process number a loss needs (dapo's window normaliser) in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch

from rlhf_contract.stages.grpo import LossType

LOSS_TYPES = get_args(LossType)
CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
WINDOW_LOSSES = ("dapo", "cispo", "vespo")  # normalised by the accumulation window's token count
assert {*CLIPPED_LOSSES, *WINDOW_LOSSES} <= set(LOSS_TYPES), "a loss type the contract does not know"


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over ``dim``, else all), dividing by at least 1."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def log_importance_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, level: str
                         ) -> torch.Tensor:
    """``log ρ``: per token (``"token"``, [B, T]) or its masked mean per sequence (``"sequence"``, GSPO,
    arXiv:2507.18071, [B, 1])."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return masked_mean(log_ratio, mask, dim=1)[:, None]
    raise ValueError(f"importance_sampling_level={level!r}: use 'token' or 'sequence'")


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float,
                      delta: float | None = None) -> torch.Tensor:
    """PPO's clipped objective as used by GRPO (DeepSeekMath, arXiv:2402.03300) and its grpo/bnpo/dr_grpo/dapo/
    luspo variants: ``-min(ρ'·A, clip(ρ, 1-ε_low, 1+ε_high)·A)``; ``ρ' = min(ρ, δ)`` with the two-sided bound of
    INTELLECT-2 (arXiv:2505.07291) when ``delta`` is set."""
    a = advantages[:, None]
    unclipped = (ratio.clamp(max=delta) if delta is not None else ratio) * a
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * a
    return -torch.min(unclipped, clipped)


def cispo_term(ratio: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor, epsilon_high: float
               ) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv:2506.13585): clip the importance weight, not the update, and keep every token's
    gradient: ``-min(ρ, ε_high).detach() · A · log π``. (ε_high is an absolute cap here: ~5, not 1 + ε.)"""
    return -ratio.clamp(max=epsilon_high).detach() * advantages[:, None] * logps


def sapo_term(ratio: torch.Tensor, advantages: torch.Tensor, temperature_pos: float, temperature_neg: float
              ) -> torch.Tensor:
    """SAPO (Soft Adaptive Policy Optimization, arXiv:2511.20347): a smooth gate instead of a hard clip,
    ``-A · 4σ(τ(ρ - 1)) / τ``, τ = ``temperature_pos`` where A > 0 else ``temperature_neg`` (gradient A at ρ = 1)."""
    a = advantages[:, None]
    tau = torch.where(a > 0, temperature_pos, temperature_neg).to(ratio.dtype)
    return -a * 4 * torch.sigmoid(tau * (ratio - 1)) / tau


@torch.no_grad()
def vespo_weights(log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, k_pos: float,
                  lambda_pos: float, k_neg: float, lambda_neg: float) -> torch.Tensor:
    """VESPO's sequence weight, [B, 1], no gradient: the gamma shape ``φ(w) = e^λ · w^k · e^(-λw)`` (φ(1) = 1) of
    the sequence's importance ratio ``w = exp(Σ_t log ρ_t)``; (k, λ) by the sign of A (A >= 0: the ``pos``
    pair). Per-token log ratios are clamped to ±20 and log w to [log 1e-8, 20], as TRL 1.16 does; a non-finite
    φ counts 0."""
    seq_log_ratio = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
    log_w = seq_log_ratio.clamp(math.log(1e-8), 20.0)
    positive = advantages[:, None] >= 0
    k = torch.where(positive, k_pos, k_neg)
    lam = torch.where(positive, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def k3_kl(ref_logps: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate k3 (Schulman): ``exp(ref - lp) - (ref - lp) - 1`` >= 0, exactly 0 where equal."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def sequence_mean_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grpo, sapo: each sequence's token mean, averaged over sequences (DeepSeekMath's 1/|o_i| normaliser)."""
    return masked_mean(per_token, mask, dim=1).mean()


def token_mean_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """bnpo: the token mean over the micro-batch (so it depends on how a batch is split)."""
    return masked_mean(per_token, mask)


def constant_length_loss(per_token: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """dr_grpo (Dr. GRPO, arXiv:2503.20783): the sum over tokens divided by rows × ``max_completion_length``, a
    constant, not the batch's longest completion."""
    return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)


def window_token_loss(per_token: torch.Tensor, mask: torch.Tensor, window_normaliser: float) -> torch.Tensor:
    """dapo, cispo (DAPO, arXiv:2503.14476): the sum over tokens divided by the window's normaliser, the same
    for every micro-batch of one accumulation window (see `dapo_normaliser`)."""
    return (per_token * mask).sum() / window_normaliser


def sequence_sum_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """luspo (Length-Unbiased Sequence Policy Optimization, arXiv:2602.05261): each sequence's token sum (its loss
    scaled by its length), averaged over sequences."""
    return (per_token * mask).sum(dim=1).mean()


def dapo_normaliser(generation_tokens: float, num_processes: int, gradient_accumulation_steps: int,
                    steps_per_generation: int) -> float:
    """``N_gen / processes × GA / steps_per_generation``: N_gen is the active tokens of the whole generation batch
    summed over processes. Summed over a window's micro-batches and averaged over processes (DDP), the loss is then
    the token mean of the whole accumulated batch."""
    return max(generation_tokens / num_processes * gradient_accumulation_steps / steps_per_generation, 1.0)


@dataclass(frozen=True)
class LossSettings:
    """What the micro-batch loss depends on, from GRPOConfig."""

    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    importance_sampling_level: str = "token"
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    max_completion_length: int = 512
    off_policy_mask_threshold: float | None = None
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


@dataclass
class LossOutput:
    """The micro-batch loss (already divided by ``accumulation``) and the per-token tensors its metrics need."""

    loss: torch.Tensor
    ratio: torch.Tensor  # [B, T] or [B, 1]
    clipped_ratio: torch.Tensor  # ρ' (after delta), same shape
    kl: torch.Tensor | None  # [B, T], as added to the loss (× ρ when bias-corrected)
    off_policy_mask: torch.Tensor | None  # [B, 1]
    vespo_weights: torch.Tensor | None = None  # [B, 1]


def off_policy_sequence_mask(behaviour_logps: torch.Tensor, logps: torch.Tensor, advantages: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """DeepSeek-V3.2 (arXiv:2512.02556, eq. 9): drop a sequence with A < 0 whose token mean of
    ``behaviour lp - lp`` exceeds ``threshold``; [B, 1] of 0/1."""
    drift = masked_mean(behaviour_logps - logps.detach(), mask, dim=1)
    return (~((advantages < 0) & (drift > threshold))).float()[:, None]


def grpo_loss(settings: LossSettings, logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, ref_logps: torch.Tensor | None = None, entropy_mask: torch.Tensor | None = None,
              behaviour_logps: torch.Tensor | None = None, sampling_weight: torch.Tensor | None = None,
              accumulation: int = 1, window_normaliser: float = 1.0) -> LossOutput:
    """The loss of one micro-batch (docs/algorithms/grpo.md, step 7).

    ``old_logps`` None means the batch is scored on-policy (ratio exactly 1 with the gradient of ``logps``).
    ``entropy_mask`` keeps only high-entropy tokens in the policy term; ``behaviour_logps`` are the log-probs the
    off-policy mask compares against (the rollout's, else the old ones); ``sampling_weight`` multiplies the policy
    term (an importance-sampling correction). ``accumulation`` divides the loss (gradient accumulation), and
    ``window_normaliser`` is dapo/cispo's shared denominator.
    """
    s = settings
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = log_importance_ratio(logps, old, mask, s.importance_sampling_level)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(max=s.delta) if s.delta is not None else ratio
    phi = None
    if s.loss_type in CLIPPED_LOSSES:
        per_token = clipped_surrogate(ratio, advantages, s.epsilon_low, s.epsilon_high, s.delta)
    elif s.loss_type == "cispo":
        per_token = cispo_term(ratio, advantages, logps, s.epsilon_high)
    elif s.loss_type == "sapo":
        per_token = sapo_term(ratio, advantages, s.sapo_temperature_pos, s.sapo_temperature_neg)
    elif s.loss_type == "vespo":  # weights from the token log ratios whatever importance_sampling_level says
        phi = vespo_weights(logps - old, advantages, mask, s.vespo_k_pos, s.vespo_lambda_pos, s.vespo_k_neg,
                            s.vespo_lambda_neg)
        per_token = -phi * advantages[:, None] * logps
    else:
        raise ValueError(f"loss_type={s.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
    per_token = per_token.expand_as(logps)

    off_policy = None
    if s.off_policy_mask_threshold is not None:
        behaviour = behaviour_logps if behaviour_logps is not None else old
        off_policy = off_policy_sequence_mask(behaviour, logps, advantages, mask, s.off_policy_mask_threshold)
        per_token = per_token * off_policy
    if entropy_mask is not None:
        per_token = per_token * entropy_mask
    if sampling_weight is not None:
        per_token = per_token * sampling_weight

    kl = None
    if s.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        kl = k3_kl(ref_logps, logps)
        if s.use_bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + s.beta * kl

    if s.loss_type in ("grpo", "sapo"):
        loss = sequence_mean_loss(per_token, mask)
    elif s.loss_type == "bnpo":
        loss = token_mean_loss(per_token, mask)
    elif s.loss_type == "dr_grpo":
        loss = constant_length_loss(per_token, mask, s.max_completion_length)
    elif s.loss_type in WINDOW_LOSSES:
        loss = window_token_loss(per_token, mask, window_normaliser)
    else:  # luspo
        loss = sequence_sum_loss(per_token, mask)
    if s.loss_type not in WINDOW_LOSSES:  # the window normaliser already spans the accumulation
        loss = loss / accumulation
    return LossOutput(loss, ratio, clipped_ratio, kl, off_policy, phi)


def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """1 on tokens whose entropy is at least ``threshold`` (see `entropy_threshold`), within ``mask``."""
    return ((entropies >= threshold) & mask.bool()).float()


def entropy_threshold(valid_entropies: torch.Tensor, top_entropy_quantile: float) -> torch.Tensor:
    """The (1 - q) quantile of the valid tokens' entropies ("Beyond the 80/20 rule", arXiv:2506.01939): tokens at
    or above it are the top-q share by entropy."""
    if valid_entropies.numel() == 0:
        return valid_entropies.new_tensor(torch.inf)
    return torch.quantile(valid_entropies.float(), 1.0 - top_entropy_quantile)


def clip_indicators(ratio: torch.Tensor, clipped_ratio: torch.Tensor, advantages: torch.Tensor,
                    epsilon_low: float, epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 0/1 of the clipped-surrogate's clipped region: low ``ρ < 1-ε and A < 0``, high
    ``ρ' > 1+ε_high and A > 0`` (broadcast to [B, T] by the caller)."""
    a = advantages[:, None]
    low = ((ratio < 1 - epsilon_low) & (a < 0)).float()
    high = ((clipped_ratio > 1 + epsilon_high) & (a > 0)).float()
    return low, high
