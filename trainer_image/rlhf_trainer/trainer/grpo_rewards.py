"""GRPO's reward functions: names for metrics, reward models, and calling them all on a batch of completions.

A reward function is a callable ``f(prompts=, completions=, completion_ids=, **kwargs) -> list[float | None]``
(sync or async), a reward model (a hub id, a path or a ``PreTrainedModel`` with a one-label sequence-classification
head), or a list mixing both. None means "not applicable to this completion".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import os
import threading
from collections.abc import Callable, Sequence

import torch


def reward_name(function) -> str:
    """The name its metrics go by: ``__name__``; a ``functools.partial``'s inner function; a callable instance's
    class name; a reward model's last part of its name or path."""
    while isinstance(function, functools.partial):
        function = function.func
    if isinstance(function, RewardModel):
        return function.name
    if isinstance(function, torch.nn.Module):
        return str(getattr(function.config, "_name_or_path", "") or type(function).__name__).rstrip("/").split("/")[-1]
    if inspect.isfunction(function) or inspect.ismethod(function) or inspect.isbuiltin(function):
        return function.__name__
    return type(function).__name__


class RewardModel:
    """A sequence-classification model as a reward function: the score of prompt + completion text (chat template
    for conversations), right padded, no special tokens added; reward = ``logits[:, 0]``."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.name = str(model.config._name_or_path or type(model).__name__).rstrip("/").split("/")[-1]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token

    def texts(self, prompts: list, completions: list) -> list[str]:
        if prompts and isinstance(prompts[0], list):
            return [self.tokenizer.apply_chat_template(p + c, tokenize=False)
                    for p, c in zip(prompts, completions, strict=True)]
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **_) -> list[float]:
        texts = self.texts(prompts, completions)
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, padding_side="right",
                                   add_special_tokens=False, return_tensors="pt").to(device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def load_reward_functions(reward_funcs, reward_processing_classes=None, model_init_kwargs: dict | None = None,
                          trust_remote_code: bool = False) -> list:
    """The reward functions as callables; a hub id, path or model becomes a `RewardModel` (its tokenizer from
    ``reward_processing_classes``, one entry per function, None for the model's own)."""
    functions = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    if not functions:
        raise ValueError("reward_funcs is empty: pass at least one reward function or reward model")
    classes = reward_processing_classes
    classes = list(classes) if isinstance(classes, list | tuple) else [classes] * len(functions)
    if len(classes) != len(functions):
        raise ValueError(f"reward_processing_classes has {len(classes)} entries for {len(functions)} reward "
                         "functions: give one per function (None where it is not a model)")
    loaded = []
    for function, tokenizer in zip(functions, classes, strict=True):
        if isinstance(function, str | os.PathLike | torch.nn.Module):
            loaded.append(_reward_model(function, tokenizer, model_init_kwargs, trust_remote_code))
        elif callable(function):
            loaded.append(function)
        else:
            raise TypeError(f"reward function {function!r} is neither a callable, a model nor a model name or path")
    return loaded


def _reward_model(model, tokenizer, model_init_kwargs, trust_remote_code) -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(model, str | os.PathLike):
        kwargs = dict(model_init_kwargs or {})
        kwargs.pop("dtype", None)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model), num_labels=1, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path, trust_remote_code=trust_remote_code)
    model.requires_grad_(False)
    return RewardModel(model.eval(), tokenizer)


def compute_rewards(functions: Sequence[Callable], names: Sequence[str], prompts: list, completions: list,
                    completion_ids: list[list[int]], kwargs: dict) -> torch.Tensor:
    """``R[i, k]``: function k's reward for completion i, NaN where it returned None. Async functions run
    concurrently. Each answer is checked: one number (or None) per completion, else an error naming the function."""
    results: list = [None] * len(functions)
    pending = {}
    for k, (function, name) in enumerate(zip(functions, names, strict=True)):
        try:
            value = function(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as error:
            raise RuntimeError(f"reward function {name!r} raised {type(error).__name__}: {error}") from error
        if inspect.isawaitable(value):
            pending[k] = value
        else:
            results[k] = value
    if pending:
        for k, value in zip(pending, _run_concurrently(list(pending.values())), strict=True):
            if isinstance(value, BaseException):
                raise RuntimeError(f"reward function {names[k]!r} raised {type(value).__name__}: {value}") from value
            results[k] = value
    columns = [_checked(result, name, len(completions)) for result, name in zip(results, names, strict=True)]
    return torch.tensor(columns, dtype=torch.float32).T.reshape(len(completions), len(functions))


def _checked(values, name: str, expected: int) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"reward function {name!r} returned {type(values).__name__}; it must return a list of "
                        f"{expected} floats (None where it does not apply), one per completion")
    if len(values) != expected:
        raise ValueError(f"reward function {name!r} returned {len(values)} values for {expected} completions; it "
                         "must return one per completion (None where it does not apply)")
    checked = []
    for i, value in enumerate(values):
        if value is None:
            checked.append(math.nan)
        elif isinstance(value, int | float) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            checked.append(float(value))
        else:
            raise TypeError(f"reward function {name!r} returned {value!r} for completion {i}; rewards must be "
                            "numbers or None")
    return checked


def _run_concurrently(awaitables: list) -> list:
    """Await them together; in a thread of its own when the caller already runs an event loop (notebooks)."""
    async def gather():
        return await asyncio.gather(*awaitables, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    box = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(gather())))
    thread.start()
    thread.join()
    return box[0]
