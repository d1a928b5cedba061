"""The PPO math as small tensor functions (see docs/algorithms/ppo.md), plus sampling and seeding helpers.

Every public name of TRL v0.7's ``trl.core`` is here with its signature and numbers, so that
``from trl.core import ...`` becomes ``from rlhf_trainer.core import ...``; where bad input is handled
differently, docs/algorithms/ppo.md says how.
"""

from __future__ import annotations

import gc
import numbers
import random
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

KL_PENALTIES = ("kl", "abs", "mse", "full")
WANDB_PADDING = -1  # what stack_dicts fills ragged rows with (TRL's name)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Log-probabilities of ``labels`` under ``logits`` (or the full log-softmax when ``gather`` is False)."""
    if not gather:
        return F.log_softmax(logits, dim=-1)
    # gather - logsumexp never materialises a second [B, T, V] tensor.
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over ``axis``, or over everything)."""
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` where ``mask`` is 1, with Bessel's correction by default."""
    count = mask.sum()
    if count == 0:
        raise ValueError("masked_var: the mask selects no element")
    variance = masked_mean((values - masked_mean(values, mask)) ** 2, mask)
    if unbiased:
        if count == 1:
            raise ValueError("masked_var: an unbiased variance needs at least two elements; the mask selects one")
        variance = variance * count / (count - 1)
    return variance


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise all of ``values`` (unbiased variance); keep their mean when ``shift_mean`` is False."""
    mean, var = values.mean(), values.var()
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise ``values`` over ``mask`` (unbiased variance); keep their mean when ``shift_mean`` is False."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits`` (last dimension)."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def clip_by_value(x: torch.Tensor, tensor_min: torch.Tensor | float, tensor_max: torch.Tensor | float
                  ) -> torch.Tensor:
    """Clamp ``x`` element-wise between ``tensor_min`` and ``tensor_max`` (each a tensor or a number)."""
    high, low = torch.as_tensor(tensor_max, dtype=x.dtype), torch.as_tensor(tensor_min, dtype=x.dtype)
    return torch.maximum(torch.minimum(x, high), low)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mode: str = "kl") -> torch.Tensor:
    """Per-token KL estimate between policy and reference; for ``full`` the inputs are full log-distributions."""
    if mode == "kl":
        return logprobs - ref_logprobs
    if mode == "abs":
        return (logprobs - ref_logprobs).abs()
    if mode == "mse":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if mode == "full":
        return (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)
    raise ValueError(f"kl_penalty must be one of {', '.join(KL_PENALTIES)}, got {mode!r}")


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked tokens of [B, T] tensors; returns (advantages, returns).

    Masked-out positions are skipped: the step after token t is the next position the mask selects.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        keep = mask[:, t]
        advantages[:, t] = advantage * keep
        next_value = torch.lerp(next_value, values[:, t], keep)
        next_advantage = torch.lerp(next_advantage, advantage, keep)
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss; returns (loss, ratio, clip fraction)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, ratio, masked_mean((clipped > unclipped).to(ratio.dtype), mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss 0.5 * max((v - R)^2, (v_clip - R)^2); returns (loss, clip fraction)."""
    clipped_values = clip_by_value(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019): moves the KL towards ``target`` over ``horizon`` steps."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon


