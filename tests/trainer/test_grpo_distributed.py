"""Two processes (accelerate launch, CPU, gloo): advantages over whole groups that span processes, the same
metrics on every rank, the same parameters after training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("grpo_two_processes.py")


def test_grpo_under_accelerate_launch_with_two_processes(tiny_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(SCRIPT), tiny_model("tiny-gpt2")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank-*.json"))]
    assert (rank0["rank"], rank1["rank"], rank0["world"]) == (0, 1, 2)
    # Each group: two completions rewarded 0 on rank 0, two rewarded 1 on rank 1; mean 0.5 (no scaling).
    for step0, step1 in zip(rank0["advantages"], rank1["advantages"], strict=True):
        assert sorted(step0) == [-0.5, -0.5] and sorted(step1) == [0.5, 0.5]
    assert rank0["records"] == rank1["records"]  # every metric reduced over both processes
    assert rank0["records"][0]["reward"] == 0.5 and rank0["records"][0]["frac_reward_zero_std"] == 0.0
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-12)  # gradients were synchronised
