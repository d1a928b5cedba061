"""The look of ``rlhf run``: the live view (plain lines off a terminal, a redrawn display on one) and the summary.

Records are shaped as the stages write them to metrics.jsonl; times are whole seconds, as the stages stamp them.
"""

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rlhf_operator.view import (
    LiveView,
    Stage,
    StageSummary,
    duration,
    key_metrics,
    number,
    plain_text,
    progress_line,
    show,
    steps_per_second,
    summary,
)

ROOT = Path(__file__).parents[2]
ESCAPE = "\x1b"
START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(stage, step, total, metrics, second, **extra):
    return {"stage": stage, "kind": stage, "step": step, "totalSteps": total, "metrics": metrics,
            "time": (START + timedelta(seconds=second)).isoformat(timespec="seconds"), **extra}


def ppo_record(step, second, total=100):
    return record("ppo", step, total, {"env/reward_mean": step / 10, "objective/kl": step / 100,
                                       "objective/kl_coef": 0.5, "ppo/loss/value": 2.0}, second)


class Terminal(io.StringIO):
    def isatty(self):
        return True


# --- the plain live view (CI logs, | tee) -------------------------------------------------------------------------


def test_off_a_terminal_each_new_record_is_one_plain_line():
    out = io.StringIO()
    view = LiveView(out, [Stage("sft", "sft", "/ws/sft/stage.log"), Stage("ppo", "ppo", "/ws/ppo/stage.log")])
    sft = [record("sft", s, 30, {"loss": 3.0 - s / 10}, s) for s in (10, 20, 30)]
    view.update("sft", [])
    view.update("sft", sft[:1])
    view.update("sft", sft[:1])  # polled again, nothing new: nothing written
    view.update("sft", sft)
    view.update("sft", sft + [record("sft", 30, 30, {"train_loss": 2.5}, 31, result={"phase": "Succeeded"})])
    view.stage_done("sft", "Succeeded", "31 s")
    view.update("ppo", [ppo_record(s, 40 + s) for s in (1, 2)])
    view.stage_done("ppo", "Failed", "exit code 1")
    view.close()

    assert out.getvalue().splitlines() == [
        "sft: running (log: /ws/sft/stage.log)",
        "  sft  10/30  loss 2.00",
        "  sft  20/30  loss 1.00  1.00 steps/s  ETA 10 s",
        "  sft  30/30  loss 0  1.00 steps/s",  # no time left at the last step
        "sft: Succeeded (31 s)",
        "ppo: running (log: /ws/ppo/stage.log)",
        "  ppo    1/100  score 0.10  kl 0.01  kl coef 0.50",
        "  ppo    2/100  score 0.20  kl 0.02  kl coef 0.50  1.00 steps/s  ETA 1 min 38 s",
        "ppo: Failed (exit code 1)",
    ]
    assert ESCAPE not in out.getvalue() and "\r" not in out.getvalue()


def test_an_evaluation_at_a_step_already_shown_adds_no_line():
    out = io.StringIO()
    view = LiveView(out, [Stage("grpo", "grpo", "")])
    view.update("grpo", [record("grpo", 600, 600, {"reward": 1.6}, 10),
                         record("grpo", 600, 600, {"eval_reward": 1.7}, 11),
                         record("grpo", 600, 600, {"train_loss": 0.1}, 11)])
    assert out.getvalue().splitlines() == ["grpo: running", "  grpo  600/600  reward 1.60"]


def test_a_line_shows_the_kinds_key_metrics():
    grpo = {"reward": 1.5, "kl": 0.02, "completions/mean_length": 31.0, "loss": 0.0}
    dpo = {"loss": 0.61, "rewards/accuracies": 0.75, "rewards/margins": 0.4, "rewards/chosen": 0.1}
    reward = {"eval_loss": 0.002, "eval_accuracy": 1.0, "eval_margin": 6.5}
    assert key_metrics("grpo", grpo) == [("reward", 1.5), ("kl", 0.02), ("length", 31.0)]
    assert key_metrics("dpo", dpo) == [("loss", 0.61), ("accuracy", 0.75), ("margin", 0.4)]
    assert key_metrics("reward", reward) == [("accuracy", 1.0), ("eval loss", 0.002)]  # no training loss logged
    assert progress_line("dpo", "dpo", [record("dpo", 5, 50, dpo, 0)]) == \
        "dpo   5/50  loss 0.61  accuracy 0.75  margin 0.40"


def test_speed_is_measured_on_the_run_since_the_last_restart():
    """A resumed stage logs again from its checkpoint's step, after a pause: neither counts as speed."""
    first_run = [ppo_record(s, s) for s in range(1, 11)]  # 1 step/s
    resumed = [ppo_record(s, 3600 + 2 * (s - 6)) for s in range(6, 12)]  # from step 6 an hour later, 0.5 step/s
    assert steps_per_second(first_run) == pytest.approx(1.0)
    assert steps_per_second(first_run + resumed) == pytest.approx(0.5)
    assert progress_line("ppo", "ppo", first_run + resumed).endswith("2.00 s/step  ETA 2 min 58 s")


