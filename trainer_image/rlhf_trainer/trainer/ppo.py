"""PPOTrainer: the PPO step of docs/algorithms/ppo.md (TRL v0.7's algorithm and API) on top of accelerate.

``step`` reads as the reference's ten steps, one helper each. Tensors of a step are laid out over the response
window: ``[batch, R]`` with ``R`` the longest response, value ``t`` paired with the log-prob of response token ``t``.
"""

from __future__ import annotations

import inspect
import math
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from rlhf_trainer.core import (
    AdaptiveKLController,
    FixedKLController,
    PPODecorators,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    flatten_dict,
    free_accelerator_memory,
    gae,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    set_seed,
)
from rlhf_trainer.models import PreTrainedModelWrapper, create_reference_model
from rlhf_trainer.trainer.generation import fast_sampling_settings, sample_tokens
from rlhf_trainer.trainer.ppo_config import PPOConfig
from rlhf_trainer.trainer.utils import disable_dropout_in_model

CHECKPOINT_WEIGHTS, CHECKPOINT_STATE = "trainable.safetensors", "trainer_state.pt"
CHECKPOINT_PENDING_STEP = "pending_step"  # pending_step_<rank>.pt


@dataclass
class PPOBatch:
    """Step 3's model inputs; ``labels`` are the response tokens and ``mask`` selects the trained ones, [B, R]."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    mask: torch.Tensor
    query_lengths: torch.Tensor
    response_lengths: torch.Tensor

    def rows(self, index: torch.Tensor) -> PPOBatch:
        return PPOBatch({k: v[index] for k, v in self.inputs.items()}, self.labels[index], self.mask[index],
                        self.query_lengths[index], self.response_lengths[index])


@dataclass
class Rollout:
    """Step 4's no-grad pass: policy and reference log-probs, values and the per-token KL, each [B, R]."""

    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor


@dataclass
class StepInProgress:
    """A step past its rollout (steps 1-6 done): what its optimisation epochs and statistics need, and how far
    they got. Saved with a checkpoint when a stop interrupts the step."""

    batch: PPOBatch
    rollout: Rollout
    raw_scores: torch.Tensor
    scores: torch.Tensor
    non_score_rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl_coef: float
    learning_rate: float
    timing: dict
    seconds: float
    train_stats: list = field(default_factory=list)
    epochs_done: int = 0
    stopped_early: bool = False


class StepInterrupted(Exception):
    """``should_stop`` asked to stop between two optimisation epochs of a step; the step can be resumed."""


