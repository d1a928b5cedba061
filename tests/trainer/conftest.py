import pytest
from transformers import TrainingArguments


@pytest.fixture
def quick_args(tmp_path):
    """``quick_args(**overrides)`` -> quiet TrainingArguments (or ``cls=RewardConfig``) writing under tmp_path."""

    def make(cls=TrainingArguments, **overrides):
        settings = dict(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no",
                        disable_tqdm=True, logging_steps=1, dataloader_pin_memory=False)
        return cls(**{**settings, **overrides})

    return make
