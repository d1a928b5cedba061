"""Running a script under ``accelerate launch`` with two CPU processes (gloo), as a multi-GPU job would run."""

import json
import os
import subprocess
import sys
from pathlib import Path


def launch_two_processes(script: Path, model: str, cwd: Path) -> list[dict]:
    """Each rank's report: the ``rank-<i>.json`` the script writes in ``cwd``, rank 0 first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true", "TRANSFORMERS_VERBOSITY": "error"}
    # --multi_gpu picks the torchrun launcher (--cpu would run one process); ACCELERATE_USE_CPU keeps it on CPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(script), model]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(cwd.glob("rank-*.json"))]
