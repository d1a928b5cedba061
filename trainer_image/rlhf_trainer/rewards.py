"""Reward functions to name in a PPO stage's ``reward.callable`` (``rlhf_trainer.rewards:vader_sentiment``).

Each is called as ``fn(queries: list[str], responses: list[str]) -> list[float]``, one score per response.
"""

from __future__ import annotations


def vader_compound(texts: list[str]) -> list[float]:
    """VADER's compound sentiment score of each text, in [-1, 1] (rule-based: no model, no download)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(text)["compound"] for text in texts]


def vader_sentiment(queries: list[str], responses: list[str]) -> list[float]:
    """How positive each response is, by VADER: a reward for steering a model towards positive text."""
    return vader_compound(responses)
