"""The README's first command: the embedded tiny job end to end (SFT -> reward model -> PPO) on this machine.

This is the project's main promise, so it runs in CI (no opt-in marker): PPO's mean score must rise from its
first steps to its last, and an independent judge (VADER) must agree that held-out reviews got more positive.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "manifests" / "examples" / "sentiment-tiny.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}
    done = subprocess.run([sys.executable, "-m", "rlhf_operator.cli", "run", str(DEMO), "--workspace",
                           str(workspace)], env=env, capture_output=True, text=True, timeout=1200)
    return done, workspace


def test_demo_succeeds_and_prints_the_status(demo):
    done, _ = demo
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = yaml.safe_load(done.stdout.split("\nstatus:\n", 1)[1])
    assert status["phase"] == "Succeeded"
    assert [status["stages"][s]["phase"] for s in ("sft", "reward", "ppo")] == ["Succeeded"] * 3
    assert status["ppo"]["step"] == status["ppo"]["totalSteps"]


def test_ppo_mean_score_rises(demo):
    _, workspace = demo
    result = json.loads((workspace / "ppo" / "result.json").read_text())
    metrics = result["metrics"]
    assert metrics["meanScoreLastSteps"] > metrics["meanScoreFirstSteps"] + 0.5, metrics


def test_vader_judges_held_out_reviews_more_positive_after_ppo(demo):
    _, workspace = demo
    metrics = json.loads((workspace / "ppo" / "result.json").read_text())["metrics"]
    assert metrics["vaderAfter"] > metrics["vaderBefore"] + 0.1, metrics
    assert metrics["rewardAfter"] > metrics["rewardBefore"], metrics


def test_reward_model_prefers_positive_reviews(demo):
    _, workspace = demo
    metrics = json.loads((workspace / "reward" / "result.json").read_text())["metrics"]
    assert metrics["eval_accuracy"] >= 0.9
