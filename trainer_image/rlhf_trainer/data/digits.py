"""Digit reversal: a task with a program-checked answer, for GRPO demos and tests (pure Python, deterministic).

A prompt asks for a string of 4 digits reversed: ``{"prompt": "Reverse 4729 =", "answer": "9274"}``; the completion
that earns full reward is `` 9274`` followed by EOS. The digit strings are split once, by a fixed shuffle, into
train and test strings, so test prompts are never trained on (by SFT or GRPO). ``digit_reversal_sft`` gives the
same task as prompt/completion pairs for supervised fine-tuning first. Checkers: `rlhf_trainer.rewards`
``reversal_exact`` (the answer exactly) and ``reversal_digits`` (share of positions right, partial credit).

The tiny GPT-2 (2 layers, width 64, the package's byte-level tokenizer, one token per digit) learns it in part from
SFT and then improves clearly with GRPO (benchmarks/grpo_digit_reversal.py; docs/algorithms/grpo.md, "Demo task"):
SFT 400 steps (batch 32, lr 3e-3, cosine), then GRPO 600 steps with both checkers (4 prompts x 8 generations,
lr 1e-3, beta 0, dapo, max_completion_length 6, dropout off). Held-out exact-answer reward (64 test prompts x 8
samples, fixed seeds) before -> after GRPO, seeds 0/1/2: 0.096 -> 0.795, 0.525 -> 0.805, 0.379 -> 0.801 (SFT ~10 s,
GRPO ~25 s on a 2-core CPU).
"""

from __future__ import annotations

import random

DIGITS = 4
TEST_SIZE = 500


def _strings(split: str) -> list[str]:
    rng = random.Random(1234)
    strings = [f"{n:0{DIGITS}d}" for n in range(10**DIGITS)]
    rng.shuffle(strings)
    if split == "test":
        return strings[:TEST_SIZE]
    if split == "train":
        return strings[TEST_SIZE:]
    raise ValueError(f"digit-reversal has splits 'train' and 'test', not {split!r}")


def reversal_prompt(digits: str) -> str:
    return f"Reverse {digits} ="


def digit_reversal(split: str = "train", n: int | None = None) -> list[dict[str, str]]:
    """GRPO prompts with their answers: ``{"prompt", "answer"}`` (``n`` rows, default all of the split)."""
    strings = _strings(split)[:n]
    return [{"prompt": reversal_prompt(s), "answer": s[::-1]} for s in strings]


def digit_reversal_sft(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The same task as SFT pairs ``{"prompt", "completion"}``, in a shuffled order (``seed``)."""
    rows = [{"prompt": row["prompt"], "completion": f" {row['answer']}"} for row in digit_reversal(split, n)]
    random.Random(seed).shuffle(rows)
    return rows
