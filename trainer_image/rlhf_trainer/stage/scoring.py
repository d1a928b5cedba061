"""What an RL stage maximises, from the sources a stage config names: PPO's scorers ``(queries, responses) ->
list[float]`` (a reward or classifier model, or a Python callable), and GRPO's reward functions with TRL's
signature ``fn(prompts, completions, **columns) -> list[float | None]`` (a builtin verifier, a Python function,
or a model wrapped as one).

The reward side always re-tokenises text with its own tokenizer: policy and reward model may not share one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from rlhf_contract.sources import ModelSource, RewardSource
from rlhf_contract.stages.grpo import RewardFunction
from rlhf_trainer.stage.sources import StageInputError, model_kwargs, model_path

Scorer = Callable[[list[str], list[str]], list[float]]


def make_scorer(source: RewardSource, workspace: str, device: torch.device) -> Scorer:
    """PPO's scorer of a reward source."""
    if source.callable is not None:
        return _callable(source.callable)
    return ModelScorer(source, workspace, device, label=source.label, with_query=source.input == "query+response",
                       batch_size=source.batch_size)


def import_function(reference: str, field: str):
    """The function ``module:function`` names."""
    module_name, _, name = reference.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise StageInputError(f"{field} {reference!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise StageInputError(f"{field} {reference!r} is not a function")
    return fn


def _callable(reference: str) -> Scorer:
    fn = import_function(reference, "reward.callable")

    def score(queries: list[str], responses: list[str]) -> list[float]:
        scores = [float(s) for s in fn(queries, responses)]
        if len(scores) != len(responses):
            raise StageInputError(f"reward.callable {reference} returned {len(scores)} scores for {len(responses)} "
                             "responses; it must return one per response")
        return scores

    return score


class ModelScorer:
    """Scores text with a sequence-classification model: the logit of ``label``, or the single output; the query
    and the response together (``with_query``), or the response alone."""

    def __init__(self, source: ModelSource, workspace: str, device: torch.device, label: str | None = None,
                 with_query: bool = True, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = model_path(source, workspace)
        kwargs = model_kwargs(source)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=kwargs.get("revision"),
                                                       trust_remote_code=source.trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).to(device).eval()
        self.index = self._label_index(label)
        self.with_query = with_query
        self.batch_size = batch_size
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


def reward_function(source: RewardFunction, field: str, workspace: str, device: torch.device):
    """GRPO's reward function of a source: a builtin verifier, the named Python function, or a reward model scoring
    prompt + completion, named (for the metrics) after where it comes from."""
    if source.verifier is not None:
        from rlhf_trainer.rewards import VERIFIERS

        return VERIFIERS[source.verifier]
    if source.callable is not None:
        return import_function(source.callable, f"{field}.callable")
    scorer = ModelScorer(source, workspace, device, label=source.label)

    def score(prompts, completions, **columns) -> list[float]:
        return scorer([_text(p) for p in prompts], [_text(c) for c in completions])

    # TRL names a model after the last part of its id or path; a stage's output <stage>/model is <stage>-model
    parts = (source.path or source.name or source.builtin).rstrip("/").split("/")
    name = "-".join(parts[-2:]) if parts[-1] == "model" and len(parts) > 1 else parts[-1]
    score.__name__ = name + (f"-{source.label}" if source.label else "")
    return score


def _text(value) -> str:
    """A prompt or completion as text: itself, or a conversation's messages' contents."""
    return value if isinstance(value, str) else "".join(message["content"] for message in value)
