"""Model sources as the stage's processes resolve them."""

from contextlib import contextmanager
from pathlib import Path

from rlhf_contract.sources import ModelSource
from rlhf_trainer.stage import runner
from rlhf_trainer.stage.sources import model_path


def test_every_process_passes_the_builtin_model_barrier_even_once_the_model_is_built(tmp_path, monkeypatch):
    # main_process_first is a barrier: a process that found the model already built and skipped it (the main
    # process was quicker) would leave the others waiting in it for ever.
    entered = []

    class Processes:
        @contextmanager
        def main_process_first(self):
            entered.append("barrier")
            yield

    monkeypatch.setattr(runner, "processes", Processes)
    source = ModelSource(builtin="tiny-gpt2")
    built = model_path(source, str(tmp_path))
    again = model_path(source, str(tmp_path))

    assert built == again and (Path(built) / "config.json").is_file()
    assert entered == ["barrier", "barrier"]
