"""Preference data for DPO (docs/algorithms/dpo.md, "Data"): from rows of prompt / chosen / rejected to token ids,
and from token ids to batches of 2B sequences (the B prompt+chosen ones, then the B prompt+rejected ones).

Rows are explicit (``prompt``, ``chosen``, ``rejected``) or implicit (``chosen``, ``rejected`` only: the prompt is
their longest common prefix), standard text or conversations (lists of ``{"role", "content"}`` messages, with
optional ``tools`` and ``chat_template_kwargs`` columns).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial

import torch

from rlhf_trainer.trainer.inputs import DatasetError, check_dataset, to_dataset
from rlhf_trainer.trainer.sft import best_fit_bins

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]
REF_COLUMNS = ["ref_chosen_logps", "ref_rejected_logps"]
# What the trainer reads from a batch besides the model's own inputs.
BATCH_KEYS = ("completion_mask", "sequence_index", "previous", "completion_lengths", *REF_COLUMNS)
SHARED_PROMPT = -2  # sequence_index of a prompt token that both sequences of a pair read


def is_conversational(value) -> bool:
    """A list of ``{"role", "content"}`` messages."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def extract_prompt(chosen, rejected) -> tuple:
    """(prompt, chosen, rejected) from an implicit pair: the prompt is the longest common prefix of the two (whole
    messages for conversations, characters for text, moved back one character when the one before the split is
    a space, so the completions keep their leading space)."""
    split = 0
    while split < min(len(chosen), len(rejected)) and chosen[split] == rejected[split]:
        split += 1
    if isinstance(chosen, str) and split < min(len(chosen), len(rejected)) and split > 0 and chosen[split - 1] == " ":
        split -= 1
    return chosen[:split], chosen[split:], rejected[split:]


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def tokenize_pair(prompt, chosen, rejected, tokenizer, template_kwargs: dict | None = None
                  ) -> dict[str, list[int]]:
    """``prompt_ids``, ``chosen_ids``, ``rejected_ids`` of one pair.

    Three tokenisations with the tokenizer's default special tokens: the prompt alone (conversations: with the
    generation prompt), prompt + chosen and prompt + rejected. The prompt is the part both joint tokenisations
    share with the prompt alone; each completion is the rest of its joint tokenisation, so a BPE merge across the
    boundary moves tokens into the completion and the completion ids are never tokenized on their own.
    """
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        joint = [tokenizer(prompt + completion)["input_ids"] for completion in (chosen, rejected)]
    else:
        kwargs = dict(tokenize=True, return_dict=True, **(template_kwargs or {}))
        prompt_ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)["input_ids"])
        joint = [list(tokenizer.apply_chat_template(prompt + completion, **kwargs)["input_ids"])
                 for completion in (chosen, rejected)]
    length = min(common_prefix_length(prompt_ids, ids) for ids in joint)
    return {"prompt_ids": prompt_ids[:length], "chosen_ids": joint[0][length:], "rejected_ids": joint[1][length:]}


def kept_span(total: int, max_length: int | None, truncation_mode: str) -> slice:
    """The part of a prompt + completion row of ``total`` tokens that truncation keeps."""
    if max_length is None or total <= max_length:
        return slice(0, total)
    return slice(0, max_length) if truncation_mode == "keep_start" else slice(total - max_length, total)


def scored_tokens(prompt_length: int, completion_length: int, max_length: int | None, truncation_mode: str) -> int:
    """How many completion tokens of a row are scored after truncation (a token at the row's first position has
    nothing before it to predict it)."""
    span = kept_span(prompt_length + completion_length, max_length, truncation_mode)
    first = max(prompt_length, span.start + 1)
    return max(0, span.stop - first)


def _row_texts(row: dict, index: int, name: str) -> tuple:
    chosen, rejected = row["chosen"], row["rejected"]
    conversational = is_conversational(chosen)
    for column in ("chosen", "rejected"):
        value = row[column]
        if conversational != is_conversational(value) or not (conversational or isinstance(value, str)):
            raise DatasetError(
                f"{name} row {index}: {column!r} is {type(value).__name__}; chosen and rejected must both be text or "
                "both be lists of {'role', 'content'} messages", column=column, row=index)
    if "prompt" not in row:
        return (*extract_prompt(chosen, rejected), conversational)
    prompt = row["prompt"]
    if prompt is None or conversational != (is_conversational(prompt) or prompt == []):
        kind = "a list of messages" if conversational else "text"
        raise DatasetError(f"{name} row {index}: 'prompt' is {prompt!r}; with these chosen/rejected it must be {kind}",
                           column="prompt", row=index)
    return prompt, chosen, rejected, conversational


