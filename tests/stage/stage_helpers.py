"""Helpers of the stage-runner tests: small RLHFJob specs, and running a stage as ``python -m rlhf_trainer.stage``."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tiny_spec(**stages) -> dict:
    """An RLHFJob spec on the builtin tiny GPT-2 with the given stages (camelCase dicts)."""
    return {"model": {"builtin": "tiny-gpt2"}, "stages": stages}


SFT = {
    "dataset": {"builtin": "movie-reviews"},
    "training": {"maxSteps": 12, "perDeviceTrainBatchSize": 8, "maxSeqLength": 48, "learningRate": 1e-3,
                 "loggingSteps": 2},
    "checkpointing": {"saveSteps": 4},
    "reportTo": [],
}


def stage_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")]),
            **extra}


def run_stage(config_file: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_trainer.stage", str(config_file)], env=env or stage_env(),
                          capture_output=True, text=True, **kwargs)


def start_stage(config_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf_trainer.stage", str(config_file)], env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
