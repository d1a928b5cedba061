"""SFTTrainer: supervised fine-tuning with TRL v0.7's API, on transformers 5.

    trainer = SFTTrainer("facebook/opt-350m", train_dataset=dataset, dataset_text_field="text", max_seq_length=512)
    trainer.train()

Datasets, in the formats TRL documents:
- language modelling: a text column (``dataset_text_field``, default ``text``) or ``formatting_func``; every token
  is learned, and EOS is appended so the model learns to stop;
- prompt/completion: ``prompt`` + ``completion`` columns, plain text or lists of chat messages; only the
  completion is learned (``completion_only_loss=False`` learns everything). Prompt and completion are tokenized
  separately, so the boundary is exact — no response-template string matching;
- conversational: a ``messages`` column rendered with the tokenizer's chat template; only assistant turns are
  learned, as the template's ``{% generation %}`` blocks mark them;
- pre-tokenized: an ``input_ids`` column (optionally ``completion_mask``, 1 = learn), trained as given.

``packing=True`` puts several whole documents in each row, with position ids restarting at every document and no
attention mask: transformers' masking utilities (sdpa, eager, flex) and flash-attention's varlen path read that
as separate sequences, so documents never attend to each other. The trainer checks the model honours it.
``padding_free`` goes further and makes each batch one such row (no padding at all), for flash-attention.
"""

from __future__ import annotations

import os
from bisect import bisect_left, insort
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from rlhf_trainer.trainer.inputs import (
    DatasetError,
    InvalidInput,
    check_dataset,
    check_pad_token,
    is_blank,
    prepare_datasets,
    resolve_fast_path,
    resolve_max_length,
    resolve_tokenizer,
    to_dataset,
)
from rlhf_trainer.trainer.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

SFT_COLUMNS = ["input_ids", "completion_mask", "position_ids"]