def test_speed_is_that_of_the_last_minute():
    slow = [ppo_record(s, s, total=1000) for s in range(1, 121)]  # 1 step/s for two minutes
    fast = [ppo_record(120 + 2 * k, 120 + k, total=1000) for k in range(1, 91)]  # then 2 steps/s
    assert steps_per_second(slow + fast) == pytest.approx(2.0)
    assert progress_line("ppo", "ppo", slow + fast).endswith("300/1000  score 30.00  kl 3.00  kl coef 0.50  "
                                                             "2.00 steps/s  ETA 5 min 50 s")  # 700 steps at 2/s


def test_speed_is_unknown_until_the_records_span_a_second():
    same_second = [ppo_record(1, 5), ppo_record(2, 5)]
    assert steps_per_second(same_second) is None
    assert steps_per_second(same_second[:1]) is None
    assert "steps/s" not in progress_line("ppo", "ppo", same_second)


# --- the terminal view --------------------------------------------------------------------------------------------


def test_on_a_terminal_a_bar_per_stage_and_the_running_stages_metrics():
    out = Terminal()
    with LiveView(out, [Stage("sft", "sft", "/ws/sft/stage.log"), Stage("ppo", "ppo", "/ws/ppo/stage.log"),
                        Stage("grpo", "grpo", "/ws/grpo/stage.log")]) as view:
        view.stage_done("sft", "Skipped", "already finished")
        view.update("ppo", [ppo_record(s, s) for s in range(1, 41)])
        picture = plain_text(view.renderable(), width=120)
    lines = picture.splitlines()
    assert lines[0].startswith("sft") and lines[0].endswith("Skipped (already finished)")
    assert "━" * 30 in lines[0]  # a finished stage's bar is full
    assert lines[1].startswith("ppo") and "40/100  1.00 steps/s  ETA 1 min 00 s  running" in lines[1]
    assert lines[2].startswith("grpo") and lines[2].endswith("waiting")
    assert lines[3] == "ppo: score 4.00   kl 0.40   kl coef 0.50"
    assert lines[4] == "log: /ws/ppo/stage.log"
    assert ESCAPE in out.getvalue()  # redrawn in place, styled
    assert "40/100" in out.getvalue()


def test_the_terminal_view_keeps_the_last_value_of_each_key_metric():
    """Eval loss is logged in records of its own: the display keeps showing the latest train loss beside it."""
    view = LiveView(io.StringIO(), [Stage("sft", "sft")])
    view.update("sft", [record("sft", 10, 20, {"loss": 1.5}, 0), record("sft", 10, 20, {"eval_loss": 1.25}, 1)])
    assert "sft: loss 1.50   eval loss 1.25" in plain_text(view.renderable())


# --- the summary --------------------------------------------------------------------------------------------------


def demo_results(workspace="/ws"):
    def result(stage, steps, seconds, metrics, **extra):
        return {"stage": stage, "kind": stage, "job": "sentiment-tiny", "phase": "Succeeded", "reason": "Completed",
                "model": f"{workspace}/{stage}/model", "durationSeconds": seconds, "steps": steps,
                "totalSteps": steps, "metrics": metrics, **extra}

    return [
        result("sft", 600, 12.2, {"train_loss": 2.1847, "eval_loss": 1.3390, "epoch": 15.8}),
        result("reward", 100, 3.9, {"train_loss": 0.1155, "eval_loss": 0.00183, "eval_accuracy": 1.0}),
        result("ppo", 100, 190.4, {"meanScoreFirstSteps": 0.0248, "meanScoreLastSteps": 2.3099, "kl": 4.84,
                                   "rewardBefore": 0.6689, "rewardAfter": 2.4312, "vaderBefore": 0.4075,
                                   "vaderAfter": 0.7364}),
    ]


def rows(workspace="/ws"):
    return [StageSummary.from_result(result, log=f"{workspace}/{result['stage']}/stage.log",
                                     picture=f"{workspace}/{result['stage']}/curves.png")
            for result in demo_results(workspace)]


def test_the_summary_has_a_row_per_stage_with_its_headline():
    text = plain_text(summary(rows(), workspace="/ws", command="rlhf run demo.yaml"))
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "phase", "steps", "time", "result"]
    assert lines[2].split() == ["sft", "Succeeded", "600/600", "12", "s", "eval", "loss", "1.34,", "train", "loss",
                                "2.18"]
    assert lines[3].split() == ["reward", "Succeeded", "100/100", "4", "s", "eval", "accuracy", "1.00,", "eval",
                                "loss", "0.00183,", "train", "loss", "0.12"]
    assert " ".join(lines[4].split()) == ("ppo Succeeded 100/100 3 min 10 s held-out reward 0.67 → 2.43, "
                                         "VADER 0.41 → 0.74; kl 4.84")


