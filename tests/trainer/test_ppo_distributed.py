"""Two processes (accelerate launch, CPU, gloo): stats reduced over ranks, a different sampling seed per rank."""

from pathlib import Path

import pytest
from two_processes import launch_two_processes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("ppo_two_processes.py")


def test_ppo_loop_under_accelerate_launch_with_two_processes(tiny_model, tmp_path):
    reports = launch_two_processes(SCRIPT, tiny_model("tiny-gpt2"), tmp_path)
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    rank0, rank1 = reports
    assert rank0["sampled"] != rank1["sampled"]  # each rank samples with its own seed
    for step0, step1 in zip(rank0["steps"], rank1["steps"], strict=True):
        assert step0 == pytest.approx(step1)  # every process reports the same, reduced, statistics
        assert step0["ppo/mean_scores"] == pytest.approx(0.5)  # the mean of rank 0's zeros and rank 1's ones
        assert step0["kl_dist_len"] == 8  # both ranks' episodes
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-9)  # gradients were synchronised
