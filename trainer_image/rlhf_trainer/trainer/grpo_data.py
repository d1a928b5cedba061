"""What GRPO reads and how it batches it: prompt datasets, the repeat sampler that makes groups, and padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from rlhf_trainer.trainer.inputs import DatasetError, is_blank, to_dataset


def prepare_prompt_dataset(dataset, name: str):
    """A `datasets.Dataset` with a non-blank ``prompt`` in every row (text or a list of chat messages)."""
    dataset = to_dataset(dataset, name)
    if len(dataset) == 0:
        raise DatasetError(f"{name} is empty: it needs at least one row with a 'prompt'")
    if "prompt" not in dataset.column_names:
        raise DatasetError(f"{name} has no 'prompt' column (its columns: {list(dataset.column_names)}); GRPO "
                           "samples completions for each row's 'prompt' (text or a list of chat messages): rename "
                           "your prompt column to 'prompt'", column="prompt")
    for row, prompt in enumerate(dataset["prompt"]):
        if is_blank(prompt):
            raise DatasetError(f"{name} row {row}: 'prompt' is {prompt!r}; every row needs a non-empty prompt (drop "
                               "or fix that row)", column="prompt", row=row)
    return dataset


def is_conversational(prompt) -> bool:
    """A list of ``{"role", "content"}`` messages rather than plain text."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


class RepeatSampler(Sampler[int]):
    """Indices for GRPO's groups: blocks of ``batch_size`` distinct rows (a random permutation with ``seed`` when
    ``shuffle``, else dataset order; an incomplete last block is dropped), each row repeated ``mini_repeat_count``
    times consecutively (one group), and each block yielded ``repeat_count`` times in a row (one generation reused
    for ``num_iterations x steps_per_generation`` micro-steps).

    With 3 rows, batch_size 2, mini_repeat_count 2, repeat_count 2 and no shuffle: 0 0 1 1 0 0 1 1 (row 2 dropped).
    """

    def __init__(self, data_source: Sequence, mini_repeat_count: int, batch_size: int = 1, repeat_count: int = 1,
                 shuffle: bool = True, seed: int | None = None):
        self.num_rows = len(data_source)
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count
        self.shuffle = shuffle
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_rows, generator=self.generator).tolist() if self.shuffle \
            else list(range(self.num_rows))
        blocks = [order[i:i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        for block in blocks:
            for _ in range(self.repeat_count):
                for index in block:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (self.num_rows // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


def pad(sequences: Sequence[Sequence[int]], value: int, side: str,
        multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists padded into [B, L] on the ``left`` or ``right`` (L rounded up to ``multiple_of`` when given),
    and the 0/1 mask of real tokens."""
    width = max((len(s) for s in sequences), default=0)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if not len(seq):
            continue
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
