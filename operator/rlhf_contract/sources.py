"""Where a stage's models and datasets come from: a hub id, a path, a builtin, or (before planning) an earlier stage.

In a stage config every source is resolved: a ``fromStage`` has become that stage's model directory, a relative
path an absolute one (``rlhf_operator.plan`` does both).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator

from rlhf_contract.builtins import BUILTIN_DATASETS, BUILTIN_MODELS
from rlhf_contract.kinds import StageKind
from rlhf_contract.schema import Checked, Rule


class ModelSource(Checked):
    """Where a model comes from: exactly one of name (a hub id), path, builtin or fromStage."""

    choices = (("name",), ("path",), ("builtin",), ("from_stage",))
    only_with = {"revision": ("name",)}

    name: str | None = Field(None, min_length=1, description="Hugging Face hub id, e.g. gpt2.")
    revision: str | None = Field(None, min_length=1, description="Hub revision of name: branch, tag or commit.")
    path: str | None = Field(
        None, min_length=1,
        description="Directory of a saved model (config, weights, tokenizer); relative to the job's workspace "
                    "unless absolute.")
    builtin: Literal[tuple(BUILTIN_MODELS)] | None = Field(
        None, description="A tiny random-initialised model built on the spot, for tests and the demo.")
    from_stage: StageKind | None = Field(
        None, description="The model an earlier stage of this job trained; the plan turns it into that stage's "
                          "model directory.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Data type of the loaded weights (transformers' dtype); unset: float32.")
    quantization: Literal["8bit", "4bit"] | None = Field(
        None, description="Load the weights quantized with bitsandbytes (CUDA only), to train LoRA adapters on "
                          "top (peft).")
    trust_remote_code: bool = Field(False, description="Run the model's own Python code from its repository.")


class RewardSource(ModelSource):
    """What scores PPO's responses: exactly one of a reward model (fromStage, name, path or builtin) or a callable."""

    choices = (("name",), ("path",), ("builtin",), ("from_stage",), ("callable",))
    only_with = {"revision": ("name",), "label": ("name", "path", "builtin", "from_stage")}

    from_stage: Literal["reward"] | None = Field(
        None, description="The reward model trained by this job's reward stage.")
    label: str | None = Field(
        None, min_length=1,
        description="For a classifier with several outputs: the label (as in its id2label, e.g. POSITIVE) whose "
                    "logit is the score; unset: the single output of a reward model.")
    callable: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="A Python function module:function importable in the trainer image, called as "
                    "fn(queries: list[str], responses: list[str]) -> list[float].")
    input: Literal["query+response", "response"] = Field(
        "query+response", description="The text scored: the query followed by the response, or the response alone.")
    batch_size: int = Field(16, ge=1, description="Texts scored per forward pass of the reward model.")


DatasetFormat = Literal["jsonl", "json", "csv", "parquet"]
_FORMAT_SUFFIXES: dict[str, DatasetFormat] = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DatasetSource(Checked):
    """Where a dataset comes from: exactly one of name (a hub dataset), path (a local file) or builtin."""

    choices = (("name",), ("path",), ("builtin",))
    only_with = {"config": ("name",), "data_dir": ("name",), "revision": ("name",),
                 "split": ("name", "builtin"), "format": ("path",)}

    name: str | None = Field(None, min_length=1, description="Hugging Face hub dataset id, e.g. stanfordnlp/imdb.")
    config: str | None = Field(None, min_length=1, description="Configuration (subset) of the hub dataset.")
    data_dir: str | None = Field(None, min_length=1, description="Directory inside the hub dataset to read.")
    revision: str | None = Field(None, min_length=1, description="Hub revision of name: branch, tag or commit.")
    split: str | None = Field(
        None, min_length=1,
        description="Split of a hub or builtin dataset, with slicing as in datasets (train[:1000]); unset: train. "
                    "Builtin datasets have train and test.")
    path: str | None = Field(
        None, min_length=1,
        description="A jsonl, json, csv or parquet file, one row per example; relative to the job's workspace "
                    "unless absolute.")
    format: DatasetFormat | None = Field(None, description="Format of path; unset: from its extension.")
    builtin: Literal[BUILTIN_DATASETS] | None = Field(
        None, description="A small dataset shipped with the trainer, for tests and the demo.")

    @model_validator(mode="after")
    def _check_split_and_format(self) -> DatasetSource:
        if self.builtin is not None and self.split not in (None, "train", "test"):
            raise ValueError(f"builtin datasets have splits train and test, not {self.split!r}")
        if self.path is None and self.split is None:
            self.split = "train"
        if self.path is not None and self.format is None:
            suffix = posixpath.splitext(self.path)[1]
            if suffix not in _FORMAT_SUFFIXES:
                raise ValueError(f"cannot tell the format of {self.path!r} from its extension; set format "
                                 f"({', '.join(get_args(DatasetFormat))})")
            self.format = _FORMAT_SUFFIXES[suffix]
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        suffixes = " || ".join(f"self.path.endsWith('{suffix}')" for suffix in _FORMAT_SUFFIXES)
        return [
            *super().cel_rules(),
            Rule("!has(self.builtin) || !has(self.split) || self.split in ['train', 'test']",
                 "builtin datasets have splits train and test"),
            Rule(f"!has(self.path) || has(self.format) || {suffixes}",
                 "cannot tell the format of path from its extension; set format"),
        ]


Source = ModelSource | DatasetSource


def iter_sources(model: BaseModel, path: str = "") -> Iterator[tuple[str, Source]]:
    """Every model and dataset source in ``model`` (lists included), with its camelCase path (``reward``,
    ``evaluation.heldOutPrompts``, ``rewards[1]``)."""
    for name, field in type(model).model_fields.items():
        yield from _sources_in(getattr(model, name), f"{path}.{field.alias or name}".lstrip("."))


def _sources_in(value, here: str) -> Iterator[tuple[str, Source]]:
    if isinstance(value, ModelSource | DatasetSource):
        yield here, value
    elif isinstance(value, BaseModel):
        yield from iter_sources(value, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _sources_in(item, f"{here}[{index}]")


def map_sources(model: BaseModel, fn: Callable[[str, Source], Source], path: str = "") -> BaseModel:
    """A copy of ``model`` with every source (lists included) replaced by ``fn(path, source)``."""
    updates = {name: _mapped(getattr(model, name), fn, f"{path}.{field.alias or name}".lstrip("."))
               for name, field in type(model).model_fields.items()}
    return model.model_copy(update=updates)


def _mapped(value, fn: Callable[[str, Source], Source], here: str):
    if isinstance(value, ModelSource | DatasetSource):
        return fn(here, value)
    if isinstance(value, BaseModel):
        return map_sources(value, fn, here)
    if isinstance(value, list):
        return [_mapped(item, fn, f"{here}[{index}]") for index, item in enumerate(value)]
    return value
