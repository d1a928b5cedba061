"""RewardConfig + RewardTrainer: a scalar reward model trained on preference pairs, with TRL v0.7's API.

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    trainer = RewardTrainer(model=model, tokenizer=tokenizer, train_dataset=dataset)
    trainer.train()

Datasets: raw text ``chosen`` / ``rejected`` (with an optional ``prompt`` put in front of both), or pre-tokenized
``input_ids_chosen`` / ``attention_mask_chosen`` / ``input_ids_rejected`` / ``attention_mask_rejected``; either
may add a ``margin`` column. Loss per pair: ``-logsigmoid(r_chosen - r_rejected - margin)``, plus
``center_rewards_coefficient * (r_chosen + r_rejected)^2`` to keep rewards centred on zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed

from rlhf_trainer.trainer.inputs import (
    DatasetError,
    InvalidInput,
    check_dataset,
    check_pad_token,
    prepare_datasets,
    resolve_fast_path,
    resolve_max_length,
    resolve_tokenizer,
    to_dataset,
)
from rlhf_trainer.trainer.sft import best_fit_bins, has_varlen_attention
from rlhf_trainer.trainer.utils import disable_dropout_in_model

TOKENIZED_COLUMNS = ["input_ids_chosen", "attention_mask_chosen", "input_ids_rejected", "attention_mask_rejected"]
REWARD_COLUMNS = [*TOKENIZED_COLUMNS, "margin"]


@dataclass
class RewardConfig(TrainingArguments):
    """`TrainingArguments` plus the reward-modelling knobs of TRL's RewardConfig."""

    max_length: int | None = field(default=None, metadata={
        "help": "Longest chosen/rejected sequence in tokens; longer ones are cut. Default: the smallest of the "
                "tokenizer's model_max_length, the model's positions and 1024."})
    center_rewards_coefficient: float | None = field(default=None, metadata={
        "help": "Weight of the (r_chosen + r_rejected)^2 penalty that keeps rewards centred on zero (e.g. 0.01)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off, so a text's reward does not depend on the dropout draw."})
    padding_free: bool | None = field(default=None, metadata={
        "help": "Pack each batch's chosen and rejected texts into rows without padding (position ids restarting at "
                "each text; one row with flash-attention, rows of max_length otherwise) and score each text's last "
                "token. Default: wherever the model gives the padded batch's rewards that way."})


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                    center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Mean Bradley-Terry loss of reward pairs, ``-logsigmoid(chosen - rejected - margin)``, plus centring."""
    difference = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def pair_rewards(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected texts of a batch, from one forward pass over both.

    A packed batch (``last_token`` given) scores the last hidden state of each text's last token with the model's
    score head; a padded one takes the model's own pooled output.
    """
    if "last_token" not in inputs:
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.squeeze(-1)
        return rewards.chunk(2)
    model_inputs = {key: value for key, value in inputs.items() if key not in ("last_token", "margin")}
    # no cache: with one, transformers would not read restarting position ids as separate texts
    hidden = model(**model_inputs, use_cache=False, output_hidden_states=True).hidden_states[-1]
    rewards = score_head(model)(hidden.flatten(0, 1)[inputs["last_token"]]).squeeze(-1)
    return rewards.float().chunk(2)


def score_head(model) -> nn.Module | None:
    """The linear score head of a (DDP-wrapped, PEFT or plain) sequence classifier, if it has one."""
    while hasattr(model, "module"):  # DistributedDataParallel and similar wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT: the transformers model, adapters and saved head in place
        model = model.get_base_model()
    return getattr(model, "score", None)


@torch.no_grad()
def packed_rewards_supported(model, pad_token_id: int) -> bool:
    """Whether packed batches get the padded batch's rewards from this model: it has a ``score`` head, returns
    hidden states, and its attention keeps packed texts apart (checked on a probe pair)."""
    if score_head(model) is None:
        return False
    generator = torch.Generator().manual_seed(0)
    texts = [[int(t) for t in torch.randint(0, model.config.vocab_size, (n,), generator=generator) if t != pad_token_id]
             for n in (5, 9)]
    device = next(model.parameters()).device
    rows = [{f"input_ids_{side}": ids, f"attention_mask_{side}": [1] * len(ids)}
            for side, ids in (("chosen", texts[0]), ("rejected", texts[1]))]
    probe = [{**rows[0], **rows[1]}]
    was_training = model.training
    model.eval()
    try:
        padded = pair_rewards(model, _to(RewardCollator(pad_token_id)(probe), device))
        packed = pair_rewards(model, _to(RewardCollator(pad_token_id, packed=True)(probe), device))
    except (TypeError, ValueError, AttributeError):  # no hidden states, or a head that takes something else
        return False
    finally:
        model.train(was_training)
    return all(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4) for a, b in zip(padded, packed, strict=True))


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def reward_metrics(prediction) -> dict[str, float]:
    """``accuracy``: share of pairs whose chosen text gets the higher reward; ``margin``: mean reward gap."""
    chosen, rejected = prediction.predictions[:, 0], prediction.predictions[:, 1]
    return {"accuracy": float(np.mean(chosen > rejected)), "margin": float(np.mean(chosen - rejected))}


