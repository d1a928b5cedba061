"""The sft and reward stages as the trainer image runs them: outputs, resume, signals, bad input."""

import json
import signal
import time

from stage_helpers import SFT, run_stage, start_stage, tiny_spec
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_contract.workspace import StageDir, read_metrics


def stage_dir(config_file) -> StageDir:
    return StageDir(config_file.parents[1] / config_file.stem)


def test_sft_then_reward_write_models_metrics_and_result(plan_stages):
    reward = {"dataset": {"builtin": "movie-preferences"}, "reportTo": [],
              "training": {"maxSteps": 10, "perDeviceTrainBatchSize": 8, "maxSeqLength": 48, "learningRate": 1e-3,
                           "loggingSteps": 5},
              "evaluation": {"split": "test"}}
    files = plan_stages(tiny_spec(sft=SFT, reward=reward))
    for name in ("sft", "reward"):
        done = run_stage(files[name])
        assert done.returncode == 0, done.stderr[-2000:]
    sft, rm = stage_dir(files["sft"]), stage_dir(files["reward"])
    AutoModelForCausalLM.from_pretrained(sft.model)
    AutoModelForSequenceClassification.from_pretrained(rm.model)
    losses = [(r["step"], r["metrics"]["loss"]) for r in read_metrics(sft.metrics) if "loss" in r["metrics"]]
    assert [step for step, _ in losses] == [2, 4, 6, 8, 10, 12]
    assert losses[0][1] > losses[-1][1]
    result = rm.read_result()
    assert (result["phase"], result["reason"], result["steps"], result["totalSteps"]) == (
        "Succeeded", "Completed", 10, 10)
    assert 0 <= result["metrics"]["eval_accuracy"] <= 1
    assert result["versions"]["torch"] and len(result["configSha256"]) == 64
    assert read_metrics(rm.metrics)[-1]["result"]["phase"] == "Succeeded"


def test_finished_stage_is_not_run_again(plan_stages):
    files = plan_stages(tiny_spec(sft=SFT))
    assert run_stage(files["sft"]).returncode == 0
    result = stage_dir(files["sft"]).result.read_text()
    again = run_stage(files["sft"])
    assert again.returncode == 0
    assert "already finished" in again.stderr
    assert stage_dir(files["sft"]).result.read_text() == result


def test_sigterm_checkpoints_and_a_rerun_finishes_the_same_steps(plan_stages):
    long = {**SFT, "training": {**SFT["training"], "maxSteps": 400}, "checkpointing": {"saveSteps": 1000}}
    files = plan_stages(tiny_spec(sft=long))
    stage = stage_dir(files["sft"])
    process = start_stage(files["sft"])
    while len(read_metrics(stage.metrics)) < 3:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    stopped_at = stage.latest_checkpoint()
    assert stopped_at is not None and not stage.result.exists()
    assert run_stage(files["sft"]).returncode == 0
    result = stage.read_result()
    assert result["steps"] == result["totalSteps"] == 400
    steps = [r["step"] for r in read_metrics(stage.metrics) if "loss" in r["metrics"]]
    assert steps == sorted(steps) and steps[-1] == 400
    assert int(stopped_at.name.split("-")[1]) < 400


def test_missing_column_exits_4_naming_the_column(plan_stages):
    files = plan_stages(tiny_spec(sft={**SFT, "columns": {"text": "review"}}))
    done = run_stage(files["sft"])
    assert done.returncode == 4
    assert "'review'" in done.stderr and "'text'" in done.stderr
    assert not stage_dir(files["sft"]).result.exists()


def test_unreadable_model_path_exits_4(plan_stages, tmp_path):
    files = plan_stages(tiny_spec(sft={**SFT, "model": {"path": str(tmp_path / "nowhere")}}))
    done = run_stage(files["sft"])
    assert done.returncode == 4
    assert "nowhere" in done.stderr and "no saved model" in done.stderr


def test_blank_row_exits_4_naming_row_and_column(plan_stages, tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["A fine film.", "Great.", "", "Bad."]))
    files = plan_stages(tiny_spec(sft={**SFT, "dataset": {"path": str(data)}}))
    done = run_stage(files["sft"])
    assert done.returncode == 4
    assert "row 2" in done.stderr and "'text'" in done.stderr


def test_two_processes_train_one_stage(plan_stages):
    two = {**SFT, "distributed": {"numProcesses": 2}, "training": {**SFT["training"], "maxSteps": 6}}
    files = plan_stages(tiny_spec(sft=two))
    done = run_stage(files["sft"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stage = stage_dir(files["sft"])
    result = stage.read_result()
    assert (result["steps"], result["processes"]) == (6, 2)
    steps = [r["step"] for r in read_metrics(stage.metrics) if "loss" in r["metrics"]]
    assert steps == [2, 4, 6]  # only rank 0 reports
