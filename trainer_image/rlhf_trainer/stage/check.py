"""Check stages' inputs before anything trains: model paths hold models, reward callables import, datasets load and
have the columns each stage reads, with no blank value (the first bad row is named). ``rlhf run`` checks every stage of a job this way
before it runs the first, so a bad PPO dataset is found before SFT has spent its time.

Each stage kind's runner module says what it reads with ``dataset_columns(config) -> [(field, source, columns)]``.
"""

from __future__ import annotations

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.sources import ModelSource, iter_sources
from rlhf_trainer.stage.runner import runner
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
        if getattr(source, "callable", None) is not None:
            from rlhf_trainer.stage.scoring import import_function

            import_function(source.callable, f"{field}.callable")
    for field, source, columns in runner(config.kind).dataset_columns(config):
        check_dataset(load_dataset(source), columns, name=field)