def prepare_row(row: dict, index: int, *, tokenizer, name: str) -> dict[str, list[int]]:
    """One row's token ids: the prompt extracted when implicit, EOS appended to text completions (conversations
    rely on the chat template), then `tokenize_pair`."""
    prompt, chosen, rejected, conversational = _row_texts(row, index, name)
    template_kwargs = None
    if conversational:
        tools = row.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        template_kwargs = {"tools": tools, **(row.get("chat_template_kwargs") or {})}
    else:
        eos = tokenizer.eos_token
        chosen, rejected = (text if text.endswith(eos) else text + eos for text in (chosen, rejected))
    for column, completion in (("chosen", chosen), ("rejected", rejected)):
        if not completion:
            raise DatasetError(
                f"{name} row {index}: {column!r} is empty once the prompt (the longest common prefix of chosen and "
                "rejected) is taken off; give the completion some content", column=column, row=index)
    return tokenize_pair(prompt, chosen, rejected, tokenizer, template_kwargs)


def prepare_preference_dataset(dataset, name: str, *, tokenizer, max_length: int | None, truncation_mode: str,
                               num_proc: int | None = None):
    """Check, tokenize and filter a preference dataset into ``TOKEN_COLUMNS`` (+ ``REF_COLUMNS`` when present).

    Pairs whose prompt alone has max_length tokens or more are dropped (keep_start only: none of their completion
    would be left), with a warning naming them; a pair with a completion that has no token left to score is an
    error naming its row and column.
    """
    dataset = to_dataset(dataset, name)
    if all(column in dataset.column_names for column in TOKEN_COLUMNS):
        return dataset  # already prepared
    images = [column for column in ("image", "images") if column in dataset.column_names]
    if images:
        raise DatasetError(f"{name} has an {images[0]!r} column: vision-language preference data is not supported "
                           "by this DPOTrainer; drop the column to train on the text alone", column=images[0])
    check_dataset(dataset, ["chosen", "rejected"], name)
    keep = [column for column in REF_COLUMNS if column in dataset.column_names]
    dataset = dataset.map(partial(prepare_row, tokenizer=tokenizer, name=name), with_indices=True, num_proc=num_proc,
                          remove_columns=[column for column in dataset.column_names if column not in keep])
    if max_length is not None and truncation_mode == "keep_start":
        too_long = [i for i, ids in enumerate(dataset["prompt_ids"]) if len(ids) >= max_length]
        if too_long:
            logger.warning("%s: dropped %d of %d pairs whose prompt alone has max_length=%d tokens or more (rows %s)",
                           name, len(too_long), len(dataset), max_length, too_long[:10])
            if len(too_long) == len(dataset):
                raise DatasetError(f"{name}: every prompt has max_length={max_length} tokens or more, so no pair has a "
                                   "completion token left; raise max_length", column="prompt")
            dropped = set(too_long)
            dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])
    check_scored_tokens(dataset, name, max_length, truncation_mode)
    return dataset


def check_scored_tokens(dataset, name: str, max_length: int | None, truncation_mode: str) -> None:
    prompts = [len(ids) for ids in dataset["prompt_ids"]]
    for column in ("chosen", "rejected"):
        for row, (prompt, ids) in enumerate(zip(prompts, dataset[f"{column}_ids"], strict=True)):
            if scored_tokens(prompt, len(ids), max_length, truncation_mode) == 0:
                raise DatasetError(
                    f"{name} row {row}: the {column!r} completion has no token left to score ({prompt} prompt tokens, "
                    f"{len(ids)} completion tokens, max_length={max_length}); raise max_length, or give the pair a "
                    "prompt (a completion's first token needs a token before it)", column=column, row=row)


