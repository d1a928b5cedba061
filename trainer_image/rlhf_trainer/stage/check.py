"""Check stages' inputs before anything trains: model paths hold models, datasets load and have the columns each
stage reads, with no blank value (the first bad row is named). ``rlhf run`` checks every stage of a job this way
before it runs the first, so a bad PPO dataset is found before SFT has spent its time.

Each stage kind's runner module says what it reads with ``dataset_columns(config) -> [(field, source, columns)]``.
"""

from __future__ import annotations

import importlib

from rlhf_trainer.stage.config import ModelSource, StageAssignment, iter_sources
from rlhf_trainer.stage.runner import RUNNERS
from rlhf_trainer.stage.sources import StageInputError, load_dataset, model_path
from rlhf_trainer.trainer.inputs import check_dataset


def check_stage(config: StageAssignment, produced: frozenset[str] = frozenset()) -> None:
    """Raise `StageInputError` / `DatasetError` naming the field, column and row at fault.

    ``produced``: model paths that earlier stages of the job will write (they need not exist yet).
    """
    for field, source in iter_sources(config):
        if isinstance(source, ModelSource) and source.path is not None and source.path not in produced:
            try:
                model_path(source, config.workspace)
            except StageInputError as exc:
                raise StageInputError(f"{field}.path: {exc}") from exc
    runner = importlib.import_module(RUNNERS[config.kind])
    for field, source, columns in runner.dataset_columns(config):
        check_dataset(load_dataset(source), columns, name=field)
