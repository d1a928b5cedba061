"""What PPO maximises: scorers ``(queries, responses) -> list[float]`` built from a reward source (a reward or
classifier model, or a Python callable).

The reward side always re-tokenises text with its own tokenizer: policy and reward model may not share one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from rlhf_contract.sources import RewardSource
from rlhf_trainer.stage.sources import StageInputError, model_kwargs, model_path

Scorer = Callable[[list[str], list[str]], list[float]]


def make_scorer(source: RewardSource, workspace: str, device: torch.device) -> Scorer:
    if source.callable is not None:
        return _callable(source.callable)
    return ModelScorer(source, workspace, device)


def _callable(reference: str) -> Scorer:
    module_name, _, name = reference.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise StageInputError(f"reward.callable {reference!r} cannot be imported: {exc}") from exc

    def score(queries: list[str], responses: list[str]) -> list[float]:
        scores = [float(s) for s in fn(queries, responses)]
        if len(scores) != len(responses):
            raise StageInputError(f"reward.callable {reference} returned {len(scores)} scores for {len(responses)} "
                             "responses; it must return one per response")
        return scores

    return score


class ModelScorer:
    """Scores text with a sequence-classification model: the logit of ``label``, or the single output."""

    def __init__(self, source: RewardSource, workspace: str, device: torch.device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = model_path(source, workspace)
        kwargs = model_kwargs(source)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=kwargs.get("revision"),
                                                       trust_remote_code=source.trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).to(device).eval()
        self.index = self._label_index(source.label)
        self.with_query = source.input == "query+response"
        self.batch_size = source.batch_size
        self.device = device
        self.revision = getattr(self.model.config, "_commit_hash", None)

    def _label_index(self, label: str | None) -> int:
        config = self.model.config
        if label is None:
            if config.num_labels != 1:
                raise StageInputError(
                    f"the reward model has {config.num_labels} outputs {list(config.id2label.values())}: set "
                    "reward.label to the one whose logit is the score")
            return 0
        if label not in config.label2id:
            raise StageInputError(f"reward.label {label!r} is not one of the model's labels "
                                  f"{list(config.label2id)}")
        return config.label2id[label]

    @torch.no_grad()
    def __call__(self, queries: list[str], responses: list[str]) -> list[float]:
        texts = [q + r for q, r in zip(queries, responses, strict=True)] if self.with_query else list(responses)
        scores = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                    return_tensors="pt").to(self.device)
            scores += self.model(**inputs).logits[:, self.index].float().tolist()
        return scores