@dataclass
class PreferenceCollator:
    """A batch of B pairs as 2B sequences: prompt + chosen of every pair, then prompt + rejected; each truncated on
    its own to ``max_length`` (keep_start keeps the first tokens).

    Padded (default): right-padded rows with ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on
    completion tokens), as TRL's collator gives them. ``packed``: the sequences packed whole into rows of at most
    ``capacity`` tokens (one row when None) with ``position_ids`` restarting at each, no attention mask, and
    ``sequence_index`` (which sequence each token belongs to, -1 on padding). All add ``completion_lengths`` [2B]
    and, when the rows have them, ``ref_chosen_logps`` / ``ref_rejected_logps`` [B]. ``boundaries`` adds
    flash-attention's ``cu_seq_lens_*`` to a one-row packed batch.

    ``share_prompts`` (keep_start only): each pair as one group, prompt + chosen + rejected, the prompt once; the
    rejected tokens continue the prompt's positions and attend to the prompt and themselves, never to the chosen
    ones (a 4D boolean ``attention_mask`` [rows, 1, W, W], True = attend). ``previous`` gives each token's
    predecessor column (-1: none), as the first rejected token follows the prompt, not the last chosen token;
    prompt tokens have ``sequence_index`` -2 (both sequences).
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    packed: bool = False
    capacity: int | None = None
    boundaries: bool = False
    share_prompts: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.share_prompts:
            batch = self._pack_shared(rows)
            for column in REF_COLUMNS:
                if column in rows[0]:
                    batch[column] = torch.tensor([float(row[column]) for row in rows])
            return batch
        sequences, masks = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for row in rows:
                prompt, completion = list(row["prompt_ids"]), list(row[side])
                span = kept_span(len(prompt) + len(completion), self.max_length, self.truncation_mode)
                sequences.append((prompt + completion)[span])
                masks.append(([0] * len(prompt) + [1] * len(completion))[span])
        batch = self._pack(sequences, masks) if self.packed else self._pad(sequences, masks)
        batch["completion_lengths"] = torch.tensor([sum(mask) for mask in masks])
        for column in REF_COLUMNS:
            if column in rows[0]:
                batch[column] = torch.tensor([float(row[column]) for row in rows])
        return batch

    def _width(self, width: int) -> int:
        multiple = self.pad_to_multiple_of
        return width if not multiple else -(-width // multiple) * multiple

    def _pad(self, sequences, masks) -> dict[str, torch.Tensor]:
        width = self._width(max(len(ids) for ids in sequences))
        input_ids = torch.full((len(sequences), width), self.pad_token_id)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        completion_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (ids, mask) in enumerate(zip(sequences, masks, strict=True)):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(ids)] = 1
            completion_mask[i, :len(ids)] = torch.tensor(mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}

    def _pack(self, sequences, masks) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in sequences]
        bins = best_fit_bins(lengths, max(self.capacity or sum(lengths), max(lengths)))
        width = self._width(max(sum(lengths[i] for i in members) for members in bins))
        input_ids = torch.full((len(bins), width), self.pad_token_id)
        position_ids = torch.zeros((len(bins), width), dtype=torch.long)
        completion_mask = torch.zeros((len(bins), width), dtype=torch.long)
        sequence_index = torch.full((len(bins), width), -1)
        for row, members in enumerate(bins):
            offset = 0
            for i in sorted(members):
                span = slice(offset, offset + lengths[i])
                input_ids[row, span] = torch.tensor(sequences[i])
                position_ids[row, span] = torch.arange(lengths[i])
                completion_mask[row, span] = torch.tensor(masks[i])
                sequence_index[row, span] = i
                offset += lengths[i]
        batch = {"input_ids": input_ids, "position_ids": position_ids, "completion_mask": completion_mask,
                 "sequence_index": sequence_index}
        if self.boundaries and len(bins) == 1:
            starts = (position_ids[0] == 0).nonzero().flatten()
            cu_seq_lens = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            longest = int(cu_seq_lens.diff().max())
            batch.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=longest,
                         max_length_k=longest)
        return batch

    def _pack_shared(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        limit = self.max_length or 1 << 62
        groups = []  # (prompt, chosen, rejected) token ids, each completion cut as its own row would be
        for row in rows:
            prompt = list(row["prompt_ids"])[:limit]
            room = limit - len(prompt)
            groups.append((prompt, list(row["chosen_ids"])[:room], list(row["rejected_ids"])[:room]))
        lengths = [sum(map(len, group)) for group in groups]
        bins = best_fit_bins(lengths, max(self.max_length or 0, max(lengths)))
        width = self._width(max(sum(lengths[i] for i in members) for members in bins))
        shape = (len(bins), width)
        input_ids = torch.full(shape, self.pad_token_id)
        position_ids = torch.zeros(shape, dtype=torch.long)
        completion_mask = torch.zeros(shape, dtype=torch.long)
        sequence_index = torch.full(shape, -1)
        previous = torch.full(shape, -1)
        attend = torch.eye(width, dtype=torch.bool).repeat(len(bins), 1, 1)  # padding attends to itself only
        pairs = len(rows)
        for row, members in enumerate(bins):
            offset = 0
            for i in sorted(members):
                prompt, chosen, rejected = groups[i]
                p, c, r = len(prompt), len(chosen), len(rejected)
                start, chosen_at, rejected_at = offset, offset + p, offset + p + c
                input_ids[row, start:rejected_at + r] = torch.tensor(prompt + chosen + rejected)
                position_ids[row, start:rejected_at] = torch.arange(p + c)
                position_ids[row, rejected_at:rejected_at + r] = torch.arange(p, p + r)
                completion_mask[row, chosen_at:rejected_at + r] = 1
                sequence_index[row, start:chosen_at] = SHARED_PROMPT
                sequence_index[row, chosen_at:rejected_at] = i
                sequence_index[row, rejected_at:rejected_at + r] = pairs + i
                previous[row, start + 1:rejected_at + r] = torch.arange(start, rejected_at + r - 1)
                if r:
                    previous[row, rejected_at] = chosen_at - 1 if p else -1
                causal = torch.ones(p + max(c, r), p + max(c, r), dtype=torch.bool).tril()
                attend[row, start:rejected_at, start:rejected_at] = causal[:p + c, :p + c]
                attend[row, rejected_at:rejected_at + r, start:chosen_at] = True
                attend[row, rejected_at:rejected_at + r, rejected_at:rejected_at + r] = causal[:r, :r]
                offset += p + c + r
        return {"input_ids": input_ids, "attention_mask": attend[:, None], "position_ids": position_ids,
                "completion_mask": completion_mask, "sequence_index": sequence_index, "previous": previous,
                "completion_lengths": torch.tensor([len(g[1]) for g in groups] + [len(g[2]) for g in groups])}
