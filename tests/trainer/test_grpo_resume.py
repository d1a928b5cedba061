"""Checkpoint and resume continue exactly: N steps straight == N/2 steps, then resume for the other N/2."""

import pytest
import torch
from grpo_helpers import logs, make_trainer
from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """What the stage runner does on a stop request: save and stop at the end of a step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


@pytest.mark.parametrize(("overrides", "stop"), [
    ({}, 2),
    ({"num_iterations": 2, "beta": 0.05, "disable_dropout": False}, 2),
    ({"num_iterations": 2, "use_adaptive_entropy": True, "entropy_target": 10.0}, 1),  # inside a generation block
])
def test_resume_continues_exactly(tiny_model, tmp_path, overrides, stop):
    model = tiny_model("tiny-gpt2")
    settings = dict(max_steps=4, save_strategy="steps", save_steps=100, **overrides)
    straight = make_trainer(model, tmp_path / "straight", **settings)
    straight.train()

    first = make_trainer(model, tmp_path / "resumed", **settings)
    first.add_callback(StopAt(stop))
    first.train()
    second = make_trainer(model, tmp_path / "resumed", **settings)
    second.train(resume_from_checkpoint=True)

    # the resumed run's history holds the first run's records, then its own
    assert logs(second, "reward")[:len(logs(first, "reward"))] == logs(first, "reward")
    assert logs(second, "reward") == logs(straight, "reward") and len(logs(straight, "reward")) >= 2
    assert logs(second, "num_tokens")[-1] == logs(straight, "num_tokens")[-1]
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