def causal_lm_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor, chunked: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over the labelled tokens, and how many there are.

    ``labels`` are aligned with ``input_ids`` (-100: not learned); position t predicts label t + 1. ``chunked``
    feeds only the labelled positions' last hidden states through the LM head, in chunks (`linear_cross_entropy`):
    the [tokens, vocabulary] logits never exist. It needs a model whose logits are ``lm_head(last hidden state)``;
    `chunked_loss_supported` checks that.
    """
    targets = labels[:, 1:]
    learned = targets != IGNORE_INDEX
    if chunked:
        # Called through the model (not its decoder) so that DDP/FSDP wrappers and hooks see a normal forward;
        # logits_to_keep=1 makes the LM head's own output one position long.
        output = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        head = output_layer(model)
        loss = linear_cross_entropy(output.hidden_states[-1][:, :-1][learned], head.weight, targets[learned], head.bias)
        return loss, learned.sum()
    logits = model(**inputs, use_cache=False).logits
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, learned.sum()


def output_layer(model) -> nn.Module:
    """The LM head of a (DDP-wrapped, PEFT or plain) causal LM."""
    while hasattr(model, "module"):  # DistributedDataParallel and similar wrappers
        model = model.module
    return model.get_output_embeddings()


# Config fields of models whose logits are transformed after the LM head (Gemma 2/3, Cohere, Granite, Falcon-H1, ...).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                    "output_multiplier")


@torch.no_grad()
def chunked_loss_supported(model) -> bool:
    """Whether the chunked loss gives this model's plain loss: its LM head is a plain ``nn.Linear`` whose output
    is the logits (no soft-capping or scaling after it; checked on the config and on a probe batch)."""
    head = output_layer(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if (is_deepspeed_zero3_enabled() or type(head) is not nn.Linear
            or any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)):
        return False
    device = head.weight.device
    input_ids = torch.randint(0, head.weight.shape[0], (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        output = model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
        ours = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    except (TypeError, ValueError):  # a forward without logits_to_keep or output_hidden_states
        return False
    finally:
        model.train(was_training)
    logits, recomputed = output.logits.float(), head(ours.hidden_states[-1]).float()
    return bool((logits - recomputed).abs().max() <= 1e-3 * logits.abs().max() + 1e-6)


def sft_columns(column_names, dataset_text_field: str | None = None) -> list[str]:
    """The columns an SFT dataset trains from: the text field, ``messages``, ``prompt`` + ``completion``, or
    pre-tokenized ``input_ids``."""
    if dataset_text_field is not None:
        return [dataset_text_field]
    if "input_ids" in column_names:
        return ["input_ids"]
    if "messages" in column_names:
        return ["messages"]
    if "prompt" in column_names and "completion" in column_names:
        return ["prompt", "completion"]
    if "text" in column_names:
        return ["text"]
    raise DatasetError(
        f"no column to train on in {list(column_names)}: pass dataset_text_field=<column> or formatting_func=..., "
        "or use a dataset with a 'text', 'messages', 'prompt' + 'completion' or 'input_ids' column")


def formatted_texts(dataset, formatting_func, name: str):
    """A ``text`` dataset made by ``formatting_func``, which takes one row and returns its text (TRL today) or,
    TRL v0.7 style, takes a batch (a dict of lists) and returns a list of texts."""
    if _takes_batches(formatting_func, dataset):
        texts = [text for batch in dataset.iter(batch_size=1000) for text in formatting_func(batch)]
        if len(texts) != len(dataset):
            raise DatasetError(f"formatting_func returned {len(texts)} texts for the {len(dataset)} rows of {name}")
    else:
        texts = [formatting_func(row) for row in dataset]
    for row, text in enumerate(texts):
        if not isinstance(text, str) or is_blank(text):
            raise DatasetError(f"{name} row {row}: formatting_func returned {text!r}; it must return non-empty text",
                               row=row)
    return to_dataset([{"text": text} for text in texts], name)


def _takes_batches(formatting_func, dataset) -> bool:
    try:
        return isinstance(formatting_func(dataset[:1]), list)
    except Exception:  # a function of one row may well fail on a batch's lists
        return False


def tokenize_row(row: dict, index: int, *, tokenizer, columns: list[str], max_length: int,
                 completion_only: bool, name: str) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` (1 = learn this token) of one row, cut to ``max_length``."""
    if columns == ["prompt", "completion"]:
        prompt_ids, ids = _prompt_completion_ids(row["prompt"], row["completion"], tokenizer, index, name)
        mask = [int(not completion_only or i >= len(prompt_ids)) for i in range(len(ids))]
    elif columns == ["messages"]:
        rendered = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=completion_only)
        ids = list(rendered["input_ids"])
        mask = list(rendered["assistant_masks"]) if completion_only else [1] * len(ids)
        if not any(mask):
            raise DatasetError(
                f"{name} row {index}: no assistant tokens to learn. Give every conversation an assistant turn, and "
                "a chat template that wraps assistant turns in {% generation %}...{% endgeneration %} (or pass "
                "completion_only_loss=False to learn every token)",
                column="messages", row=index)
    elif columns == ["input_ids"]:  # pre-tokenized: trained as given, every token learned unless a mask says
        ids = list(row["input_ids"])
        mask = list(row["completion_mask"]) if row.get("completion_mask") is not None else [1] * len(ids)
        if len(mask) != len(ids):
            raise DatasetError(f"{name} row {index}: completion_mask has {len(mask)} values for {len(ids)} input_ids; "
                               "give one per token", column="completion_mask", row=index)
    else:
        ids = _with_eos(tokenizer(row[columns[0]])["input_ids"], tokenizer)
        mask = [1] * len(ids)
    return {"input_ids": ids[:max_length], "completion_mask": mask[:max_length]}


def _with_eos(ids: list[int], tokenizer) -> list[int]:
    return ids if ids and ids[-1] == tokenizer.eos_token_id else [*ids, tokenizer.eos_token_id]


def _prompt_completion_ids(prompt, completion, tokenizer, index: int, name: str) -> tuple[list[int], list[int]]:
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        return prompt_ids, prompt_ids + _with_eos(tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer)
    prompt_ids = list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"])
    ids = list(tokenizer.apply_chat_template(prompt + completion, tokenize=True)["input_ids"])
    if ids[:len(prompt_ids)] != prompt_ids:
        raise DatasetError(
            f"{name} row {index}: the chat template renders the prompt differently on its own and followed by the "
            "completion, so the completion cannot be told apart; use a 'messages' column instead",
            column="prompt", row=index)
    return prompt_ids, ids


def best_fit_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: groups of indices whose lengths sum to at most ``capacity``, few and full."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            bins.append([])
            space, index = capacity, len(bins) - 1
        else:
            space, index = free.pop(slot)
        bins[index].append(i)
        insort(free, (space - lengths[i], index))
    return bins