def preference_columns(column_names) -> list[str]:
    """The columns a preference dataset trains from: pre-tokenized pairs, else ``chosen`` + ``rejected``."""
    if any(column in column_names for column in TOKENIZED_COLUMNS):
        columns = list(TOKENIZED_COLUMNS)
    else:
        columns = ["prompt", "chosen", "rejected"] if "prompt" in column_names else ["chosen", "rejected"]
    return columns + ["margin"] if "margin" in column_names else columns


def tokenize_pair(row: dict, index: int, *, tokenizer, max_length: int, name: str) -> dict[str, list[int]]:
    """Token ids and attention masks of ``prompt + chosen`` and ``prompt + rejected``, cut to ``max_length``."""
    prompt = row.get("prompt") or ""
    tokenized = {}
    for side in ("chosen", "rejected"):
        if not isinstance(row[side], str) or not isinstance(prompt, str):
            raise DatasetError(
                f"{name} row {index}: prompt, chosen and rejected must be text, not {type(row[side]).__name__} "
                "(render conversations with tokenizer.apply_chat_template first)", column=side, row=index)
        encoded = tokenizer(prompt + row[side])
        tokenized[f"input_ids_{side}"] = encoded["input_ids"][:max_length]
        tokenized[f"attention_mask_{side}"] = encoded["attention_mask"][:max_length]
    return tokenized


def cut_pair(row: dict, index: int, *, max_length: int) -> dict[str, list[int]]:
    return {column: row[column][:max_length] for column in TOKENIZED_COLUMNS}


def prepare_preference_dataset(dataset, name: str, *, tokenizer, max_length: int):
    """Validate and tokenize a preference dataset into ``REWARD_COLUMNS`` rows."""
    dataset = to_dataset(dataset, name)
    columns = preference_columns(dataset.column_names)
    check_dataset(dataset, columns, name)
    prepare = (partial(cut_pair, max_length=max_length) if columns[0] in TOKENIZED_COLUMNS
               else partial(tokenize_pair, tokenizer=tokenizer, max_length=max_length, name=name))
    drop = [column for column in dataset.column_names if column not in REWARD_COLUMNS]
    return dataset.map(prepare, with_indices=True, remove_columns=drop)


@dataclass
class RewardCollator:
    """One batch of pairs: the chosen texts, then the rejected ones.

    Padded (default): right-padded rows with an attention mask. ``packed``: texts packed whole into rows of at most
    ``capacity`` tokens (one row when None), position ids restarting at each text, no attention mask, and
    ``last_token``: the index of each text's last token in the flattened rows, in chosen-then-rejected order.
    ``boundaries`` adds flash-attention's ``cu_seq_lens_*`` (one row only).
    """

    pad_token_id: int
    packed: bool = False
    capacity: int | None = None
    boundaries: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(row[f"input_ids_{side}"], row[f"attention_mask_{side}"])
                     for side in ("chosen", "rejected") for row in rows]
        batch = self._pack(sequences) if self.packed else self._pad(sequences)
        if "margin" in rows[0]:
            batch["margin"] = torch.tensor([float(row["margin"]) for row in rows])
        return batch

    def _pad(self, sequences) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (ids, mask) in enumerate(sequences):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(mask)] = torch.tensor(mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _pack(self, sequences) -> dict[str, torch.Tensor]:
        texts = [[t for t, m in zip(ids, mask, strict=True) if m] for ids, mask in sequences]
        lengths = [len(text) for text in texts]
        bins = best_fit_bins(lengths, max(self.capacity or sum(lengths), max(lengths)))
        width = max(sum(lengths[i] for i in members) for members in bins)
        input_ids = torch.full((len(bins), width), self.pad_token_id)
        positions = torch.zeros((len(bins), width), dtype=torch.long)
        last_token = torch.zeros(len(texts), dtype=torch.long)
        for row, members in enumerate(bins):
            offset = 0
            for i in members:
                input_ids[row, offset:offset + lengths[i]] = torch.tensor(texts[i])
                positions[row, offset:offset + lengths[i]] = torch.arange(lengths[i])
                last_token[i] = row * width + offset + _last_non_pad(texts[i], self.pad_token_id)
                offset += lengths[i]
        batch = {"input_ids": input_ids, "position_ids": positions, "last_token": last_token}
        if self.boundaries and len(bins) == 1:
            starts = (positions[0] == 0).nonzero().flatten()
            cu_seq_lens = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            longest = int(cu_seq_lens.diff().max())
            batch.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=longest,
                         max_length_k=longest)
        return batch


