"""Cross-entropy of a linear layer's output without materialising the logits: the LM head and the loss are
computed over chunks of tokens, and each chunk's gradients are taken right away, while its logits exist.

With a 152k-token vocabulary, [tokens, vocab] fp32 logits (and their softmax and gradient) are most of an SFT step's
memory and much of its time; here at most ``chunk_size`` rows of them exist at once, and the backward pass is one
scaling of gradients already computed (no second LM-head matmul, no stored logits).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# Logit elements per chunk: 64 Mi (256 MiB in fp32), e.g. 441 rows of a 152k vocabulary, everything at 1k.
CHUNK_ELEMENTS = 64 * 2**20


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk: about ``CHUNK_ELEMENTS`` logits, a multiple of 64 rows (at least 64)."""
    return max(64, CHUNK_ELEMENTS // vocab_size // 64 * 64)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = IGNORE_INDEX,
                         chunk_size: int | None = None) -> torch.Tensor:
    """Summed ``F.cross_entropy(hidden @ weight.T + bias, targets, ignore_index=..., reduction="sum")`` in fp32.

    ``hidden`` is [N, H], ``weight`` [V, H], ``targets`` [N]. Under autocast the matmuls run in the autocast
    dtype and the softmax in fp32, as the plain path does; gradients reach ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and targets [N]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, chunk_size, dtype,
                                     torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_size, dtype, grad_enabled):
        need_hidden, need_weight, need_bias = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            # fp32 accumulators: a low-precision sum over many chunks would lose the small contributions
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, len(h), chunk_size):
                rows = slice(start, start + chunk_size)
                logits = (h[rows] @ w.T if b is None else torch.addmm(b, h[rows], w.T)).float()
                target = targets[rows]
                valid = target != ignore_index
                safe_target = target.masked_fill(~valid, 0)[:, None]
                log_norm = logits.logsumexp(-1, keepdim=True)
                loss += ((log_norm - logits.gather(1, safe_target)).squeeze(1) * valid).sum()
                if not (need_hidden or need_weight or need_bias):
                    continue
                # d loss / d logits = softmax - one_hot(target), zero on ignored rows; built in place of the logits
                grad_logits = logits.sub_(log_norm).exp_()
                grad_logits.scatter_add_(1, safe_target, torch.full_like(log_norm, -1.0))
                grad_logits.mul_(valid[:, None])
                grad_low = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden[rows] = (grad_low @ w).to(hidden.dtype)
                if need_weight:
                    if dtype == torch.float32:
                        grad_weight.addmm_(grad_low.T, h[rows])
                    else:
                        grad_weight += grad_low.T @ h[rows]
                if need_bias:
                    grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_loss.float()
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            (grad_weight * scale).to(weight_dtype) if grad_weight is not None else None,
            (grad_bias * scale).to(bias_dtype) if grad_bias is not None else None,
            None, None, None, None, None,
        )
