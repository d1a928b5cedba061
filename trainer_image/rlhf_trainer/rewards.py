"""Reward functions to name in a stage's ``reward.callable`` (``rlhf_trainer.rewards:vader_sentiment``), and the
builtin verifiers of the grpo stage's ``rewards[].verifier``.

PPO's are called as ``fn(queries: list[str], responses: list[str]) -> list[float]``, one score per response.
GRPO's have TRL's reward-function signature, ``fn(prompts, completions, **kwargs) -> list[float | None]``, with
the dataset's other columns (here ``answer``) among the keyword arguments.
"""

from __future__ import annotations

import re


def vader_compound(texts: list[str]) -> list[float]:
    """VADER's compound sentiment score of each text, in [-1, 1] (rule-based: no model, no download)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(text)["compound"] for text in texts]


def vader_sentiment(queries: list[str], responses: list[str]) -> list[float]:
    """How positive each response is, by VADER: a reward for steering a model towards positive text."""
    return vader_compound(responses)


_ANSWER = re.compile(r"^ ?(\d+)$")


def _completion_text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def reversal_exact(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where the completion is exactly the answer (one optional leading space, nothing after), else 0.0."""
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        found = _ANSWER.match(_completion_text(completion))
        scores.append(float(found is not None and found.group(1) == expected))
    return scores


def reversal_digits(prompts, completions, answer, **kwargs) -> list[float]:
    """Partial credit: the share of the answer's positions the completion's digits get right (extra or missing
    digits count as wrong), so a completion can be better than another without being exact."""
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        digits = "".join(c for c in _completion_text(completion) if c.isdigit())
        right = sum(a == b for a, b in zip(digits, expected, strict=False))
        scores.append(right / max(len(expected), len(digits)))
    return scores


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def math_answer(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 where the completion's last number equals the answer's (GSM8K's answers end ``#### 42``: the number
    after ``####``; else the answer's last number), else 0.0; None for a row whose answer holds no number."""
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        target = _last_number(str(expected).rsplit("####", 1)[-1])
        got = _last_number(_completion_text(completion))
        scores.append(None if target is None else float(got is not None and abs(got - target) < 1e-6))
    return scores


VERIFIERS = {"digit-reversal-exact": reversal_exact, "digit-reversal-digits": reversal_digits,
             "math-answer": math_answer}
"""The builtin verifiers a grpo stage's rewards name (``verifier: digit-reversal-exact``)."""
