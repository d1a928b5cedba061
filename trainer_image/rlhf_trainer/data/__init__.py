"""Small datasets shipped with the package, for the demo and the tests (pure Python, no torch).

Reviews are composed deterministically from the sentence bank in ``movie_reviews.json``: a review is two or
three "<subject> <predicate>." sentences of one sentiment, sometimes with a neutral sentence in between.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib import resources

from rlhf_contract.builtins import BUILTIN_DATASETS


@cache
def sentence_bank() -> dict[str, list[str]]:
    return json.loads(resources.files(__name__).joinpath("movie_reviews.json").read_text())


def _sentence(rng: random.Random, subjects: list[str], predicates: list[str]) -> str:
    return f"{rng.choice(subjects)} {rng.choice(predicates)}."


def _review(rng: random.Random, sentiment: str) -> str:
    bank = sentence_bank()
    sentences = [_sentence(rng, bank["subjects"], bank[sentiment]) for _ in range(rng.randint(2, 3))]
    if rng.random() < 0.3:
        sentences.insert(1, _sentence(rng, bank["subjects"], bank["neutral"]))
    return " ".join(sentences)


def movie_reviews(n: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """`n` short reviews, half positive and half negative: ``{"text", "label"}``."""
    rng = random.Random(seed)
    return [
        {"text": _review(rng, sentiment), "label": sentiment}
        for sentiment in ("positive", "negative") * (n // 2)
    ]


def train_subjects() -> list[str]:
    bank = sentence_bank()
    return [s for s in bank["subjects"] if s not in bank["held_out_subjects"]]


def movie_preferences(n: int = 400, seed: int = 1) -> list[dict[str, str]]:
    """Preference pairs on the same opening, the positive continuation preferred:
    ``{"prompt", "chosen", "rejected"}``."""
    rng = random.Random(seed)
    bank = sentence_bank()
    rows = []
    for _ in range(n):
        subject = rng.choice(train_subjects())
        rows.append({
            "prompt": subject,
            "chosen": f" {rng.choice(bank['positive'])}. {_sentence(rng, bank['subjects'], bank['positive'])}",
            "rejected": f" {rng.choice(bank['negative'])}. {_sentence(rng, bank['subjects'], bank['negative'])}",
        })
    return rows


def movie_prompts(split: str = "train") -> list[dict[str, str]]:
    """Review openings for PPO: ``{"query"}``; the ``test`` split holds subjects PPO never trains on."""
    if split not in ("train", "test"):
        raise ValueError(f"movie-prompts has splits 'train' and 'test', not {split!r}")
    subjects = train_subjects() if split == "train" else sentence_bank()["held_out_subjects"]
    return [{"query": s} for s in subjects]


def load_builtin(name: str, split: str = "train") -> list[dict[str, str]]:
    """Rows of a builtin dataset by name (see ``BUILTIN_DATASETS``)."""
    if name == "movie-reviews":
        return movie_reviews(seed=0 if split == "train" else 100, n=600 if split == "train" else 100)
    if name == "movie-preferences":
        return movie_preferences(seed=1 if split == "train" else 101, n=400 if split == "train" else 100)
    if name == "movie-prompts":
        return movie_prompts(split)
    if name in ("digit-reversal", "digit-reversal-sft"):
        from rlhf_trainer.data.digits import digit_reversal, digit_reversal_sft

        return digit_reversal(split) if name == "digit-reversal" else digit_reversal_sft(split)
    raise ValueError(f"unknown builtin dataset {name!r}; builtin datasets are {', '.join(BUILTIN_DATASETS)}")


def tokenizer_corpus() -> list[str]:
    """Every sentence the package ships, for training the tiny tokenizer."""
    bank = sentence_bank()
    texts = [f"{s} {p}." for s in bank["subjects"] for kind in ("positive", "negative", "neutral") for p in bank[kind]]
    texts += [row["text"] for row in movie_reviews(200, seed=7)]
    texts += [
        "Hello! How are you today? I am fine, thank you.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
        "Question: What is two plus two? Answer: four.",
        "Summarize the following review in one sentence.",
        "You are a helpful assistant.",
    ]
    return texts
