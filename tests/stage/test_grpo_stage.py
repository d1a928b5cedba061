"""The grpo stage as the trainer image runs it: rewards of every kind, held-out rewards before and after, guardrails,
SIGTERM and resume, bad input."""

import os
import signal
import time

from stage_helpers import run_stage, stage_env, start_stage, tiny_spec
from transformers import AutoModelForCausalLM

from rlhf_contract.workspace import StageDir, read_metrics
from rlhf_trainer.tiny import save_tiny

GRPO = {
    "rewards": [{"verifier": "digit-reversal-exact"}, {"verifier": "digit-reversal-digits", "weight": 0.5}],
    "dataset": {"builtin": "digit-reversal"},
    "steps": 4,
    "config": {"learningRate": 1e-3, "perDeviceTrainBatchSize": 8, "numGenerations": 4, "loggingSteps": 1,
               "gradientCheckpointing": False},
    "generation": {"maxCompletionLength": 4},
    "evaluation": {"heldOutPrompts": {"builtin": "digit-reversal", "split": "test"}, "samples": 2, "maxPrompts": 8},
    "checkpointing": {"saveSteps": 2},
    "reportTo": [],
}


def grpo(**changes) -> dict:
    return {**GRPO, **changes}


def stage_dir(config_file) -> StageDir:
    return StageDir(config_file.parents[1] / config_file.stem)


def test_grpo_trains_on_verifier_rewards_and_reports_held_out_rewards_before_and_after(plan_stages):
    files = plan_stages(tiny_spec(grpo=grpo()))
    done = run_stage(files["grpo"])
    assert done.returncode == 0, done.stderr[-3000:]
    stage = stage_dir(files["grpo"])
    result = stage.read_result()
    assert (result["phase"], result["steps"], result["totalSteps"]) == ("Succeeded", 4, 4)
    metrics = result["metrics"]
    assert {"rewardBefore", "rewardAfter", "reversal_exactBefore", "reversal_exactAfter", "reversal_digitsBefore",
            "reversal_digitsAfter", "rewardFirstSteps", "rewardLastSteps"} <= set(metrics)
    # the weighted sum: exact (weight 1) + digits (weight 0.5)
    assert metrics["rewardBefore"] == metrics["reversal_exactBefore"] + 0.5 * metrics["reversal_digitsBefore"]
    records = [r for r in read_metrics(stage.metrics) if "result" not in r]
    keys = set().union(*(r["metrics"] for r in records))
    assert {"reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "entropy",
            "rewards/reversal_exact/mean", "rewards/reversal_digits/mean"} <= keys  # TRL's metric names
    AutoModelForCausalLM.from_pretrained(stage.model)
    assert (stage.root / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_rewards_from_a_python_function_and_a_reward_model(plan_stages, tmp_path):
    (tmp_path / "length_reward.py").write_text(
        "def shortness(prompts, completions, answer, **columns):\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n")
    classifier = save_tiny(tmp_path / "judge", "gpt2", "seq-cls", num_labels=2,
                           id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    rewards = [{"callable": "length_reward:shortness"}, {"path": str(classifier), "label": "POSITIVE", "weight": 0.1}]
    files = plan_stages(tiny_spec(grpo=grpo(rewards=rewards, steps=2, evaluation=None)))
    env = stage_env()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    done = run_stage(files["grpo"], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = set().union(*(r["metrics"] for r in read_metrics(stage_dir(files["grpo"]).metrics)))
    assert {"rewards/shortness/mean", "rewards/judge-POSITIVE/mean"} <= keys


def test_a_reward_stall_guardrail_ends_the_stage_early_with_its_name(plan_stages, tmp_path):
    # A reward that never changes cannot improve: the guardrail ends the stage after two windows of two logs.
    (tmp_path / "flat_reward.py").write_text("def flat(prompts, completions, **columns):\n"
                                             "    return [0.5] * len(completions)\n")
    guarded = grpo(steps=20, rewards=[{"callable": "flat_reward:flat"}], evaluation=None,
                   guardrails={"minRewardImprovement": 0.5, "window": 2, "action": "fail"})
    files = plan_stages(tiny_spec(grpo=guarded))
    env = stage_env()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    done = run_stage(files["grpo"], env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    result = stage_dir(files["grpo"]).read_result()
    assert (result["phase"], result["reason"], result["steps"]) == ("Failed", "MinRewardImprovement", 4)


def test_sigterm_checkpoints_and_the_rerun_finishes_with_the_steps_unchanged(plan_stages):
    files = plan_stages(tiny_spec(grpo=grpo(steps=40, evaluation=None, checkpointing={"saveSteps": 1000})))
    stage = stage_dir(files["grpo"])
    process = start_stage(files["grpo"])
    while len(read_metrics(stage.metrics)) < 3:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    stopped = int(stage.latest_checkpoint().name.split("-")[1])
    assert 3 <= stopped < 40
    done = run_stage(files["grpo"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert stage.read_result()["steps"] == 40
    steps = [r["step"] for r in read_metrics(stage.metrics) if "reward" in r["metrics"]]
    assert steps == list(range(1, 41))  # each step logged once: the stopped run's, then the resumed run's


def test_a_dataset_without_the_prompt_column_is_refused_naming_it(plan_stages):
    files = plan_stages(tiny_spec(grpo=grpo(prompt_column="question")))
    done = run_stage(files["grpo"])
    assert done.returncode == 4
    assert "no column 'question'" in done.stderr and "'prompt'" in done.stderr


def test_a_reward_callable_that_does_not_import_fails_the_check_naming_the_field(plan_stages):
    files = plan_stages(tiny_spec(grpo=grpo(rewards=[{"callable": "notamodule:score"}])))
    done = run_stage(files["grpo"])
    assert done.returncode == 4
    assert "rewards[0].callable 'notamodule:score' cannot be imported: No module named 'notamodule'" in done.stderr
    assert not stage_dir(files["grpo"]).metrics.exists()  # refused before anything trained