def test_the_summary_says_where_things_are_and_how_to_look_further():
    text = plain_text(summary(rows("/tmp/job"), workspace="/tmp/job", command="rlhf run demo.yaml"))
    assert "Outputs (workspace /tmp/job):" in text
    for stage in ("sft", "reward", "ppo"):
        line = next(line for line in text.splitlines() if line.startswith(f"  {stage} "))
        assert f"model /tmp/job/{stage}/model" in line
        assert f"curves /tmp/job/{stage}/curves.png" in line
        assert f"log /tmp/job/{stage}/stage.log" in line
    assert "tensorboard --logdir /tmp/job" in text
    assert "rlhf run demo.yaml --status " in text
    assert "rlhf run demo.yaml --status -o yaml" in text
    assert "failed" not in text


def test_a_stage_without_held_out_scores_shows_its_training_scores():
    metrics = {"meanScoreFirstSteps": 0.0248, "meanScoreLastSteps": 2.3099, "kl": 4.84}
    row = StageSummary("ppo", "ppo", "Succeeded", 100, 100, 10.0, metrics)
    text = plain_text(summary([row], workspace="/ws", command="rlhf run f"))
    assert "score 0.02 → 2.31 (first → last steps)" in text


def test_a_failed_stage_ends_with_its_message_its_log_and_how_to_continue():
    done = rows()[:2]
    failed = StageSummary("ppo", "ppo", "Failed", steps=57, total_steps=100, duration_seconds=80.0, reason="Error",
                          message="exit code 1: RuntimeError: CUDA out of memory", log="/ws/ppo/stage.log",
                          log_tail=("Traceback (most recent call last):", "RuntimeError: CUDA out of memory"))
    pending = StageSummary("grpo", "grpo", "Pending")
    command = "rlhf run demo.yaml --workspace /ws"
    text = plain_text(summary([*done, failed, pending], workspace="/ws", command=command))
    lines = text.splitlines()
    assert " ".join(next(line for line in lines if line.startswith("ppo ")).split()) == \
        "ppo Failed 57/100 1 min 20 s -"
    assert " ".join(next(line for line in lines if line.startswith("grpo ")).split()) == "grpo Pending - - -"
    ending = text.split("\n\n")[1]
    assert ending.splitlines() == [
        "ppo failed (Error): exit code 1: RuntimeError: CUDA out of memory",
        "The end of its log (/ws/ppo/stage.log):",
        "    Traceback (most recent call last):",
        "    RuntimeError: CUDA out of memory",
        "After fixing the cause, continue from its last checkpoint with:",
        "  rlhf run demo.yaml --workspace /ws",
    ]


def test_a_stopped_stage_ends_with_how_to_continue():
    stopped = StageSummary("ppo", "ppo", "Suspended", steps=40, total_steps=100, duration_seconds=30.0)
    text = plain_text(summary([*rows()[:2], stopped], workspace="/ws", command="rlhf run demo.yaml"))
    assert "ppo stopped at step 40/100; continue from its last checkpoint with:\n  rlhf run demo.yaml\n" in text


def test_a_guardrail_failure_names_the_guardrail():
    result = {**demo_results()[2], "phase": "Failed", "reason": "MaxKl",
              "message": "guardrail MaxKl ended the stage at step 12 (action fail)"}
    text = plain_text(summary([StageSummary.from_result(result, log="/ws/ppo/stage.log")], workspace="/ws",
                              command="rlhf run f"))
    assert ("\nppo failed (MaxKl): guardrail MaxKl ended the stage at step 12 (action fail)\n"
            "Its log: /ws/ppo/stage.log\n") in text
    assert "continue from its last checkpoint" not in text  # it finished: running the job again skips it


def test_off_a_terminal_the_summary_is_plain_text():
    out = io.StringIO()
    show(out, summary(rows(), workspace="/ws", command="rlhf run demo.yaml"))
    assert out.getvalue() == plain_text(summary(rows(), workspace="/ws", command="rlhf run demo.yaml"))
    assert ESCAPE not in out.getvalue() and "\r" not in out.getvalue()


def test_paths_longer_than_the_line_are_never_broken():
    deep = "/w/" + "x" * 200
    text = plain_text(summary(rows(deep), workspace=deep, command="rlhf run demo.yaml"))
    assert f"tensorboard --logdir {deep}" in text
    assert f"curves {deep}/ppo/curves.png" in text


# --- small pieces and the rule that the operator side never imports torch ----------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (12.2, "12 s"), (59.6, "1 min 00 s"),
                                               (190.4, "3 min 10 s"), (3725, "1 h 02 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(("value", "text"), [(2.4312, "2.43"), (1.0, "1.00"), (0.00183, "0.00183"), (0.0, "0"),
                                             (12345.6, "1.23e+04"), (-0.5, "-0.50"), (float("nan"), "nan")])
def test_numbers_read_as_people_say_them(value, text):
    assert number(value) == text


def test_the_view_imports_neither_torch_nor_the_trainer():
    path = os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])
    code = ("import sys, rlhf_operator.view\n"
            "loaded = sorted(m for m in ('torch', 'rlhf_trainer', 'matplotlib') if m in sys.modules)\n"
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