def _last_non_pad(ids: list[int], pad_token_id: int) -> int:
    """Where a sequence classifier pools: the last token that is not the pad token (the last one if all are)."""
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] != pad_token_id:
            return index
    return len(ids) - 1


class RewardTrainer(Trainer):
    """Trains ``AutoModelForSequenceClassification(num_labels=1)`` on preference pairs (TRL v0.7's arguments).

    ``model`` is a model or a hub id / local path (loaded with ``num_labels=1`` and ``model_init_kwargs``);
    ``tokenizer`` (or ``processing_class``) defaults to the model's; ``peft_config`` (task type SEQ_CLS) trains
    adapters and the score head only. Evaluation reports ``accuracy`` and mean ``margin``.
    """

    def __init__(self, model=None, args: RewardConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, *, processing_class=None, tokenizer=None, compute_metrics=None,
                 callbacks=None, optimizers=(None, None), peft_config=None, model_init_kwargs: dict | None = None):
        if model is None:
            raise ValueError("RewardTrainer needs a model: a model object, a hub id or a local path")
        args = args if args is not None else RewardConfig()
        set_seed(args.seed)  # before the new score head and adapters are initialised, not in Trainer.__init__ after
        if isinstance(model, str | os.PathLike):
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model), **{"num_labels": 1, **(model_init_kwargs or {})})
        elif model_init_kwargs:
            raise ValueError("model_init_kwargs apply only when model is a hub id or path, not a model object")
        if model.config.num_labels != 1:
            raise InvalidInput(f"a reward model gives one score per text: load it with num_labels=1 "
                             f"(this one has num_labels={model.config.num_labels})")
        tokenizer = resolve_tokenizer(processing_class, tokenizer, model)
        check_pad_token(tokenizer)
        if model.config.pad_token_id is None:  # sequence classifiers find each text's last token by it
            model.config.pad_token_id = tokenizer.pad_token_id
        max_length = resolve_max_length(getattr(args, "max_length", None), tokenizer, model.config, "max_length")
        if peft_config is not None:
            model = _peft_sequence_classifier(model, peft_config)
        if getattr(args, "disable_dropout", True):
            disable_dropout_in_model(model)

        self.padding_free = resolve_fast_path(
            "padding_free", getattr(args, "padding_free", None), args,
            lambda: packed_rewards_supported(model, tokenizer.pad_token_id),
            f"this {model.config.model_type} model does not give the padded batch's rewards on packed texts (no "
            "'score' head, no hidden states, or attention that ignores position ids)")
        varlen = has_varlen_attention(model)
        collator = RewardCollator(tokenizer.pad_token_id, packed=self.padding_free,
                                  capacity=None if varlen else max_length, boundaries=varlen)

        prepare = partial(prepare_preference_dataset, tokenizer=tokenizer, max_length=max_length)
        train_dataset, eval_dataset = prepare_datasets(prepare, train_dataset, eval_dataset)

        super().__init__(
            model=model, args=args, data_collator=data_collator or collator,
            train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
            compute_metrics=compute_metrics or reward_metrics, callbacks=callbacks, optimizers=optimizers)

    def _set_signature_columns_if_needed(self):
        self._signature_columns = REWARD_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_rewards(model, inputs)
        loss = preference_loss(chosen, rejected, inputs.get("margin"),
                               getattr(self.args, "center_rewards_coefficient", None))
        return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss, the (chosen, rejected) rewards of each pair as predictions, and dummy labels for the metrics."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), rewards.detach(), torch.zeros(len(rewards), device=rewards.device)


def _peft_sequence_classifier(model, peft_config):
    from peft import TaskType, get_peft_model

    if peft_config.task_type != TaskType.SEQ_CLS:
        raise ValueError(f"peft_config.task_type is {peft_config.task_type!r}; a reward model needs "
                         "task_type='SEQ_CLS' so its score head is trained along with the adapters")
    return get_peft_model(model, peft_config)
