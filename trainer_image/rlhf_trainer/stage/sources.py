"""Turn a stage config's sources into things to train with: model paths and load options, tokenizers, datasets.

A model source is a hub id (+ revision), a path, or a builtin tiny model (built into the workspace on first
use); a dataset source is a hub dataset, a local jsonl/json/csv/parquet file, or a builtin dataset. Problems the
user can fix (a missing file, an unknown column) raise `StageInputError`, which the runner reports and exits 4 on.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhf_contract.settings import HeldOut
from rlhf_contract.sources import DatasetSource, ModelSource
from rlhf_trainer.trainer.inputs import InvalidInput

_DATASET_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


class StageInputError(InvalidInput):
    """A model, dataset or setting of the stage config that cannot be used as given."""


def model_path(source: ModelSource, workspace: str) -> str:
    """What ``from_pretrained`` takes for this source: a hub id, or a local directory."""
    if source.builtin is not None:
        return _builtin_model_dir(source.builtin, workspace)
    if source.path is not None:
        if not (Path(source.path) / "config.json").is_file():
            raise StageInputError(f"model path {source.path!r} holds no saved model (no config.json there)")
        return source.path
    return source.name


def _builtin_model_dir(name: str, workspace: str) -> str:
    """Builtin models are built once per workspace (deterministically), by the first process to need them."""
    from rlhf_trainer.stage.runner import processes
    from rlhf_trainer.tiny import save_builtin

    directory = Path(workspace) / ".builtin" / name
    # Every process enters (it is a barrier): one that looked first and skipped it would leave the others waiting.
    with processes().main_process_first():
        if not (directory / "config.json").is_file():
            tmp = directory.with_name(f"{name}.tmp-{os.getpid()}")
            save_builtin(name, tmp)
            os.replace(tmp, directory)
    return str(directory)


def model_kwargs(source: ModelSource) -> dict:
    """Keyword arguments of ``from_pretrained`` for this source."""
    kwargs: dict = {"trust_remote_code": source.trust_remote_code}
    if source.revision is not None:
        kwargs["revision"] = source.revision
    if source.dtype is not None:
        kwargs["dtype"] = source.dtype
    if source.quantization is not None:
        kwargs["quantization_config"] = quantization_config(source.quantization)
    return kwargs


def revision(loaded) -> str | None:
    """The exact version of a loaded model (its hub commit) or dataset (its content fingerprint), when known."""
    config = getattr(loaded, "config", None)
    return getattr(config, "_commit_hash", None) or getattr(loaded, "_fingerprint", None)


def quantization_config(kind: str):
    import torch

    if not torch.cuda.is_available():
        raise StageInputError(f"quantization {kind!r} needs a CUDA GPU and bitsandbytes; this machine has no GPU "
                              "(remove model.quantization to train in full precision)")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_tokenizer(source: ModelSource, workspace: str):
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in model_kwargs(source).items() if k in ("revision", "trust_remote_code")}
    return AutoTokenizer.from_pretrained(model_path(source, workspace), **kwargs)


def load_dataset(source: DatasetSource, split: str | None = None):
    """A `datasets.Dataset` for ``source`` (``split`` overrides the source's own)."""
    import datasets

    split = split or source.split or "train"
    if source.builtin is not None:
        from rlhf_trainer.data import load_builtin

        return datasets.Dataset.from_list(load_builtin(source.builtin, split))
    if source.path is not None:
        if not Path(source.path).is_file():
            raise StageInputError(f"dataset file {source.path!r} does not exist")
        try:
            return datasets.load_dataset(_DATASET_BUILDERS[source.format], data_files=source.path, split="train")
        except Exception as exc:
            raise StageInputError(f"cannot read {source.path!r} as {source.format}: {exc}") from exc
    return datasets.load_dataset(
        source.name, source.config, data_dir=source.data_dir, revision=source.revision, split=split)


def train_and_eval(source: DatasetSource, held_out: HeldOut | None, seed: int):
    """The training rows and the held-out rows (None without ``held_out``)."""
    train = load_dataset(source)
    if held_out is None:
        return train, None
    if held_out.split is not None:
        return train, load_dataset(source, split=held_out.split)
    parts = train.train_test_split(test_size=held_out.fraction, seed=seed)
    return parts["train"], parts["test"]


def held_out_columns(config, columns: list[str]) -> list[tuple]:
    """The held-out split to check beside the dataset, when the evaluation names one."""
    if config.evaluation is None or config.evaluation.split is None:
        return []
    return [("evaluation.split", config.dataset.model_copy(update={"split": config.evaluation.split}), columns)]


def renamed(dataset, mapping: dict[str, str | None], what: str):
    """``dataset`` with the columns the config names renamed to what the trainer expects (``mapping``:
    expected name -> configured column). A configured column that is missing is reported by name."""
    renames = {}
    for expected, column in mapping.items():
        if column is None:
            continue
        if column not in dataset.column_names:
            raise StageInputError(f"{what} has no column {column!r} (its columns: {dataset.column_names})")
        if column != expected:
            renames[column] = expected
    clashing = [name for name in renames.values() if name in dataset.column_names]
    return dataset.remove_columns(clashing).rename_columns(renames) if renames else dataset
