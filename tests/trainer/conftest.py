import pytest
import torch
from transformers import TrainingArguments


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread, and do not stall when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def quick_args(tmp_path):
    """``quick_args(**overrides)`` -> quiet TrainingArguments (or ``cls=RewardConfig``) writing under tmp_path."""

    def make(cls=TrainingArguments, **overrides):
        settings = dict(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no",
                        disable_tqdm=True, logging_steps=1, dataloader_pin_memory=False)
        return cls(**{**settings, **overrides})

    return make
