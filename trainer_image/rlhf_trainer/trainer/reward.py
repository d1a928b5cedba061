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
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from rlhf_trainer.trainer.inputs import (
    DatasetError,
    check_dataset,
    check_pad_token,
    resolve_max_length,
    resolve_tokenizer,
    to_dataset,
)

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


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                    center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Mean Bradley-Terry loss of reward pairs, ``-logsigmoid(chosen - rejected - margin)``, plus centring."""
    difference = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def pair_rewards(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected texts of a batch, from one forward pass over both."""
    rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.squeeze(-1)
    return rewards.chunk(2)


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
    """Right-pads a batch of pairs into one tensor: the chosen texts, then the rejected ones."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(row[f"input_ids_{side}"], row[f"attention_mask_{side}"])
                     for side in ("chosen", "rejected") for row in rows]
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (ids, mask) in enumerate(sequences):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(mask)] = torch.tensor(mask)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "margin" in rows[0]:
            batch["margin"] = torch.tensor([float(row["margin"]) for row in rows])
        return batch


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


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
        if isinstance(model, str | os.PathLike):
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model), **{"num_labels": 1, **(model_init_kwargs or {})})
        elif model_init_kwargs:
            raise ValueError("model_init_kwargs apply only when model is a hub id or path, not a model object")
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model gives one score per text: load it with num_labels=1 "
                             f"(this one has num_labels={model.config.num_labels})")
        args = args if args is not None else RewardConfig()
        tokenizer = resolve_tokenizer(processing_class, tokenizer, model)
        check_pad_token(tokenizer)
        if model.config.pad_token_id is None:  # sequence classifiers find each text's last token by it
            model.config.pad_token_id = tokenizer.pad_token_id
        max_length = resolve_max_length(getattr(args, "max_length", None), tokenizer, model.config, "max_length")
        if peft_config is not None:
            model = _peft_sequence_classifier(model, peft_config)
        if getattr(args, "disable_dropout", True):
            disable_dropout(model)

        prepare = partial(prepare_preference_dataset, tokenizer=tokenizer, max_length=max_length)
        if train_dataset is not None:
            train_dataset = prepare(train_dataset, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: prepare(data, f"eval_dataset[{key!r}]") for key, data in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, "eval_dataset")

        super().__init__(
            model=model, args=args, data_collator=data_collator or RewardCollator(tokenizer.pad_token_id),
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
