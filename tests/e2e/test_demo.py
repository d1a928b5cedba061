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


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}


def rlhf_run(workspace, *flags):
    return subprocess.run([sys.executable, "-m", "rlhf_operator.cli", "run", str(DEMO), "--workspace",
                           str(workspace), *flags], env=ENV, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("demo")
    return rlhf_run(workspace), workspace


def test_demo_succeeds_and_ends_with_a_short_summary(demo):
    done, workspace = demo
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("ppo: Succeeded"):].splitlines()[1:]
    assert len(summary) < 30, summary  # the answer to "did it work?", not the whole status
    rows = {}
    for line in summary:  # a row per stage first, then each stage's outputs
        if line.split() and line.split()[0] in ("sft", "reward", "ppo"):
            rows.setdefault(line.split()[0], line)
    assert all("Succeeded" in rows[stage] for stage in ("sft", "reward", "ppo")), summary
    assert "held-out reward" in rows["ppo"] and "VADER" in rows["ppo"] and "→" in rows["ppo"]
    assert f"tensorboard --logdir {workspace}" in done.stdout and "--status -o yaml" in done.stdout


def test_each_stage_draws_its_curves_and_the_summary_says_where(demo):
    done, workspace = demo
    for stage in ("sft", "reward", "ppo"):
        picture = workspace / stage / "curves.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"curves {picture}" in done.stdout


def test_the_full_status_is_one_flag_away(demo):
    _, workspace = demo
    done = rlhf_run(workspace, "--status", "-o", "yaml")
    assert done.returncode == 0, done.stderr
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