def pack_rows(batch: dict[str, list], capacity: int) -> dict[str, list]:
    """Whole tokenized documents packed into rows of at most ``capacity`` tokens; position ids restart at each."""
    packed = {column: [] for column in SFT_COLUMNS}
    for members in best_fit_bins([len(ids) for ids in batch["input_ids"]], capacity):
        packed["input_ids"].append([t for i in members for t in batch["input_ids"][i]])
        packed["completion_mask"].append([m for i in members for m in batch["completion_mask"][i]])
        packed["position_ids"].append([p for i in members for p in range(len(batch["input_ids"][i]))])
    return packed


def prepare_sft_dataset(dataset, name: str, *, tokenizer, dataset_text_field, formatting_func, max_length: int,
                        packing: bool, completion_only: bool, num_proc: int | None):
    """Validate, tokenize and (optionally) pack a dataset into ``SFT_COLUMNS`` rows."""
    dataset = to_dataset(dataset, name)
    check_dataset(dataset, [], name)
    if formatting_func is not None:
        dataset = formatted_texts(dataset, formatting_func, name)
    columns = sft_columns(dataset.column_names, dataset_text_field)
    check_dataset(dataset, columns, name)
    tokenize = partial(tokenize_row, tokenizer=tokenizer, columns=columns, max_length=max_length,
                       completion_only=completion_only, name=name)
    dataset = dataset.map(tokenize, with_indices=True, remove_columns=dataset.column_names, num_proc=num_proc)
    if packing:
        dataset = dataset.map(pack_rows, batched=True, fn_kwargs={"capacity": max_length},
                              remove_columns=dataset.column_names, num_proc=num_proc)
    return dataset


@dataclass
class SFTCollator:
    """Right-pads rows into a batch. ``labels`` are the tokens to learn, -100 elsewhere: prompts, padding, and the
    first token of every document (nothing before it in the document predicts it).

    ``flatten`` (padding-free) puts the whole batch in one row, position ids restarting at every document and no
    padding at all: for attention with variable-length kernels (flash-attention), which reads each document apart.
    ``boundaries`` adds those kernels' document boundaries (``cu_seq_lens_*``), sparing the model a device-to-host
    sync per layer to find them.
    """

    pad_token_id: int
    flatten: bool = False
    boundaries: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.flatten:
            rows = [{key: [value for row in rows for value in self._column(row, key)]
                     for key in ("input_ids", "completion_mask", "position_ids")}]
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id)
        learn = torch.zeros((len(rows), width), dtype=torch.bool)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            learn[i, :n] = torch.tensor(row["completion_mask"], dtype=torch.bool)
            positions[i, :n] = torch.tensor(self._column(row, "position_ids"))
        labels = input_ids.masked_fill(~learn | (positions == 0), IGNORE_INDEX)
        if self.flatten and self.boundaries:
            starts = (positions[0] == 0).nonzero().flatten()
            cu_seq_lens = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            longest = int(cu_seq_lens.diff().max())
            return {"input_ids": input_ids, "position_ids": positions, "labels": labels, "cu_seq_lens_q": cu_seq_lens,
                    "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest, "max_length_k": longest}
        if "position_ids" in rows[0]:
            return {"input_ids": input_ids, "position_ids": positions, "labels": labels}
        lengths = torch.tensor([len(row["input_ids"]) for row in rows])
        attention_mask = (torch.arange(width) < lengths[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    @staticmethod
    def _column(row: dict, key: str) -> list[int]:
        if key == "position_ids" and key not in row:
            return list(range(len(row["input_ids"])))
        return row[key]


def has_varlen_attention(model) -> bool:
    """Whether the model's attention runs padding-free batches with variable-length kernels (flash-attention)."""
    return "flash" in str(getattr(model.config, "_attn_implementation", None) or "")


@torch.no_grad()
def check_documents_isolated(model) -> None:
    """Refuse packing on a model whose attention ignores restarting position ids: its packed documents would
    attend to each other. Two rows share a second document after different first ones; its logits must match."""
    if is_deepspeed_zero3_enabled():
        return  # parameters are partitioned until the engine gathers them; nothing to run a probe on
    device = next(model.parameters()).device
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 8, 9, 10]], device=device)
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2, device=device)
    was_training = model.training
    model.eval()
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[:, 3:].float()
    model.train(was_training)
    if (logits[0] - logits[1]).abs().max() > 1e-3 * logits.abs().max().clamp(min=1):
        raise InvalidInput(
            f"packing=True, but this {model.config.model_type} model's attention "
            f"({model.config._attn_implementation}) ignores restarting position ids, so packed documents would "
            "attend to each other. Use packing=False with this model.")


