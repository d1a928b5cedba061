"""What the SFT and reward trainers (and the stage runner) take in: datasets, tokenizer, lengths, checked with
errors that say what is wrong, where (column, row) and what to do."""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_MAX_LENGTH = 1024


class InvalidInput(ValueError):
    """Input the user must change (a setting, a dataset, a model that does not fit it). The stage runner exits with
    "invalid input, do not retry" on these only; any other error is a crash, retried from the last checkpoint."""


class DatasetError(InvalidInput):
    """A dataset that cannot be trained on. ``column`` and ``row`` (0-based) say where, when one is at fault."""

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column = column
        self.row = row


def to_dataset(data, name: str = "train_dataset"):
    """A `datasets.Dataset` from a Dataset or a list of row dicts (streaming datasets are not supported)."""
    from datasets import Dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, list):
        return Dataset.from_list(data)
    raise TypeError(f"{name} must be a datasets.Dataset or a list of row dicts, not {type(data).__name__} "
                    "(for a streaming dataset, load it without streaming=True)")


def is_blank(value) -> bool:
    """None, an empty or whitespace-only string, or an empty list."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, list | tuple) and not value)


def check_dataset(dataset, columns: Sequence[str], name: str = "train_dataset") -> None:
    """Raise `DatasetError` unless ``dataset`` has rows and every row has a non-blank value in each column."""
    if dataset is None or len(dataset) == 0:
        raise DatasetError(f"{name} is empty: it needs at least one row")
    present = list(dataset.column_names)
    for column in columns:
        if column not in present:
            raise DatasetError(f"{name} has no column {column!r} (its columns: {present})", column=column)
    for column in columns:
        for row, value in enumerate(dataset[column]):
            if is_blank(value):
                raise DatasetError(
                    f"{name} row {row}: {column!r} is {value!r}; every row needs a non-empty {column!r} "
                    "(drop or fix that row)", column=column, row=row)


def check_pad_token(tokenizer) -> None:
    """Refuse a tokenizer without a pad token, saying how to add one (we never pick EOS as pad behind your back)."""
    if tokenizer.pad_token_id is None:
        raise InvalidInput(
            "The tokenizer has no pad token, so batches cannot be padded. Add one and resize the model: "
            "tokenizer.add_special_tokens({'pad_token': '<pad>'}); model.resize_token_embeddings(len(tokenizer)). "
            "Or set tokenizer.pad_token = tokenizer.eos_token: SFT labels follow the attention mask, not the pad id, "
            "so EOS is still learned.")


def resolve_max_length(requested: int | None, tokenizer, config, field: str) -> int:
    """``requested``, checked against the model's positions; by default the smallest of the tokenizer's
    ``model_max_length``, the model's positions and 1024 (TRL's default)."""
    positions = getattr(config, "max_position_embeddings", None)  # absolute or rotary; None for T5's relative
    if requested is None:
        return min(tokenizer.model_max_length, positions or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    if requested < 2:
        raise InvalidInput(f"{field}={requested} is too small: sequences need at least 2 tokens")
    if positions is not None and requested > positions:
        raise InvalidInput(
            f"{field}={requested} is more than the model's {positions} positions "
            f"(config.max_position_embeddings); use {field} <= {positions}")
    return requested


def resolve_tokenizer(processing_class, tokenizer, model):
    """The one tokenizer given as ``processing_class`` (transformers 5) or ``tokenizer`` (TRL v0.7), else the
    model's own."""
    if processing_class is not None and tokenizer is not None and processing_class is not tokenizer:
        raise ValueError("pass the tokenizer once: processing_class= (transformers 5) or tokenizer= (TRL v0.7)")
    found = processing_class if processing_class is not None else tokenizer
    if found is not None:
        return found
    if not model.config._name_or_path:
        raise ValueError("pass tokenizer=...: the model was not loaded from a name or path to load one from")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.config._name_or_path)


def prepare_datasets(prepare, train_dataset, eval_dataset):
    """``prepare(dataset, name)`` applied to the training data and to the evaluation data (one dataset or a dict
    of named ones, as transformers' Trainer takes it)."""
    if train_dataset is not None:
        train_dataset = prepare(train_dataset, "train_dataset")
    if isinstance(eval_dataset, dict):
        eval_dataset = {key: prepare(data, f"eval_dataset[{key!r}]") for key, data in eval_dataset.items()}
    elif eval_dataset is not None:
        eval_dataset = prepare(eval_dataset, "eval_dataset")
    return train_dataset, eval_dataset


def resolve_fast_path(name: str, requested: bool | None, args, works: Callable[[], bool], why_not: str) -> bool:
    """Whether to take an optional fast path: ``requested`` None takes it where it ``works()``, True insists (a
    clear error where it cannot), False declines. FSDP and DeepSpeed keep the weights it reads sharded outside the
    forward pass, so it never works under them."""
    sharded = bool(args.fsdp) or args.deepspeed is not None
    supported = requested is False or (not sharded and works())
    if requested and not supported:
        raise InvalidInput(f"{name}=True, but {why_not}, or its weights are sharded (FSDP, DeepSpeed): use {name}=None")
    return supported if requested is None else requested
