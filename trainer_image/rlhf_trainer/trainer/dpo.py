"""DPOTrainer: Direct Preference Optimization with TRL 1.16's API (docs/algorithms/dpo.md).

    from rlhf_trainer import DPOConfig, DPOTrainer
    trainer = DPOTrainer(model="path/or/id", args=DPOConfig(output_dir="out"), train_dataset=pairs)
    trainer.train()

One micro-batch of B pairs, in the order of the algorithm page: the policy's summed log-probs of the 2B
completions (one forward pass), the reference's (precomputed columns, or a no-grad pass of the reference), the
losses of ``loss_type`` weighted by ``loss_weights``, and the metrics TRL logs.

The reference is ``ref_model`` when given, else a frozen copy of the policy as it was constructed (TRL reloads
``config._name_or_path`` instead, which differs for a model modified in memory), or under PEFT the policy with its
adapters off, or a frozen copy of a trained adapter (``"ref"``) — never a second full model.

Faster than TRL where it is free (each fast path is checked against the plain computation in the tests):
``padding_free`` packs the 2B sequences without padding, ``chunked_lm_head`` feeds only completion tokens' hidden
states through the LM head, and ``precompute_ref_log_probs`` runs the reference once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, set_seed

from rlhf_trainer.trainer.completion_logprobs import TokenStats, completion_logprobs, stats_from_logits
from rlhf_trainer.trainer.dpo_config import DPOConfig, check_loss_settings
from rlhf_trainer.trainer.dpo_data import (
    BATCH_KEYS,
    REF_COLUMNS,
    SHARED_PROMPT,
    TOKEN_COLUMNS,
    PreferenceCollator,
    prepare_preference_dataset,
)
from rlhf_trainer.trainer.dpo_losses import LossSettings, PairTerms, preference_loss, wpo_weights
from rlhf_trainer.trainer.inputs import DatasetError, prepare_datasets, resolve_fast_path, to_dataset
from rlhf_trainer.trainer.sft import (
    check_documents_isolated,
    chunked_loss_supported,
    has_varlen_attention,
    output_layer,
)
from rlhf_trainer.trainer.utils import (
    Reference,
    disable_dropout_in_model,
    is_peft_model,
    load_processing_class,
    load_trained_model,
)


@dataclass
class CompletionLayout:
    """Where a batch's completion tokens are, in order: ``predictors`` (flat index into the [rows * W] positions
    whose output predicts the token), ``targets`` (the token) and ``sequence`` (which of the 2B sequences, chosen
    ones first); ``lengths`` / ``scored_lengths`` [2B] count each sequence's completion / scored tokens."""

    predictors: torch.Tensor
    targets: torch.Tensor
    sequence: torch.Tensor
    lengths: torch.Tensor
    scored_lengths: torch.Tensor

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> CompletionLayout:
        completion = batch["completion_mask"].bool()
        rows, width = completion.shape
        columns = torch.arange(width, device=completion.device)
        if "previous" in batch:  # shared prompts: the first rejected token follows the prompt's last token
            previous = batch["previous"]
        elif "sequence_index" in batch:  # packed: a sequence's first token has nothing before it
            previous = torch.where(batch["position_ids"] == 0, -1, columns - 1)
        else:
            previous = (columns - 1).expand(rows, width)
        scored = completion & (previous >= 0)
        flat_rows = torch.arange(rows, device=completion.device)[:, None] * width
        if "sequence_index" in batch:
            sequence = batch["sequence_index"][scored]
        else:
            sequence = torch.arange(rows, device=completion.device)[:, None].expand(rows, width)[scored]
        lengths = batch.get("completion_lengths")
        if lengths is None:
            lengths = completion.sum(1)
        scored_lengths = torch.zeros_like(lengths).index_add_(0, sequence, torch.ones_like(sequence))
        return cls((flat_rows + previous)[scored], batch["input_ids"][scored], sequence, lengths, scored_lengths)

    @property
    def num_pairs(self) -> int:
        return self.lengths.shape[0] // 2

    def sums(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sequence sums [2B] of per-token ``values`` (times ``weights``)."""
        values = values if weights is None else values * weights
        return torch.zeros(self.lengths.shape, dtype=values.dtype, device=values.device).index_add(
            0, self.sequence, values)

    def ld_weights(self, ld_alpha: float | None) -> torch.Tensor | None:
        """LD-DPO's token weights: 1 up to the shorter completion's length of the pair, ``ld_alpha`` past it."""
        if ld_alpha is None:
            return None
        chosen, rejected = self.scored_lengths.chunk(2)
        shared = torch.minimum(chosen, rejected).repeat(2)
        order = torch.arange(len(self.sequence), device=self.sequence.device)
        first = torch.full_like(self.scored_lengths, len(self.sequence)).scatter_reduce(
            0, self.sequence, order, "amin")
        rank = order - first[self.sequence]  # 0-based place of each token in its completion
        ones = torch.ones(rank.shape, device=rank.device)
        return torch.where(rank < shared[self.sequence], ones, ones * ld_alpha)


def sequence_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens of the batch's 2B sequences, a shared prompt counted for both (as a padded batch's attention mask)."""
    if "sequence_index" not in batch:
        return batch["attention_mask"].sum()
    index = batch["sequence_index"]
    return (index >= 0).sum() + 2 * (index == SHARED_PROMPT).sum()


def documents_isolated(model) -> bool:
    """Whether the model keeps sequences packed in one row apart (restarting position ids, no attention mask)."""
    try:
        check_documents_isolated(model)
    except (ValueError, TypeError):
        return False
    return True


@torch.no_grad()
def prompt_sharing_works(model, pad_token_id: int) -> bool:
    """Whether the model gives a padded batch's completion log-probs when each pair's prompt is run once (a 4D
    attention mask over prompt + chosen + rejected): checked on two random probe pairs."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=generator).tolist()

    rows = [{"prompt_ids": ids(4), "chosen_ids": ids(3), "rejected_ids": ids(5)},
            {"prompt_ids": ids(2), "chosen_ids": ids(4), "rejected_ids": ids(2)}]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        results = []
        for collator in (PreferenceCollator(pad_token_id), PreferenceCollator(pad_token_id, share_prompts=True)):
            batch = {key: value.to(device) for key, value in collator(rows).items()}
            layout = CompletionLayout.of(batch)
            model_inputs = {key: value for key, value in batch.items() if key not in BATCH_KEYS}
            logits = model(**model_inputs, use_cache=False).logits.flatten(0, 1)[layout.predictors]
            results.append(layout.sums(stats_from_logits(logits, layout.targets, stats=False).logps))
    except (TypeError, ValueError, RuntimeError):  # an attention that takes no 4D mask
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-4))


class SyncReferenceCallback(TrainerCallback):
    """TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): every ``ref_model_sync_steps`` optimizer steps,
    ``ref <- alpha * policy + (1 - alpha) * ref``."""

    def __init__(self, trainer: DPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.ref_model_sync_steps == 0:
            self.trainer.sync_reference()


class DPOTrainer(Trainer):
    """Trains a causal LM on preference pairs with DPO and its variants (TRL 1.16's constructor and metrics).

    ``model``: a hub id or path (loaded with ``args.model_init_kwargs``, float32 unless they give a dtype), a
    model, or a ``PeftModel``. ``processing_class`` defaults to the model's tokenizer (a missing pad token becomes
    EOS). ``peft_config`` trains adapters only. Evaluation reports ``eval_rewards/accuracies`` and the other metrics;
    ``compute_metrics`` receives each pair's (chosen, rejected) rewards as predictions.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a mean over the micro-batch's pairs; Trainer divides by GA

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None):
        if args is None:
            name = model if isinstance(model, str | os.PathLike) else model.config._name_or_path or "model"
            args = DPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DPO")
        if train_dataset is None:
            raise ValueError("DPOTrainer needs a train_dataset of preference pairs (prompt / chosen / rejected)")
        check_loss_settings(args)
        set_seed(args.seed)  # before adapters are initialised
        model = load_trained_model(model, args.model_init_kwargs, args.trust_remote_code, quantization_config)
        if ref_model is not None and ref_model is model:
            raise ValueError("model and ref_model must not be the same object: pass ref_model=None for a frozen copy "
                             "of the model as constructed")
        processing_class = load_processing_class(model, processing_class)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if args.pad_token is not None:
            if args.pad_token not in tokenizer.get_vocab():
                raise ValueError(f"pad_token {args.pad_token!r} is not in the tokenizer's vocabulary")
            tokenizer.pad_token = args.pad_token
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id

        trained_adapter = False
        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError("pass either a PeftModel or a peft_config, not both: merge and unload the adapter "
                                 "first to train a new one")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        elif is_peft_model(model) and ref_model is None:
            trained_adapter = True  # the reference is a frozen copy of this adapter, not the bare base model
        if is_peft_model(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        if args.sync_ref_model and (is_peft_model(model) or args.precompute_ref_log_probs):
            raise ValueError("sync_ref_model=True needs a reference model of its own to update: it does not work with "
                             "PEFT (the reference is the adapters-off policy) or precompute_ref_log_probs=True")
        if args.precompute_ref_log_probs and ref_model is None and not is_peft_model(model):
            self.reference = Reference(model)  # the policy before any step: no copy needed, it is used once
        else:
            self.reference = Reference.of(model, ref_model, trained_adapter)
        self.ref_model = self.reference.module if self.reference.module is not model else None  # TRL's attribute

        # the batches go to the reference too: a reference of its own must take them as well
        models = [model] + ([self.ref_model] if self.ref_model is not None else [])
        self.padding_free = resolve_fast_path(
            "padding_free", args.padding_free, args, lambda: all(documents_isolated(m) for m in models),
            f"this {model.config.model_type} model's attention does not keep sequences packed in one row apart "
            "(it ignores restarting position ids)")
        self.chunked_lm_head = resolve_fast_path(
            "chunked_lm_head", args.chunked_lm_head, args, lambda: chunked_loss_supported(model),
            f"this {model.config.model_type} model's logits are not its LM head's output (soft-capping or scaling "
            "after it, an adapter on the head, or no logits_to_keep)")
        self.chunked_reference_head = self.chunked_lm_head and (
            self.ref_model is None or chunked_loss_supported(self.ref_model))
        varlen = has_varlen_attention(model)
        self.share_prompts = resolve_fast_path(
            "share_prompts", args.share_prompts, args,
            lambda: (self.padding_free and args.truncation_mode == "keep_start" and not varlen
                     and all(prompt_sharing_works(m, tokenizer.pad_token_id) for m in models)),
            f"it needs padding_free, truncation_mode='keep_start' and an attention that takes a 4D mask (this "
            f"{model.config.model_type} model's {model.config._attn_implementation} attention does not give the "
            "padded log-probs that way)")
        if data_collator is None:
            data_collator = PreferenceCollator(
                tokenizer.pad_token_id, args.max_length, args.truncation_mode, args.pad_to_multiple_of,
                packed=self.padding_free, capacity=None if varlen else (args.max_length or 1), boundaries=varlen,
                share_prompts=self.share_prompts)

        self._tokenizer = tokenizer
        prepare = partial(prepare_preference_dataset, tokenizer=processing_class, max_length=args.max_length,
                          truncation_mode=args.truncation_mode, num_proc=args.dataset_num_proc)
        self._prepare = prepare
        train_dataset, eval_dataset = prepare_datasets(prepare, train_dataset, eval_dataset)

        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers)

        self.loss_settings = LossSettings(args.beta, args.label_smoothing, args.discopop_tau, args.f_divergence_type,
                                          args.f_alpha_divergence_coef)
        text_config = model.config.get_text_config()
        coef = args.router_aux_loss_coef
        self.router_aux_loss_coef = getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef
        if coef and not hasattr(text_config, "output_router_logits"):
            raise ValueError(f"router_aux_loss_coef={coef}, but {type(model).__name__} is not a Mixture-of-Experts "
                             "model returning router logits: leave router_aux_loss_coef unset")
        self.aux_loss_enabled = hasattr(text_config, "output_router_logits") and self.router_aux_loss_coef != 0.0
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0

        if self.reference.module is not None and self.reference.module is not model:
            self.reference.module = self.accelerator.prepare_model(self.reference.module, evaluation_mode=True)
        if args.sync_ref_model:
            self.add_callback(SyncReferenceCallback(self))
        if args.precompute_ref_log_probs:
            self._precompute_all()

    # ----- data -------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        self._signature_columns = TOKEN_COLUMNS + REF_COLUMNS

    def _precompute_all(self) -> None:
        """Reference log-probs of the training and evaluation pairs as columns, then the reference is let go."""
        args = self.args
        self.train_dataset = self.precompute_reference(
            self.train_dataset, args.precompute_ref_batch_size or args.per_device_train_batch_size)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: self.precompute_reference(
                data, args.precompute_ref_batch_size or args.per_device_eval_batch_size)
                for name, data in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self.precompute_reference(
                self.eval_dataset, args.precompute_ref_batch_size or args.per_device_eval_batch_size)
        if not is_peft_model(self.model):  # under PEFT the reference costs nothing to keep: the adapters off
            self.reference, self.ref_model = None, None

    @torch.no_grad()
    def precompute_reference(self, dataset, batch_size: int):
        """``dataset`` with the reference's summed completion log-probs as ``ref_chosen_logps`` /
        ``ref_rejected_logps``: one pass, in order, ``batch_size`` pairs at a time."""
        dataset = dataset.remove_columns([column for column in REF_COLUMNS if column in dataset.column_names])
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False,
                            num_workers=self.args.dataloader_num_workers)
        chosen, rejected = [], []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            layout = CompletionLayout.of(batch)
            with self.compute_loss_context_manager():
                ref = self._reference_logps(batch, layout, layout.ld_weights(self.args.ld_alpha)).float().cpu()
            chosen.append(ref[:layout.num_pairs])
            rejected.append(ref[layout.num_pairs:])
        dataset = dataset.add_column("ref_chosen_logps", torch.cat(chosen).tolist())
        return dataset.add_column("ref_rejected_logps", torch.cat(rejected).tolist())

    # ----- the computation ----------------------------------------------------------------------------------------

    def _token_stats(self, model, inputs, layout: CompletionLayout, *, stats: bool, chunked: bool):
        """Per-token log-probs (and statistics) of the scored completion tokens, and the model's output."""
        model_inputs = {key: value for key, value in inputs.items() if key not in BATCH_KEYS}
        if stats and self.aux_loss_enabled:
            model_inputs["output_router_logits"] = True
        width = inputs["input_ids"].shape[1]
        sum_sq = stats and self.args.use_weighting
        if chunked:
            output = model(**model_inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            # [:, -width:]: prompt-learning PEFT puts virtual tokens in front
            hidden = output.hidden_states[-1][:, -width:].flatten(0, 1)[layout.predictors]
            head = output_layer(model)
            return completion_logprobs(hidden, head.weight, head.bias, layout.targets, stats=stats,
                                       sum_sq=sum_sq), output
        output = model(**model_inputs, use_cache=False)
        logits = output.logits[:, -width:].flatten(0, 1)[layout.predictors]
        return stats_from_logits(logits, layout.targets, stats, sum_sq), output

    @torch.no_grad()
    def _reference_logps(self, inputs, layout: CompletionLayout, weights: torch.Tensor | None) -> torch.Tensor:
        with self.reference.model() as reference:
            stats, _ = self._token_stats(reference, inputs, layout, stats=False, chunked=self.chunked_reference_head)
        return layout.sums(stats.logps, weights)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        layout = CompletionLayout.of(inputs)
        weights = layout.ld_weights(self.args.ld_alpha)
        policy, output = self._token_stats(model, inputs, layout, stats=True, chunked=self.chunked_lm_head)
        logps = layout.sums(policy.logps, weights)
        if self.args.precompute_ref_log_probs:
            if "ref_chosen_logps" not in inputs:
                raise DatasetError("precompute_ref_log_probs=True, but the batch has no ref_chosen_logps column: a "
                                   "custom data_collator must pass ref_chosen_logps / ref_rejected_logps on")
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps.dtype)
        else:
            ref = self._reference_logps(inputs, layout, weights).to(logps.dtype)
        pairs = layout.num_pairs
        chosen_tokens = layout.sequence < pairs
        terms = PairTerms(
            logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:], layout.lengths[:pairs], layout.lengths[pairs:],
            chosen_token_nll=-policy.logps[chosen_tokens].mean(), f_divergence_type=self.args.f_divergence_type,
            f_alpha_divergence_coef=self.args.f_alpha_divergence_coef)
        pair_weights = None
        if self.args.use_weighting:
            pair_weights = wpo_weights(policy.logps, policy.log_sum_sq, layout.sequence, layout.scored_lengths)
        loss = preference_loss(terms, self.loss_settings, self.args.loss_type, self.args.loss_weights, pair_weights)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * output.aux_loss
            self._metrics[mode]["aux_loss"].append(self._gather_mean(output.aux_loss.detach()))
        self._record_metrics(mode, inputs, layout, policy, terms)
        if return_outputs:
            beta = self.args.beta
            rewards = torch.stack([beta * terms.chosen_logratios, beta * terms.rejected_logratios], dim=1)
            return loss, rewards.detach()
        return loss

    # ----- metrics --------------------------------------------------------------------------------------------------

    def _gather_sum(self, value: torch.Tensor) -> float:
        return float(self.accelerator.gather_for_metrics(value.detach().float().reshape(1)).sum())

    def _gather_mean(self, values: torch.Tensor) -> float:
        return float(self.accelerator.gather_for_metrics(values.detach().float().reshape(-1)).mean())

    def _token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        count = self._gather_sum(mask.sum())
        return self._gather_sum(values.float()[mask].sum()) / count if count else 0.0

    def _record_metrics(self, mode: str, inputs, layout: CompletionLayout, policy: TokenStats, terms: PairTerms
                        ) -> None:
        metrics, beta = self._metrics[mode], self.args.beta
        chosen = layout.sequence < layout.num_pairs
        metrics["entropy"].append(self._token_mean(policy.entropy, torch.ones_like(chosen)))
        if mode == "train":
            self._total_train_tokens += int(self._gather_sum(sequence_tokens(inputs))) // self._tensor_parallel_size()
        metrics["num_tokens"] = [self._total_train_tokens]
        metrics["logits/chosen"].append(self._token_mean(policy.mean_logit, chosen))
        metrics["logits/rejected"].append(self._token_mean(policy.mean_logit, ~chosen))
        metrics["mean_token_accuracy"].append(self._token_mean(policy.is_top1, chosen))
        chosen_rewards, rejected_rewards = beta * terms.chosen_logratios, beta * terms.rejected_logratios
        metrics["rewards/chosen"].append(self._gather_mean(chosen_rewards))
        metrics["rewards/rejected"].append(self._gather_mean(rejected_rewards))
        metrics["rewards/accuracies"].append(self._gather_mean(chosen_rewards > rejected_rewards))
        metrics["rewards/margins"].append(self._gather_mean(chosen_rewards - rejected_rewards))
        metrics["logps/chosen"].append(self._gather_mean(terms.chosen_logps))
        metrics["logps/rejected"].append(self._gather_mean(terms.rejected_logps))

    def _tensor_parallel_size(self) -> int:
        config = getattr(self.accelerator, "parallelism_config", None)
        return config.tp_size if config is not None else 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ----- evaluation and the reference --------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss; for compute_metrics, each pair's (chosen, rejected) rewards beta * log ratio as predictions."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), rewards, torch.zeros(len(rewards), device=rewards.device)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """As Trainer's, and a dataset passed here is prepared (and given reference log-probs) as at construction."""
        if eval_dataset is None or isinstance(eval_dataset, str):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        datasets = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
        metrics = {}
        for name, data in datasets.items():
            data = self._prepare(to_dataset(data, "eval_dataset"), "eval_dataset")
            if self.args.precompute_ref_log_probs:
                data = self._with_reference_columns(data)
            prefix = metric_key_prefix if name is None else f"{metric_key_prefix}_{name}"
            metrics.update(super().evaluate(data, ignore_keys, prefix))
        return metrics

    def _with_reference_columns(self, dataset):
        if all(column in dataset.column_names for column in REF_COLUMNS):
            return dataset
        if self.reference is None:
            if self.state.global_step > 0:
                raise ValueError(
                    "evaluate() got a new dataset after training started, with precompute_ref_log_probs=True and no "
                    "ref_model: the reference is gone. Pass the dataset as eval_dataset when constructing the trainer, "
                    "pass a ref_model, or set precompute_ref_log_probs=False.")
            self.reference = Reference(self.model)  # before any step, the policy is the reference
        try:
            return self.precompute_reference(
                dataset, self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size)
        finally:
            if self.ref_model is None and not is_peft_model(self.model):
                self.reference = None

    @torch.no_grad()
    def sync_reference(self) -> None:
        """TR-DPO's update of a reference model of its own: ref <- alpha * policy + (1 - alpha) * ref."""
        alpha = self.args.ref_model_mixup_alpha
        policy = self.accelerator.unwrap_model(self.model)
        reference = self.accelerator.unwrap_model(self.reference.module)
        for ref_param, param in zip(reference.parameters(), policy.parameters(), strict=True):
            ref_param.mul_(1 - alpha).add_(param.detach().to(ref_param.dtype), alpha=alpha)
