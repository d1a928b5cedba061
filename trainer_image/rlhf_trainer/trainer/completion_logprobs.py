"""Per-token log-probs of chosen tokens straight from a linear LM head's input, without the [tokens, vocabulary]
logits: the head runs over chunks of tokens, and each chunk's statistics are taken while its logits exist.

DPO needs, for every completion token only, ``log p(token)`` (with gradients) and a few detached statistics of the
next-token distribution (entropy, mean logit, whether the token is the argmax, log sum_v p_v^2 for WPO). Unlike a
cross-entropy loss, the gradient of DPO's loss with respect to each log-prob is only known once all of them are,
so the backward pass recomputes each chunk's softmax — unless everything fits in one chunk, where the forward
keeps it (the memory one chunk takes anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_trainer.trainer.linear_cross_entropy import default_chunk_size


@dataclass
class TokenStats:
    """Per scored token: log-prob of the token (with grad) and detached statistics (None when not asked for)."""

    logps: torch.Tensor
    entropy: torch.Tensor | None = None
    mean_logit: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    log_sum_sq: torch.Tensor | None = None


def stats_from_logits(logits: torch.Tensor, targets: torch.Tensor, stats: bool = True, sum_sq: bool = False
                      ) -> TokenStats:
    """`TokenStats` of [N, V] logits (the plain computation; softmax in fp32)."""
    logits = logits.float()
    log_probs = logits.log_softmax(-1)
    logps = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    if not stats:
        return TokenStats(logps)
    with torch.no_grad():
        detached = log_probs.detach()
        return TokenStats(
            logps,
            entropy=-(detached.exp() * detached).sum(-1),
            mean_logit=logits.detach().mean(-1),
            is_top1=logits.detach().argmax(-1) == targets,
            log_sum_sq=(2 * detached).logsumexp(-1) if sum_sq else None,
        )


def completion_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, *, stats: bool = True, sum_sq: bool = False,
                        chunk_size: int | None = None) -> TokenStats:
    """`TokenStats` of ``hidden @ weight.T + bias`` at ``targets`` (hidden [N, H], weight [V, H], targets [N]),
    computed chunk by chunk; gradients reach ``hidden``, ``weight`` and ``bias`` through the log-probs. Under
    autocast the matmuls run in the autocast dtype and the softmax in fp32, as the plain path does."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and targets [N]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    logps, entropy, mean_logit, is_top1, log_sum_sq = _CompletionLogProbs.apply(
        hidden, weight, bias, targets, chunk_size, dtype, stats, sum_sq, torch.is_grad_enabled())
    return TokenStats(logps, entropy, mean_logit, is_top1, log_sum_sq)


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()


class _CompletionLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, dtype, stats, sum_sq, grad_enabled):
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logps) if stats else None
        mean_logit = torch.empty_like(logps) if stats else None
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device) if stats else None
        log_sum_sq = torch.empty_like(logps) if sum_sq else None
        keep_probs = grad_enabled and n <= chunk_size
        probs = None
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _logits(h[rows], w, b)
                target = targets[rows, None]
                log_norm = logits.logsumexp(-1, keepdim=True)
                logps[rows] = (logits.gather(1, target) - log_norm).squeeze(1)
                if stats:
                    mean_logit[rows] = logits.mean(-1)
                    is_top1[rows] = logits.argmax(-1) == target.squeeze(1)
                if stats or sum_sq or keep_probs:
                    log_p = logits.sub_(log_norm)  # logits no longer needed: log-probs in their place
                    if sum_sq:
                        log_sum_sq[rows] = (2 * log_p).logsumexp(-1)
                    p = log_p.exp()
                    if stats:
                        entropy[rows] = -(p * log_p).sum(-1)
                    if keep_probs:
                        probs = p
        ctx.save_for_backward(hidden, weight, bias, targets, probs)
        ctx.settings = (chunk_size, dtype)
        ctx.mark_non_differentiable(*(t for t in (entropy, mean_logit, is_top1, log_sum_sq) if t is not None))
        return logps, entropy, mean_logit, is_top1, log_sum_sq

    @staticmethod
    def backward(ctx, grad_logps, *_):
        hidden, weight, bias, targets, probs = ctx.saved_tensors
        chunk_size, dtype = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 accumulators: a low-precision sum over many chunks would lose the small contributions
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                p = probs if probs is not None else _logits(h[rows], w, b).softmax(-1)
                # d log p(target) / d logits = one_hot(target) - softmax; scaled by the incoming gradient
                grad = p.mul_(-grad_logps[rows, None].float())
                grad.scatter_add_(1, targets[rows, None], grad_logps[rows, None].float())
                grad_low = grad.to(dtype)
                if need_hidden:
                    grad_hidden[rows] = (grad_low @ w).to(hidden.dtype)
                if need_weight:
                    grad_weight.addmm_(grad_low.T.float(), h[rows].float())
                if need_bias:
                    grad_bias += grad.sum(0)
        return (grad_hidden,
                grad_weight.to(weight.dtype) if grad_weight is not None else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
                None, None, None, None, None, None)
