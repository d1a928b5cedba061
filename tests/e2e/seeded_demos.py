"""Running an example manifest end to end with ``rlhf run`` on several seeds (every stage's seed changed, nothing
else), for the demos whose promise is that training helps on every seed, not on one lucky one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}


def run_seeds(manifest: str, stage: str, seeds, folder_for) -> dict[int, dict]:
    """``{seed: the result.json of stage}`` after running ``manifests/examples/<manifest>`` once per seed."""
    found = {}
    for seed in seeds:
        folder = folder_for(f"seed{seed}")
        job = yaml.safe_load((ROOT / "manifests" / "examples" / manifest).read_text())
        for settings in job["spec"]["stages"].values():
            settings["seed"] = seed
        (folder / "job.yaml").write_text(yaml.safe_dump(job))
        done = subprocess.run([sys.executable, "-m", "rlhf_operator.cli", "run", str(folder / "job.yaml"),
                               "--workspace", str(folder / "ws")], env=ENV, capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        found[seed] = json.loads((folder / "ws" / stage / "result.json").read_text())
    return found
