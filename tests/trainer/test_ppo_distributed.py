"""Two processes (accelerate launch, CPU, gloo): stats reduced over ranks, a different sampling seed per rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("ppo_two_processes.py")


def test_ppo_loop_under_accelerate_launch_with_two_processes(tiny_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true", "TRANSFORMERS_VERBOSITY": "error"}
    # --multi_gpu picks the torchrun launcher (--cpu would run one process); ACCELERATE_USE_CPU keeps it on CPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(SCRIPT), tiny_model("tiny-gpt2")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank-*.json"))]
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    rank0, rank1 = reports
    assert rank0["sampled"] != rank1["sampled"]  # each rank samples with its own seed
    for step0, step1 in zip(rank0["steps"], rank1["steps"], strict=True):
        assert step0 == pytest.approx(step1)  # every process reports the same, reduced, statistics
        assert step0["ppo/mean_scores"] == pytest.approx(0.5)  # the mean of rank 0's zeros and rank 1's ones
        assert step0["kl_dist_len"] == 8  # both ranks' episodes
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-9)  # gradients were synchronised
