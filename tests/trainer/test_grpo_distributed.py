"""Two processes (accelerate launch, CPU, gloo): advantages over whole groups that span processes, the same
metrics on every rank, the same parameters after training."""

from pathlib import Path

import pytest
from two_processes import launch_two_processes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("grpo_two_processes.py")


def test_grpo_under_accelerate_launch_with_two_processes(tiny_model, tmp_path):
    rank0, rank1 = launch_two_processes(SCRIPT, tiny_model("tiny-gpt2"), tmp_path)
    assert (rank0["rank"], rank1["rank"], rank0["world"]) == (0, 1, 2)
    # Each group: two completions rewarded 0 on rank 0, two rewarded 1 on rank 1; mean 0.5 (no scaling).
    for step0, step1 in zip(rank0["advantages"], rank1["advantages"], strict=True):
        assert sorted(step0) == [-0.5, -0.5] and sorted(step1) == [0.5, 0.5]
    assert rank0["records"] == rank1["records"]  # every metric reduced over both processes
    assert rank0["records"][0]["reward"] == 0.5 and rank0["records"][0]["frac_reward_zero_std"] == 0.0
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-12)  # gradients were synchronised
