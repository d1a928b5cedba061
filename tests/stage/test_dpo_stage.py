"""The dpo stage as the trainer image runs it: held-out preference accuracy and the judge before and after, TRL's
metric names, SIGTERM and resume, bad input."""

import signal
import time

from stage_helpers import run_stage, start_stage, tiny_spec
from transformers import AutoModelForCausalLM

from rlhf_contract.workspace import StageDir, read_metrics

DPO = {
    "dataset": {"builtin": "movie-preferences"},
    "config": {"learningRate": 1e-3, "maxSteps": 6, "perDeviceTrainBatchSize": 8, "perDeviceEvalBatchSize": 16,
               "maxLength": 48, "gradientCheckpointing": False, "loggingSteps": 1},
    "evaluation": {"heldOut": {"split": "test"}, "heldOutPrompts": {"builtin": "movie-prompts", "split": "test"},
                   "judge": "vader", "samples": 2, "maxNewTokens": 6},
    "checkpointing": {"saveSteps": 3},
    "reportTo": [],
}


def dpo(**changes) -> dict:
    return {**DPO, **changes}


def stage_dir(config_file) -> StageDir:
    return StageDir(config_file.parents[1] / config_file.stem)


def test_dpo_trains_on_pairs_and_reports_held_out_accuracy_and_the_judge_before_and_after(plan_stages):
    files = plan_stages(tiny_spec(dpo=dpo()))
    done = run_stage(files["dpo"])
    assert done.returncode == 0, done.stderr[-3000:]
    stage = stage_dir(files["dpo"])
    result = stage.read_result()
    assert (result["phase"], result["steps"], result["totalSteps"]) == ("Succeeded", 6, 6)
    metrics = result["metrics"]
    assert {"vaderBefore", "vaderAfter", "eval_rewards/accuracies", "eval_rewards/margins", "eval_loss",
            "train_loss"} <= set(metrics)
    assert -1 <= metrics["vaderBefore"] <= 1 and -1 <= metrics["vaderAfter"] <= 1
    assert 0 <= metrics["eval_rewards/accuracies"] <= 1
    records = [r for r in read_metrics(stage.metrics) if "result" not in r]
    assert [r["step"] for r in records if "loss" in r["metrics"]] == list(range(1, 7))
    keys = set().union(*(r["metrics"] for r in records))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"} <= keys  # TRL's metric names
    AutoModelForCausalLM.from_pretrained(stage.model)
    assert (stage.root / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_dpo_after_sft_starts_from_the_sft_model(plan_stages):
    sft = {"dataset": {"builtin": "movie-reviews"}, "reportTo": [],
           "training": {"maxSteps": 2, "perDeviceTrainBatchSize": 4, "maxSeqLength": 32}}
    files = plan_stages(tiny_spec(sft=sft, dpo=dpo(evaluation=None, config={**DPO["config"], "maxSteps": 2})))
    assert run_stage(files["sft"]).returncode == 0
    done = run_stage(files["dpo"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert stage_dir(files["dpo"]).read_result()["phase"] == "Succeeded"


def test_sigterm_checkpoints_and_the_rerun_finishes_with_the_judge_before_unchanged(plan_stages):
    config = {**DPO["config"], "maxSteps": 60, "perDeviceTrainBatchSize": 2}
    files = plan_stages(tiny_spec(dpo=dpo(config=config, checkpointing={"saveSteps": 1000})))
    stage = stage_dir(files["dpo"])
    process = start_stage(files["dpo"])
    while len(read_metrics(stage.metrics)) < 3:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    before = (stage.root / "held_out_before.json").read_text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    stopped = int(stage.latest_checkpoint().name.split("-")[1])
    assert 3 <= stopped < 60
    done = run_stage(files["dpo"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = stage.read_result()
    assert result["steps"] == 60
    assert (stage.root / "held_out_before.json").read_text() == before  # measured on the untrained model, once
    steps = [r["step"] for r in read_metrics(stage.metrics) if "loss" in r["metrics"]]
    assert steps == list(range(1, 61))  # each step logged once: the stopped run's, then the resumed run's


def test_a_dataset_without_the_configured_column_is_refused_naming_it(plan_stages):
    files = plan_stages(tiny_spec(dpo=dpo(columns={"chosen": "preferred"})))
    done = run_stage(files["dpo"])
    assert done.returncode == 4
    assert "no column 'preferred'" in done.stderr and "'chosen'" in done.stderr