class FixedKLController:
    """A KL coefficient that never changes."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class RunningMoments:
    """Running mean and standard deviation of every value seen (Chan et al.'s parallel update), for score scaling."""

    def __init__(self):
        self.mean, self.var, self.std, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Fold ``xs`` (all processes' values) in; return their own mean and unbiased std."""
        xs = xs.double()
        xs_count = xs.numel()
        xs_mean, xs_var = xs.mean().item(), xs.var(unbiased=False).item()
        delta = xs_mean - self.mean
        total = self.count + xs_count
        m2 = self.var * self.count + xs_var * xs_count + delta**2 * self.count * xs_count / total
        self.mean += delta * xs_count / total
        self.var = m2 / total
        self.std = (self.var * total / (total - 1)) ** 0.5 if total > 1 else 1.0
        self.count = total
        return xs_mean, (xs_var * xs_count / (xs_count - 1)) ** 0.5 if xs_count > 1 else 0.0


def flatten_dict(nested: Mapping, sep: str = "/", prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    flat = {}
    for key, value in nested.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, sep, name))
        else:
            flat[name] = value
    return flat


def convert_to_scalar(stats: Mapping) -> dict:
    """One-element tensors and arrays (0-d or shape [1]) to Python numbers, as scalar-only loggers need."""
    return {key: value.item() if isinstance(value, torch.Tensor | np.ndarray) and value.shape in ((), (1,)) else value
            for key, value in stats.items()}


def stack_dicts(stats_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack same-keyed tensor dicts into one dict of [N, L] rows (each flattened, ragged ones padded with -1)."""
    return {
        key: pad_sequence([torch.flatten(d[key]) for d in stats_dicts], batch_first=True, padding_value=WANDB_PADDING)
        for key in stats_dicts[0]
    }


def add_suffix(input_dict: Mapping, suffix: str) -> dict:
    """``{"loss": 1}, "/mean"`` -> ``{"loss/mean": 1}``."""
    return {key + suffix: value for key, value in input_dict.items()}


def pad_to_size(tensor: torch.Tensor, size: int, dim: int = 1, padding: int = 50256) -> torch.Tensor:
    """Pad ``tensor`` at the end of ``dim`` with ``padding`` (GPT-2's EOS by default) until it is ``size`` long."""
    missing = size - tensor.shape[dim]
    if missing < 0:
        raise ValueError(f"pad_to_size: the tensor is already {tensor.shape[dim]} long in dim {dim}, over size {size}")
    fill_shape = list(tensor.shape)
    fill_shape[dim] = missing
    return torch.cat([tensor, tensor.new_full(fill_shape, padding)], dim=dim)


def average_torch_dicts(list_of_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean, key by key, of same-keyed dicts of same-shaped tensors."""
    return {key: torch.stack([d[key] for d in list_of_dicts]).mean(0) for key in list_of_dicts[0]}


def stats_to_np(stats_dict: Mapping) -> dict:
    """Tensors to numpy arrays of the same dtype (bfloat16 to float32); numbers and 0-d tensors to Python floats."""
    converted = {}
    for key, value in stats_dict.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.float() if value.dtype == torch.bfloat16 else value
            value = float(value) if value.ndim == 0 else value.numpy()
        elif isinstance(value, numbers.Real):
            value = float(value)
        converted[key] = value
    return converted


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                          filter_value: float = -float("inf"), min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Set logits outside the ``top_k`` most likely tokens, or outside the nucleus of mass ``top_p``, to -inf."""
    logits = logits.clone()
    if top_k > 0:
        k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
        kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth_best] = filter_value
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= top_p  # keep a token while the mass of the better ones is still below top_p
        drop[..., :min_tokens_to_keep] = False
        logits[drop.scatter(-1, order, drop)] = filter_value
    return logits


@torch.no_grad()
def respond_to_batch(model, queries: torch.Tensor, txt_len: int = 20, top_k: int = 0, top_p: float = 1.0
                     ) -> torch.Tensor:
    """Sample ``txt_len`` tokens after each row of ``queries`` [B, T] from a causal LM; returns only the new tokens."""
    input_ids = queries
    for _ in range(txt_len):
        outputs = model(input_ids)
        logits = outputs[0][:, -1, :]  # a value-head tuple and a ModelOutput both start with the logits
        logits = top_k_top_p_filtering(logits, top_k=top_k, top_p=top_p)
        next_token = torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)
        input_ids = torch.cat([input_ids, next_token], dim=-1)
    return input_ids[:, -txt_len:]


class LengthSampler:
    """Draws an integer uniformly from ``[min_value, max_value)``, e.g. a response length per batch."""

    def __init__(self, min_value: int, max_value: int):
        if max_value <= min_value:
            raise ValueError(f"LengthSampler needs min_value < max_value, got {min_value} and {max_value}")
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))


def set_seed(seed: int) -> None:
    """Seed ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def free_accelerator_memory() -> None:
    """Collect garbage and hand the accelerator's cached, unused memory back to its driver (a no-op on CPU)."""
    if torch.accelerator.is_available():
        gc.collect()
        torch.accelerator.empty_cache()


class PPODecorators:
    """``@PPODecorators.empty_device_cache()`` or ``with``: frees memory after the block if ``optimize_device_cache``."""

    optimize_device_cache = False

    @classmethod
    @contextmanager
    def empty_device_cache(cls):
        """Run the block, then free cached accelerator memory if ``optimize_device_cache`` is on."""
        try:
            yield
        finally:
            if cls.optimize_device_cache:
                free_accelerator_memory()


def randn_tensor(shape: tuple | list, generator: torch.Generator | list[torch.Generator] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 layout: torch.layout | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``; with a list of generators, row ``i`` comes from the i-th."""
    device = torch.device(device or "cpu")
    layout = layout or torch.strided
    if isinstance(generator, list | tuple) and len(generator) == 1:
        generator = generator[0]
    generators = generator if isinstance(generator, list | tuple) else [generator]
    draw_on = device
    if generators[0] is not None:
        generator_device = generators[0].device
        if generator_device.type == "cpu":  # draw on the CPU, then move: a seed gives the same noise everywhere
            draw_on = generator_device
        elif generator_device.type != device.type:
            raise ValueError(f"randn_tensor: a {generator_device.type} generator cannot make a {device.type} tensor")
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"randn_tensor: {len(generator)} generators for a batch of {shape[0]}; give one per row")
        row_shape = (1, *shape[1:])
        rows = [torch.randn(row_shape, generator=g, device=draw_on, dtype=dtype, layout=layout) for g in generator]
        return torch.cat(rows).to(device)
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype, layout=layout).to(device)