class PPOTrainer:
    """PPO for language models with TRL v0.7's API: ``step(queries, responses, scores) -> stats``."""

    def __init__(self, config: PPOConfig | None = None, model: PreTrainedModelWrapper | None = None,
                 ref_model: nn.Module | None = None, tokenizer=None, dataset=None,
                 optimizer: torch.optim.Optimizer | None = None, data_collator=None,
                 num_shared_layers: int | None = None, lr_scheduler=None):
        self.config = config = config if config is not None else PPOConfig()
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
        if not isinstance(model, PreTrainedModelWrapper):
            raise TypeError(
                "model must be a value-head model, e.g. AutoModelForCausalLMWithValueHead.from_pretrained(path), "
                f"got {type(model).__name__}")
        self.accelerator = Accelerator(
            log_with=config.log_with, project_config=ProjectConfiguration(**config.project_kwargs),
            **config.accelerator_kwargs)
        set_seed(config.seed + self.accelerator.process_index)  # each process samples differently
        # as in TRL: methods a subclass decorates with PPODecorators.empty_device_cache() follow this config
        PPODecorators.optimize_device_cache = config.optimize_device_cache

        self.is_encoder_decoder = model.is_encoder_decoder
        self.is_peft_model = model.is_peft_model
        if ref_model is None:
            ref_model = None if self.is_peft_model else create_reference_model(model, num_shared_layers)
        elif num_shared_layers is not None:
            warnings.warn("num_shared_layers is ignored when a ref_model is given", stacklevel=2)
        disable_dropout_in_model(model)
        if ref_model is not None:
            disable_dropout_in_model(ref_model)
        self.model = model  # wrapped by accelerate below
        self.tokenizer = tokenizer
        self.data_collator = data_collator or collate_as_lists
        self.dataset = dataset
        dataloader = self.prepare_dataloader(dataset, self.data_collator) if dataset is not None else None
        if optimizer is None:
            # Adam; fused (one kernel for all parameters) where torch has it, the same update with less overhead
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                         fused=self.accelerator.device.type in ("cpu", "cuda") or None)
        self.kl_ctl = (AdaptiveKLController(config.init_kl_coef, config.target, config.horizon)
                       if config.adap_kl_ctrl else FixedKLController(config.init_kl_coef))
        self.running = RunningMoments()
        self.model, self.optimizer, self.dataloader, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, dataloader, lr_scheduler)
        self.ref_model = (self.accelerator.prepare_model(ref_model, evaluation_mode=True)
                          if ref_model is not None else None)
        self._logits_to_keep = not self.is_encoder_decoder and _accepts(self._base_model, "logits_to_keep")
        self.generation_temperature = 1.0  # set by generate(temperature=...); step() scores with the same
        # Rollout sampling: our loop where it draws what generate() would; a preallocated ("static") KV cache and a
        # compiled decoding step (CUDA graphs on a GPU) are opt-in: compiling costs time per new shape.
        self.fast_generation = True
        self.generation_cache = "dynamic"
        self.compile_generation = False
        self.current_step = 0
        self.should_stop = None  # a callable: stop a step between its optimisation epochs when it says so
        self.pending_step: StepInProgress | None = None  # a step a stop interrupted, to finish with resume_step()
        if config.log_with is not None:
            # trackers take flat scalar hyperparameters (tensorboard refuses None and dicts)
            hyperparameters = {key: value if isinstance(value, int | float | str | bool) else str(value)
                               for key, value in flatten_dict(config.to_dict()).items()}
            self.accelerator.init_trackers(
                config.tracker_project_name, config=hyperparameters, init_kwargs=config.tracker_kwargs)

    # ------------------------------------------------------------------ step
    def step(self, queries: list[torch.Tensor], responses: list[torch.Tensor], scores: list[torch.Tensor],
             response_masks: list[torch.Tensor] | None = None) -> dict:
        """One PPO step on a batch of episodes; returns the statistics of docs/algorithms/ppo.md.

        ``queries``/``responses`` are 1-D token tensors (responses without the prompt, and for encoder-decoders
        without the decoder start token, as ``generate`` returns them), ``scores`` one 0-d tensor each.
        ``response_masks`` (1 = train on this response token) may exclude tokens, e.g. tool outputs. Log-probs
        are taken at ``self.generation_temperature``, which ``generate(temperature=...)`` sets.

        When ``should_stop`` (a callable, None by default) says so after an optimisation epoch, the step stops
        there and raises `StepInterrupted`; ``save_checkpoint`` then keeps the step's state, and after
        ``load_checkpoint``, ``resume_step()`` finishes it as if it had never stopped.
        """
        timing, start = {}, time.perf_counter()
        raw_scores = self._check_inputs(queries, responses, scores, response_masks)             # 1
        scores = self._scale_scores(raw_scores)                                                 # 2
        batch = self._prepare_model_inputs(queries, responses, response_masks)                  # 3
        with _timer(timing, "time/ppo/forward_pass"):
            rollout = self._rollout(batch)                                                      # 4
        self._free_device_cache()
        with _timer(timing, "time/ppo/compute_rewards"):
            kl_coef = self.kl_ctl.value
            rewards, non_score_rewards = self._compute_rewards(scores, rollout.kl, batch.mask)  # 5
        with _timer(timing, "time/ppo/compute_advantages"):
            advantages, returns = self._compute_advantages(rollout.values, rewards, batch.mask)  # 6
        work = StepInProgress(batch, rollout, raw_scores, scores, non_score_rewards, advantages, returns, kl_coef,
                              self.optimizer.param_groups[0]["lr"], timing, time.perf_counter() - start)
        return self._finish_step(work)

    def resume_step(self) -> dict:
        """Finish the step a stop interrupted (restored by ``load_checkpoint``); its statistics, as ``step``'s."""
        if self.pending_step is None:
            raise RuntimeError("no interrupted step to resume: load_checkpoint() a checkpoint saved mid-step")
        work, self.pending_step = self.pending_step, None
        return self._finish_step(work)

    def _finish_step(self, work: StepInProgress) -> dict:
        """Steps 7-10 of a prepared step, from its first epoch not done yet."""
        start = time.perf_counter()
        try:
            with _timer(work.timing, "time/ppo/optimize_step"):
                self._optimize(work)                                                            # 7-9
        except StepInterrupted:
            work.seconds += time.perf_counter() - start
            self.pending_step = work
            raise
        self._free_device_cache()
        with _timer(work.timing, "time/ppo/calc_stats"):
            stats = self._record_step_stats(work)                                               # 10
        self.kl_ctl.update(stats["objective/kl"], self.config.batch_size * self.accelerator.num_processes)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        if stats["objective/kl"] < -1:
            warnings.warn(
                f"objective/kl is {stats['objective/kl']:.2f}: negative KL usually means generation forced or "
                "suppressed tokens (min_length, bad words, a top_k/top_p the step does not know)", stacklevel=3)
        stats.update(work.timing, **{"time/ppo/total": work.seconds + time.perf_counter() - start})
        self.current_step += 1
        return stats

    # 1
    def _check_inputs(self, queries, responses, scores, response_masks) -> torch.Tensor:
        """Validate the three lists; return the scores as a float tensor [B] on the device."""
        batch_size = self.config.batch_size
        named = {"queries": queries, "responses": responses, "scores": scores}
        if response_masks is not None:
            named["response_masks"] = response_masks
        for name, value in named.items():
            if not isinstance(value, list | tuple):
                raise TypeError(f"{name} must be a list of tensors, got {type(value).__name__}")
            if len(value) != batch_size:
                raise ValueError(
                    f"{name} has {len(value)} elements but config.batch_size is {batch_size}: "
                    "step() takes exactly batch_size episodes (change PPOConfig.batch_size or the batch)")
        for i, score in enumerate(scores):
            if not isinstance(score, torch.Tensor) or score.numel() != 1 or score.dim() > 1:
                shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
                raise ValueError(f"scores[{i}] must be a 0-d or 1-element tensor (one score per episode), got {shape}")
        for i, (query, response) in enumerate(zip(queries, responses, strict=True)):
            for name, tokens in (("queries", query), ("responses", response)):
                if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
                    shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
                    raise ValueError(f"{name}[{i}] must be a 1-D tensor of token ids, got {shape}")
            if len(response) == 0:
                raise ValueError(f"responses[{i}] is empty: every response needs at least one token")
            if len(query) == 0 and not self.is_encoder_decoder:
                raise ValueError(f"queries[{i}] is empty: a decoder-only model needs at least one query token")
            if response_masks is not None:
                if response_masks[i].shape != response.shape:
                    raise ValueError(f"response_masks[{i}] has shape {tuple(response_masks[i].shape)} but "
                                     f"responses[{i}] has {tuple(response.shape)}; give one mask value per token")
                if not response_masks[i].any():
                    raise ValueError(f"response_masks[{i}] selects no token: nothing of episode {i} could be trained")
        return torch.stack([score.reshape(()) for score in scores]).float().to(self.accelerator.device)

    # 2
    def _scale_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Optional running-moments scaling (or standardisation), then optional clipping."""
        if self.config.use_score_scaling:
            self.running.update(self.accelerator.gather(scores))
            scale = self.running.std + torch.finfo(scores.dtype).eps
            scores = (scores - self.running.mean) / scale if self.config.use_score_norm else scores / scale
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        return scores

    # 3
    def _prepare_model_inputs(self, queries, responses, response_masks) -> PPOBatch:
        """Left-pad queries, right-pad responses; decoder-only models see them as one sequence."""
        device = self.accelerator.device
        pad = self._pad_token_id
        query_ids, query_mask = _pad([q.to(device) for q in queries], pad, "left")
        labels, response_mask = _pad([r.to(device) for r in responses], pad, "right")
        mask = response_mask.float()
        if response_masks is not None:
            mask = mask * pad_sequence([m.to(device).float() for m in response_masks], batch_first=True)
        if self.is_encoder_decoder:
            start = torch.full_like(labels[:, :1], self._decoder_start_token_id)
            inputs = {
                "input_ids": query_ids,
                "attention_mask": query_mask.long(),
                "decoder_input_ids": torch.cat([start, labels[:, :-1]], dim=1),
                "decoder_attention_mask": torch.cat([torch.ones_like(start), response_mask[:, :-1].long()], dim=1),
            }
        else:
            # The last response token predicts nothing we train on, so it is not fed.
            attention_mask = torch.cat([query_mask, response_mask], dim=1)[:, :-1].long()
            inputs = {
                "input_ids": torch.cat([query_ids, labels], dim=1)[:, :-1],
                "attention_mask": attention_mask,
                # Positions as generation saw them under left padding.
                "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            }
        return PPOBatch(inputs, labels, mask, query_mask.sum(1), response_mask.sum(1))

    # 4
    @torch.no_grad()
    def _rollout(self, batch: PPOBatch) -> Rollout:
        """Policy and reference pass in eval mode, in chunks of mini_batch_size; KL per token by kl_penalty."""
        self.model.eval()
        parts = []
        for index in torch.arange(len(batch.labels), device=batch.labels.device).split(self.config.mini_batch_size):
            chunk = batch.rows(index)
            logits, values = self._forward(self.model, chunk)
            ref_logits = self._reference_logits(chunk)
            if self.config.kl_penalty == "full":  # exact KL needs the whole distributions: reduce them here
                logprobs, ref_all = logprobs_from_logits(logits, None, False), logprobs_from_logits(ref_logits, None, False)
                kl = kl_per_token(logprobs, ref_all, "full")
                logprobs = logprobs.gather(-1, chunk.labels[..., None]).squeeze(-1)
                ref_logprobs = ref_all.gather(-1, chunk.labels[..., None]).squeeze(-1)
            else:
                logprobs = logprobs_from_logits(logits, chunk.labels)
                ref_logprobs = logprobs_from_logits(ref_logits, chunk.labels)
                kl = kl_per_token(logprobs, ref_logprobs, self.config.kl_penalty)
            parts.append((logprobs, ref_logprobs, values, kl))
        logprobs, ref_logprobs, values, kl = (torch.cat(tensors) * batch.mask for tensors in zip(*parts, strict=True))
        return Rollout(logprobs, ref_logprobs, values, kl)

    # 5
    def _compute_rewards(self, scores, kl, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """reward_t = -kl_coef * kl_t, plus the score at each episode's last trained token."""
        non_score_rewards = -self.kl_ctl.value * kl * mask
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
        rewards = non_score_rewards.clone()
        rewards[torch.arange(len(scores), device=scores.device), last] += scores
        return rewards, non_score_rewards

    # 6
    def _compute_advantages(self, values, rewards, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the trained tokens, then advantages whitened over the batch."""
        whiten = masked_whiten if mask.sum() > 1 else _centre  # a lone token has no variance: only centre it
        if self.config.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(values, rewards, mask, self.config.gamma, self.config.lam)
        return (whiten(advantages, mask) * mask).detach(), returns.detach()

    # 7 and 9
    def _optimize(self, work: StepInProgress) -> None:
        """ppo_epochs shuffled passes of backward batches split into mini batches; early stopping per epoch. A
        stop asked for (``should_stop``) between epochs raises StepInterrupted, the epochs done kept in ``work``."""
        config, batch = self.config, work.batch
        self.model.train()  # dropout was switched off at construction: train mode only matters for hooks
        while work.epochs_done < config.ppo_epochs and not work.stopped_early:
            if work.epochs_done and self.should_stop is not None and self.should_stop():
                raise StepInterrupted(f"stopped after epoch {work.epochs_done} of {config.ppo_epochs}")
            order = torch.randperm(config.batch_size, device=batch.labels.device)
            epoch_stats = []
            for backward_batch in order.split(config.backward_batch_size):
                mini_batches = backward_batch.split(config.mini_batch_size)
                updated = False
                for i, index in enumerate(mini_batches):
                    sync = i == len(mini_batches) - 1
                    with self.accelerator.no_sync(self.model) if not sync else nullcontext():
                        loss, mini_stats = self._loss(                                              # 8
                            batch.rows(index), work.rollout.logprobs[index], work.rollout.values[index],
                            work.advantages[index], work.returns[index])
                        self.accelerator.backward(loss / config.gradient_accumulation_steps)
                    updated |= not mini_stats.pop("skipped")
                    epoch_stats.append(mini_stats)
                self._optimizer_step(updated)
            work.train_stats += epoch_stats
            work.epochs_done += 1
            work.stopped_early = config.early_stopping and self._policy_kl(epoch_stats) > 1.5 * config.target_kl

    # 8
    def _loss(self, batch: PPOBatch, old_logprobs, old_values, advantages, returns) -> tuple[torch.Tensor, dict]:
        """Clipped policy loss + vf_coef * clipped value loss, and the mini batch's diagnostics."""
        config, mask = self.config, batch.mask
        logits, values = self._forward(self.model, batch)
        logprobs = logprobs_from_logits(logits, batch.labels)
        pg_loss, ratio, pg_clipfrac = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, config.cliprange)
        vf_loss, vf_clipfrac = clipped_value_loss(values, old_values, returns, mask, config.cliprange_value)
        loss = pg_loss + config.vf_coef * vf_loss
        mean_ratio = masked_mean(ratio.detach(), mask)
        skipped = bool(mean_ratio > config.ratio_threshold)
        if skipped:
            warnings.warn(
                f"mean ratio {mean_ratio.item():.2f} > ratio_threshold {config.ratio_threshold}: skipping "
                "this mini batch's update", stacklevel=3)
            loss = loss * 0.0  # still backward, so that every process takes part in the gradient sync
        with torch.no_grad():
            log_ratio = logprobs - old_logprobs
            stats = {
                "ppo/loss/policy": pg_loss.detach(),
                "ppo/loss/value": vf_loss.detach(),
                "ppo/loss/total": (pg_loss + config.vf_coef * vf_loss).detach(),
                "ppo/policy/entropy": masked_mean(entropy_from_logits(logits.detach()), mask),
                "ppo/policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
                "ppo/policy/policykl": masked_mean(-log_ratio, mask),
                "ppo/policy/clipfrac": pg_clipfrac,
                "ppo/policy/ratio": ratio.detach()[mask.bool()],
                "ppo/val/vpred": masked_mean(values.detach(), mask),
                "ppo/val/error": masked_mean((values.detach() - returns) ** 2, mask),
                "ppo/val/clipfrac": vf_clipfrac,
                "skipped": skipped,
            }
        return loss, stats

    def _optimizer_step(self, updated: bool) -> None:
        """Clip and step unless every mini batch of the backward batch was skipped (on every process)."""
        if self.accelerator.num_processes > 1:
            updated = bool(self.accelerator.reduce(torch.tensor(float(updated), device=self.accelerator.device)))
        if updated:
            if self.config.max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _policy_kl(self, epoch_stats: list[dict]) -> float:
        """The epoch's mean policy KL over mini batches and processes."""
        policy_kl = torch.stack([s["ppo/policy/policykl"] for s in epoch_stats]).mean()
        return self.accelerator.reduce(policy_kl, "mean").item()

    # 10
    def _record_step_stats(self, work: StepInProgress) -> dict:
        """The statistics of docs/algorithms/ppo.md, reduced over processes (means) or gathered (distributions)."""
        batch, rollout, advantages, returns, train_stats = (work.batch, work.rollout, work.advantages, work.returns,
                                                             work.train_stats)
        mask = batch.mask
        kl_dist = self._gather((rollout.kl * mask).sum(1))
        scores = self._gather(work.scores)
        query_lengths = self._gather(batch.query_lengths.float())
        response_lengths = self._gather(batch.response_lengths.float())
        selected = mask.bool()
        value_var, return_var = _var(rollout.values, mask), _var(returns, mask)
        means = {
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean(),
            "ppo/mean_non_score_reward": masked_mean(work.non_score_rewards, mask),
            "ppo/policy/advantages_mean": masked_mean(advantages, mask),
            "ppo/returns/mean": masked_mean(returns, mask),
            "ppo/returns/var": return_var,
            "ppo/val/mean": masked_mean(rollout.values, mask),
            "ppo/val/var": value_var,
        }
        for key in train_stats[0]:
            if key != "ppo/policy/ratio":
                means[key] = torch.stack([s[key] for s in train_stats]).mean()
        means = self._mean_over_processes(means)
        stats = {
            "objective/kl": kl_dist.mean().item(),
            "objective/kl_dist": kl_dist,
            "objective/logprobs": self._gather(rollout.logprobs[selected]),
            "objective/ref_logprobs": self._gather(rollout.ref_logprobs[selected]),
            "objective/kl_coef": work.kl_coef,
            "ppo/mean_scores": scores.mean().item(),
            "ppo/std_scores": scores.std().item() if len(scores) > 1 else 0.0,
            "tokens/queries_len_mean": query_lengths.mean().item(),
            "tokens/queries_len_std": query_lengths.std().item() if len(query_lengths) > 1 else 0.0,
            "tokens/queries_dist": query_lengths,
            "tokens/responses_len_mean": response_lengths.mean().item(),
            "tokens/responses_len_std": response_lengths.std().item() if len(response_lengths) > 1 else 0.0,
            "tokens/responses_dist": response_lengths,
            "ppo/policy/advantages": self._gather(advantages[selected]),
            "ppo/policy/ratio": self._gather(torch.cat([s["ppo/policy/ratio"] for s in train_stats])),
            "ppo/learning_rate": work.learning_rate,
            **means,
        }
        stats["ppo/val/var_explained"] = 1 - stats["ppo/val/error"] / stats["ppo/returns/var"]
        return {key: value.cpu().numpy() if isinstance(value, torch.Tensor) else value for key, value in stats.items()}

    # ------------------------------------------------------------------ forward passes
    def _forward(self, model, batch: PPOBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (divided by the sampling temperature) and values over the response window, [B, R, V] and [B, R]."""
        width = batch.labels.shape[1]
        extra = {"logits_to_keep": width} if self._logits_to_keep else {}
        logits, _, values = model(**batch.inputs, **extra)
        logits = logits[:, -width:]
        if self.generation_temperature != 1.0:  # no [B, R, V] copy for nothing
            logits = logits / self.generation_temperature
        return logits, values[:, -width:]

    def _reference_logits(self, batch: PPOBatch) -> torch.Tensor:
        if self.ref_model is not None:
            return self._forward(self.ref_model, batch)[0]
        with self.accelerator.unwrap_model(self.model).pretrained_model.disable_adapter():
            return self._forward(self.model, batch)[0]

    # ------------------------------------------------------------------ generation, data, logging, saving
    @torch.no_grad()
    def generate(self, query_tensor: torch.Tensor | list[torch.Tensor], length_sampler=None,
                 batch_size: int | None = None, return_prompt: bool = True, remove_padding: bool = True,
                 **generation_kwargs):
        """Sample responses with the policy's ``generate``.

        One 1-D query gives a [1, L] tensor; a list gives a list of 1-D tensors, generated ``batch_size`` at a
        time (default: all at once) with left padding, cut after the first EOS (kept). ``length_sampler()``
        draws ``max_new_tokens`` per batch. A ``temperature`` is remembered so that ``step`` scores with it.
        """
        single = isinstance(query_tensor, torch.Tensor)
        if single and query_tensor.dim() != 1:
            raise ValueError(f"query_tensor must be 1-D (or a list of 1-D tensors), got shape {tuple(query_tensor.shape)}")
        queries = [query_tensor] if single else list(query_tensor)
        if not queries:
            raise ValueError("generate() needs at least one query")
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        # the temperature sampling uses: the call's, else the model's generation_config default
        temperature = generation_kwargs.get("temperature", getattr(self._base_model.generation_config, "temperature", None))
        self.generation_temperature = float(temperature or 1.0)
        generation_kwargs.setdefault("pad_token_id", self._pad_token_id)
        responses, batch_size = [], batch_size or len(queries)
        for start in range(0, len(queries), batch_size):
            chunk = [q.to(self.accelerator.device) for q in queries[start:start + batch_size]]
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = length_sampler()
            input_ids, attention_mask = _pad(chunk, self._pad_token_id, "left")
            generated = self._sample(model, input_ids, attention_mask.long(), generation_kwargs)
            keep = self._response_lengths(generated) if remove_padding else [generated.shape[1]] * len(chunk)
            for query, tokens, length in zip(chunk, generated, keep, strict=True):
                response = tokens[:length]
                if return_prompt and not self.is_encoder_decoder:
                    response = torch.cat([query, response])
                responses.append(response)
        return responses[0][None] if single else responses

    def _sample(self, model: PreTrainedModelWrapper, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generation_kwargs: dict) -> torch.Tensor:
        """The new tokens [B, N] for left-padded queries: our sampling loop where it draws what ``generate``
        would (see ``trainer/generation.py``), else ``generate``."""
        settings = (fast_sampling_settings(model.pretrained_model, input_ids.shape[1], **generation_kwargs)
                    if self.fast_generation else None)
        if settings is not None:
            return sample_tokens(model.pretrained_model, input_ids, attention_mask, settings, self.generation_cache,
                                 self.compile_generation)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)
        return output[:, 1:] if self.is_encoder_decoder else output[:, input_ids.shape[1]:]

    def _response_lengths(self, generated: torch.Tensor) -> list[int]:
        """Tokens up to and including the first EOS (everything when there is none)."""
        eos = self._eos_token_ids
        if not eos:
            return [generated.shape[1]] * len(generated)
        is_eos = torch.isin(generated, torch.tensor(eos, device=generated.device))
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, generated.shape[1])
        return lengths.tolist()

    def prepare_dataloader(self, dataset, data_collator=None) -> DataLoader:
        """A shuffled DataLoader of batch_size rows (dropping the last partial batch)."""
        if self.config.remove_unused_columns and hasattr(dataset, "column_names"):
            keep = set(inspect.signature(self._base_model.forward).parameters) | {"query", "response", "label"}
            unused = [name for name in dataset.column_names if name not in keep]
            dataset = dataset.remove_columns(unused) if unused else dataset
        return DataLoader(dataset, batch_size=self.config.batch_size, collate_fn=data_collator or collate_as_lists,
                          shuffle=True, drop_last=True)

    def log_stats(self, stats: dict, batch: dict, rewards, columns_to_log=("query", "response")) -> None:
        """Add env/reward_* to ``stats`` and send the scalars (and a sample table with wandb) to the tracker."""
        if isinstance(rewards, list | tuple):
            rewards = torch.stack([torch.as_tensor(r).reshape(()) for r in rewards])
        rewards = self._gather(rewards.float().to(self.accelerator.device)).cpu()
        stats["env/reward_mean"] = rewards.mean().item()
        stats["env/reward_std"] = rewards.std().item() if len(rewards) > 1 else 0.0
        stats["env/reward_dist"] = rewards.numpy()
        if self.config.log_with is None or not self.accelerator.is_main_process:
            return
        logs = {key: value for key, value in stats.items() if np.ndim(value) == 0}
        if self.config.log_with == "wandb" and all(column in batch for column in columns_to_log):
            import wandb

            rows = [[*values, reward] for *values, reward in zip(*(batch[c] for c in columns_to_log),
                                                                rewards.tolist(), strict=False)]
            logs["game_log"] = wandb.Table(columns=[*columns_to_log, "reward"], rows=rows)
        self.accelerator.log(logs, step=self.current_step)

    def save_pretrained(self, save_directory: str) -> None:
        """Save the policy (and value head) and the tokenizer; only the main process writes."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(save_directory)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(save_directory)

    def save_checkpoint(self, directory) -> None:
        """Everything a resumed run needs, into ``directory``: the trainable weights (adapters and value head
        only, for a PEFT policy), optimizer, LR schedule, KL coefficient, score statistics, each process's RNG, and
        each process's part of a step a stop interrupted (``pending_step``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
            save_file(trainable, directory / CHECKPOINT_WEIGHTS)
            torch.save({
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "kl_coef": self.kl_ctl.value,
                "running_moments": vars(self.running),
                "current_step": self.current_step,
                "generation_temperature": self.generation_temperature,
            }, directory / CHECKPOINT_STATE)
        rank = self.accelerator.process_index
        torch.save(capture_rng_state(), directory / f"rng_state_{rank}.pt")
        pending = directory / f"{CHECKPOINT_PENDING_STEP}_{rank}.pt"
        if self.pending_step is not None:
            torch.save(self.pending_step, pending)
        else:
            pending.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, directory) -> None:
        """Restore what ``save_checkpoint`` saved, so that training continues as if it had not stopped."""
        directory = Path(directory)
        model = self.accelerator.unwrap_model(self.model)
        trainable = load_file(directory / CHECKPOINT_WEIGHTS)
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(trainable) != expected:
            raise ValueError(f"{directory} does not fit this model: it holds {len(trainable)} trainable tensors, "
                             f"the model has {len(expected)} (different model or PEFT settings?)")
        model.load_state_dict(trainable, strict=False)
        state = torch.load(directory / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_ctl.value = state["kl_coef"]
        vars(self.running).update(state["running_moments"])
        self.current_step = state["current_step"]
        self.generation_temperature = state["generation_temperature"]
        rank = self.accelerator.process_index
        rng = directory / f"rng_state_{rank}.pt"
        if rng.is_file():
            restore_rng_state(torch.load(rng, weights_only=False))
        pending = directory / f"{CHECKPOINT_PENDING_STEP}_{rank}.pt"
        self.pending_step = (torch.load(pending, map_location=self.accelerator.device, weights_only=False)
                             if pending.is_file() else None)

    # ------------------------------------------------------------------ small helpers
    @property
    def _base_model(self) -> nn.Module:
        """The transformers model inside the value-head wrapper (and inside PEFT)."""
        model = self.accelerator.unwrap_model(self.model).pretrained_model
        return model.get_base_model() if self.is_peft_model else model

    @property
    def _pad_token_id(self) -> int:
        for source in (self.tokenizer, self._base_model.config):
            if getattr(source, "pad_token_id", None) is not None:
                return source.pad_token_id
        eos = self._eos_token_ids
        return eos[0] if eos else 0  # only fills padded slots, which every mask excludes

    @property
    def _eos_token_ids(self) -> list[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(self._base_model.generation_config, "eos_token_id", None)
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def _decoder_start_token_id(self) -> int:
        config = self._base_model.config
        start = getattr(config, "decoder_start_token_id", None)
        return start if start is not None else self._pad_token_id

    def _free_device_cache(self) -> None:
        """With optimize_device_cache, hand cached accelerator memory back between the phases of a step."""
        if self.config.optimize_device_cache:
            free_accelerator_memory()

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All processes' values of a 1-D tensor, concatenated (lengths may differ between processes)."""
        if self.accelerator.num_processes == 1:
            return tensor.detach()
        padded = self.accelerator.pad_across_processes(tensor.detach().float(), pad_index=math.nan)
        gathered = self.accelerator.gather(padded)
        return gathered[~gathered.isnan()]

    def _mean_over_processes(self, scalars: dict[str, torch.Tensor]) -> dict[str, float]:
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.accelerator.device)
                              for v in scalars.values()])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, "mean")
        return dict(zip(scalars, values.tolist(), strict=True))


def capture_rng_state() -> dict:
    """The state of every random generator this process draws from (python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Set every random generator back to ``capture_rng_state()``'s state."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def collate_as_lists(rows: list[dict]) -> dict[str, list]:
    """Rows to a dict of lists (tensors of different lengths stay separate)."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def _pad(sequences: list[torch.Tensor], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1-D tensors into [B, T] on ``side``; returns the ids and a bool mask of the real tokens."""
    ids = pad_sequence(sequences, batch_first=True, padding_value=pad_id, padding_side=side)
    lengths = torch.tensor([len(s) for s in sequences], device=ids.device)[:, None]
    positions = torch.arange(ids.shape[1], device=ids.device)
    return ids, positions >= ids.shape[1] - lengths if side == "left" else positions < lengths


def _accepts(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _centre(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    return values - masked_mean(values, mask) if shift_mean else values


def _var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_var(values, mask) if mask.sum() > 1 else torch.tensor(math.nan, device=values.device)


@contextmanager
def _timer(timing: dict, key: str):
    """``with _timer(timing, key):`` stores the block's seconds in ``timing[key]``."""
    start = time.perf_counter()
    yield
    timing[key] = time.perf_counter() - start