class SFTTrainer(Trainer):
    """Supervised fine-tuning of a causal LM; TRL v0.7's arguments, plus ``completion_only_loss``.

    ``model`` is a model or a hub id / local path (loaded with ``model_init_kwargs``); ``tokenizer`` (or
    ``processing_class``) defaults to the model's. ``max_seq_length`` defaults to the smallest of the tokenizer's
    ``model_max_length``, the model's positions and 1024; longer examples are cut. ``peft_config`` trains adapters
    only; ``neftune_noise_alpha`` adds NEFTune embedding noise; gradient checkpointing comes from ``args``.

    Speed: ``chunked_loss`` (default: wherever it gives the plain loss) computes the LM head and the loss in
    chunks over the learned tokens only, never the full [tokens, vocabulary] logits. ``padding_free`` (default:
    with flash-attention) trains each batch as one row of documents with no padding.
    """

    def __init__(self, model=None, args: TrainingArguments | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, *, processing_class=None, tokenizer=None, callbacks=None,
                 optimizers=(None, None), peft_config=None, dataset_text_field: str | None = None,
                 formatting_func=None, max_seq_length: int | None = None, packing: bool = False,
                 completion_only_loss: bool = True, neftune_noise_alpha: float | None = None,
                 model_init_kwargs: dict | None = None, dataset_num_proc: int | None = None,
                 padding_free: bool | None = None, chunked_loss: bool | None = None):
        if model is None:
            raise ValueError("SFTTrainer needs a model: a model object, a hub id or a local path")
        args = args if args is not None else TrainingArguments()
        set_seed(args.seed)  # before adapters are initialised, not in Trainer.__init__ after
        if isinstance(model, str | os.PathLike):
            model = AutoModelForCausalLM.from_pretrained(str(model), **(model_init_kwargs or {}))
        elif model_init_kwargs:
            raise ValueError("model_init_kwargs apply only when model is a hub id or path, not a model object")
        if neftune_noise_alpha is not None:
            args.neftune_noise_alpha = neftune_noise_alpha
        tokenizer = resolve_tokenizer(processing_class, tokenizer, model)
        check_pad_token(tokenizer)
        if tokenizer.eos_token_id is None:
            raise InvalidInput("the tokenizer has no EOS token, so the model could not learn to stop: set one with "
                             "tokenizer.add_special_tokens({'eos_token': ...})")
        self.max_seq_length = resolve_max_length(max_seq_length, tokenizer, model.config, "max_seq_length")
        self.padding_free = has_varlen_attention(model) if padding_free is None else padding_free
        if packing or self.padding_free:
            check_documents_isolated(model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.chunked_loss = resolve_fast_path(
            "chunked_loss", chunked_loss, args, lambda: chunked_loss_supported(model),
            f"this {model.config.model_type} model's logits are not its LM head's output (soft-capping or scaling "
            "after it, adapters on the head, or no logits_to_keep)")

        prepare = partial(
            prepare_sft_dataset, tokenizer=tokenizer, dataset_text_field=dataset_text_field,
            formatting_func=formatting_func, max_length=self.max_seq_length, packing=packing,
            completion_only=completion_only_loss, num_proc=dataset_num_proc)
        train_dataset, eval_dataset = prepare_datasets(prepare, train_dataset, eval_dataset)

        super().__init__(
            model=model, args=args, data_collator=data_collator or SFTCollator(
                tokenizer.pad_token_id, self.padding_free, has_varlen_attention(model)),
            train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
            callbacks=callbacks, optimizers=optimizers)
        # compute_loss divides by the tokens of the whole accumulated batch (num_items_in_batch) itself.
        self.model_accepts_loss_kwargs = True

    def _set_signature_columns_if_needed(self):
        self._signature_columns = SFT_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        loss_sum, num_tokens = causal_lm_loss(model, inputs, labels, self.chunked_loss)
        if num_items_in_batch is None:
            loss = loss_sum / num_tokens.clamp(min=1)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:  # the count spans all processes; DDP averages gradients
                loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss only: full-vocabulary logits are never gathered."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
