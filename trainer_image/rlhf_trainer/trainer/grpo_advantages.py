"""GRPO's group-relative advantages, from the reward matrix of one generation batch (docs/algorithms/grpo.md,
"Advantages").

Rewards come as ``R[i, k]``: completion i, reward function k, NaN where the function returned None. Completions are
grouped in consecutive runs of ``num_generations`` (one prompt each). All functions here are pure and see the whole
generation batch (every process's completions), so group and batch statistics never depend on how the batch is
split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-4  # added to every standard deviation a reward is divided by (never a division by zero)


def nanmean(values: torch.Tensor, dim: int | None = None, keepdim: bool = False,
            exact_ties: bool = True) -> torch.Tensor:
    """Mean of the non-NaN values (NaN where there are none). Where every non-NaN value is equal it is exactly that
    value: the fp32 mean of equal non-dyadic numbers can be an ulp off, which would give an all-equal group a
    non-zero advantage (a deliberate correction; see the docs' "Known traps"). ``exact_ties=False``: TRL's plain
    ``torch.nanmean``."""
    if not exact_ties:
        return values.nanmean(dim=dim, keepdim=keepdim) if dim is not None else values.nanmean()
    valid = ~values.isnan()
    count = valid.sum(dim=dim, keepdim=keepdim) if dim is not None else valid.sum()
    total = values.nansum(dim=dim, keepdim=keepdim) if dim is not None else values.nansum()
    mean = total / count
    high = values.masked_fill(~valid, -torch.inf)
    low = values.masked_fill(~valid, torch.inf)
    high = high.amax(dim=dim, keepdim=keepdim) if dim is not None else high.max()
    low = low.amin(dim=dim, keepdim=keepdim) if dim is not None else low.min()
    return torch.where((high == low) & (count > 0), high, mean)


def nanstd(values: torch.Tensor, dim: int | None = None, keepdim: bool = False,
           exact_ties: bool = True) -> torch.Tensor:
    """Unbiased (n - 1) standard deviation of the non-NaN values; NaN with fewer than two. Exactly 0 for equal
    values (deviations from `nanmean`'s exact mean); ``exact_ties=False``: TRL's order of operations (the mean
    square deviation times n / (n - 1))."""
    if not exact_ties:
        return _trl_nanstd(values, dim, keepdim)
    mean = nanmean(values, dim=dim, keepdim=True) if dim is not None else nanmean(values)
    valid = ~values.isnan()
    squares = ((values - mean) ** 2).masked_fill(~valid, 0.0)
    if dim is None:
        return (squares.sum() / (valid.sum() - 1)).sqrt()
    return (squares.sum(dim=dim, keepdim=keepdim) / (valid.sum(dim=dim, keepdim=keepdim) - 1)).sqrt()


def _trl_nanstd(values: torch.Tensor, dim: int | None, keepdim: bool) -> torch.Tensor:
    mean = values.nanmean(dim=dim, keepdim=True) if dim is not None else values.nanmean()
    variance = ((values - mean) ** 2).nanmean(dim=dim, keepdim=True) if dim is not None else \
        ((values - mean) ** 2).nanmean()
    count = (~values.isnan()).sum(dim=dim, keepdim=True) if dim is not None else (~values.isnan()).sum()
    correction = torch.where(count > 1, count / (count - 1), torch.nan)
    std = (variance * correction).sqrt()
    return std.squeeze(dim) if dim is not None and not keepdim else std


def weighted_rewards(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``r_i = nansum_k w_k R[i, k]`` (a None term counts as 0, no renormalisation); NaN for an *unscorable* row,
    one where every function returned None."""
    summed = (rewards * weights[None, :]).nansum(dim=1)
    return summed.masked_fill(rewards.isnan().all(dim=1), torch.nan)


@dataclass
class Advantages:
    """``advantages`` [N] (NaN already 0), the weighted ``rewards`` [N] (NaN: unscorable) and the standard
    deviation ``std`` [N] each completion's advantage was judged by (its group's or the batch's), for the
    ``frac_reward_zero_std`` metric."""

    advantages: torch.Tensor
    rewards: torch.Tensor
    std: torch.Tensor

    @property
    def frac_zero_std(self) -> float:
        """Fraction of completions whose σ is (close to) 0; a NaN σ counts as not."""
        return torch.isclose(self.std, torch.zeros_like(self.std)).float().mean().item()


def group_std(values: torch.Tensor, num_generations: int, exact_ties: bool = True) -> torch.Tensor:
    """Each value's group σ, [N] (0 for groups of one)."""
    if num_generations < 2:
        return torch.zeros_like(values)
    return nanstd(values.view(-1, num_generations), dim=1, exact_ties=exact_ties).repeat_interleave(num_generations)


def batch_std(values: torch.Tensor, exact_ties: bool = True) -> torch.Tensor:
    return nanstd(values, exact_ties=exact_ties).expand_as(values) if values.numel() > 1 else torch.zeros_like(values)


def sum_then_normalize(rewards: torch.Tensor, weights: torch.Tensor, num_generations: int,
                       scale_rewards: str, exact_ties: bool = True) -> Advantages:
    """GRPO (DeepSeekMath, arXiv:2402.03300): ``A_i = (r_i - mean_group(r)) / (σ + 1e-4)`` on the weighted sum of
    the rewards; σ is the group's (``"group"``) or the whole batch's (``"batch"``) unbiased std; ``"none"`` leaves
    the difference unscaled (Dr. GRPO, arXiv:2503.20783), σ then only feeding the zero-std metric."""
    r = weighted_rewards(rewards, weights)
    mean = nanmean(r.view(-1, num_generations), dim=1, exact_ties=exact_ties).repeat_interleave(num_generations)
    if scale_rewards in ("group", "none"):
        std = group_std(r, num_generations, exact_ties)
    elif scale_rewards == "batch":
        std = batch_std(r, exact_ties)
    else:
        raise ValueError(f"scale_rewards={scale_rewards!r}: use 'group', 'batch' or 'none'")
    advantages = r - mean
    if scale_rewards != "none":
        advantages = advantages / (std + EPS)
    return Advantages(advantages.nan_to_num(nan=0.0), r, std)


def normalize_then_sum(rewards: torch.Tensor, weights: torch.Tensor, num_generations: int,
                       exact_ties: bool = True) -> Advantages:
    """GDPO (arXiv:2601.05242): standardise each reward function within its group (σ + 1e-4), take the weighted
    nansum, then standardise that over the whole batch, whatever ``scale_rewards`` says."""
    grouped = rewards.view(-1, num_generations, rewards.shape[1])
    mean = nanmean(grouped, dim=1, keepdim=True, exact_ties=exact_ties)
    if num_generations > 1:
        std = nanstd(grouped, dim=1, keepdim=True, exact_ties=exact_ties)
    else:
        std = torch.zeros_like(mean)
    per_function = ((grouped - mean) / (std + EPS)).view_as(rewards)
    summed = weighted_rewards(per_function, weights)
    spread = batch_std(summed, exact_ties)
    advantages = (summed - nanmean(summed, exact_ties=exact_ties)) / (spread + EPS)
    return Advantages(advantages.nan_to_num(nan=0.0), weighted_rewards(rewards, weights), spread)


def compute_advantages(rewards: torch.Tensor, weights: torch.Tensor, num_generations: int, scale_rewards: str,
                       aggregation: str = "sum_then_normalize", exact_ties: bool = True) -> Advantages:
    """Advantages of one generation batch by ``multi_objective_aggregation``; ``exact_ties=False`` computes the
    means and deviations as TRL does (an all-equal group can then get a tiny non-zero advantage)."""
    if rewards.shape[0] % num_generations:
        raise ValueError(f"{rewards.shape[0]} completions do not split into groups of {num_generations}")
    if aggregation == "sum_then_normalize":
        return sum_then_normalize(rewards, weights, num_generations, scale_rewards, exact_ties)
    if aggregation == "normalize_then_sum":
        return normalize_then_sum(rewards, weights, num_generations, exact_ties)
    raise ValueError(f"multi_objective_aggregation={aggregation!r}: use 'sum_then_normalize' or "
                     "'normalize_then_sum'")
