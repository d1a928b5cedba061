"""The newer stage kinds on a cluster: their Jobs run in order like the others', their trainers' progress reaches
status.<kind> and status.progress, and kubectl get's columns show it, whatever the kind."""

import copy
from pathlib import Path

import yaml
from harness import ROOT, run_stage, wait_for

from rlhf_trainer.stage.report import HttpReporter, Reporter

GRPO_DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "digit-reversal-tiny.yaml").read_text())


def job_from(example: dict, name: str) -> dict:
    body = copy.deepcopy(example)
    body["metadata"] = {"name": name}
    return body


def push(operator, cluster, api, ns: str, tmp_path: Path, job: str, stage: str, records: list[tuple]) -> None:
    """Progress records of ``stage``'s trainer pod, pushed as a trainer pushes them (its reporter, its token)."""
    pod = api.pod(ns, f"{job}-{stage}")
    token = tmp_path / "token"
    token.write_text(cluster.issue_pod_token(ns, pod))
    reporter = Reporter(stage, stage, [HttpReporter(operator.url + "/v1/status", str(token), interval=0)])
    for step, total, metrics, result in records:
        reporter.report(step, total, metrics, result)
        wait_for(lambda step=step: (api.status(ns, job).get("progress") or {}).get("step") == step)
    reporter.close()


def test_sft_then_grpo_runs_in_order_and_grpos_progress_fills_its_status_and_columns(cluster, api, ns, operator, tmp_path):
    api.create_rlhfjob(ns, job_from(GRPO_DEMO, "digits"))
    api.wait_job(ns, "digits-sft")
    run_stage(api, ns, "digits-sft")
    grpo_job = api.wait_job(ns, "digits-grpo")
    config = yaml.safe_load(api.core.read_namespaced_config_map("digits-grpo", ns).data["stage.json"])
    assert (config["kind"], config["policy"]["path"]) == ("grpo", "/workspace/sft/model")
    assert [r["verifier"] for r in config["rewards"]] == ["digit-reversal-exact", "digit-reversal-digits"]
    assert grpo_job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    api.start_job(ns, "digits-grpo")

    metrics = {"reward": 1.8757703304290771, "reward_std": 0.4, "kl": 0.0, "completions/mean_length": 5.5,
               "clip_ratio/region_mean": 0.0, "frac_reward_zero_std": 0.25, "entropy": 1.1, "loss": 0.01,
               "rewards/reversal_exact/mean": 0.5}
    push(operator, cluster, api, ns, tmp_path, "digits", "grpo", [(150, 600, metrics, None)])
    status = api.status(ns, "digits")
    assert {k: v for k, v in status["grpo"].items() if k != "updatedAt"} == {
        "step": 150, "totalSteps": 600, "reward": 1.8757703304290771, "rewardStd": 0.4, "kl": 0.0, "completionLength": 5.5,
        "clipRatio": 0.0, "fracRewardZeroStd": 0.25, "entropy": 1.1, "loss": 0.01}
    shown = cluster.columns("digits")
    assert {k: shown[k] for k in ("STAGE", "PHASE", "STEP", "REWARD", "KL", "PROGRESS")} == {
        "STAGE": "grpo", "PHASE": "Running", "STEP": 150, "REWARD": 1.876, "KL": 0.0, "PROGRESS": 25}

    result = {"reason": "Completed", "steps": 600, "totalSteps": 600, "durationSeconds": 16.0,
              "metrics": {"rewardBefore": 0.69, "rewardAfter": 1.70, "rewardFirstSteps": 0.72,
                          "rewardLastSteps": 1.70, "reversal_exactBefore": 0.01}}
    push(operator, cluster, api, ns, tmp_path, "digits", "grpo", [(600, 600, {"reward": 1.7}, result)])
    api.complete_job(ns, "digits-grpo")
    status = api.wait_phase(ns, "digits", "Succeeded")
    assert status["stages"]["grpo"]["results"] == {"rewardBefore": 0.69, "rewardAfter": 1.70,
                                                   "rewardFirstSteps": 0.72, "rewardLastSteps": 1.70}
    assert cluster.columns("digits")["STEP"] == 600


DPO_DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-dpo-tiny.yaml").read_text())


def test_sft_then_dpo_runs_in_order_and_dpos_progress_fills_its_status_and_columns(cluster, api, ns, operator, tmp_path):
    api.create_rlhfjob(ns, job_from(DPO_DEMO, "prefs"))
    api.wait_job(ns, "prefs-sft")
    run_stage(api, ns, "prefs-sft")
    api.wait_job(ns, "prefs-dpo")
    config = yaml.safe_load(api.core.read_namespaced_config_map("prefs-dpo", ns).data["stage.json"])
    assert (config["kind"], config["policy"]["path"]) == ("dpo", "/workspace/sft/model")
    assert (config["config"]["beta"], config["config"]["lossType"]) == (0.1, ["sigmoid", "sft"])
    api.start_job(ns, "prefs-dpo")

    metrics = {"loss": 0.52, "rewards/accuracies": 0.9, "rewards/margins": 0.8, "rewards/chosen": 0.3,
               "logps/chosen": -40.0, "logps/rejected": -48.0}
    push(operator, cluster, api, ns, tmp_path, "prefs", "dpo", [(300, 600, metrics, None)])
    status = api.status(ns, "prefs")
    assert {k: v for k, v in status["dpo"].items() if k != "updatedAt"} == {
        "step": 300, "totalSteps": 600, "loss": 0.52, "rewardAccuracy": 0.9, "rewardMargin": 0.8,
        "chosenLogps": -40.0, "rejectedLogps": -48.0}
    shown = cluster.columns("prefs")
    assert {k: shown[k] for k in ("STAGE", "PHASE", "STEP", "PROGRESS")} == {
        "STAGE": "dpo", "PHASE": "Running", "STEP": 300, "PROGRESS": 50}

    result = {"reason": "Completed", "steps": 600, "totalSteps": 600, "durationSeconds": 21.0,
              "metrics": {"vaderBefore": 0.5, "vaderAfter": 0.85, "eval_rewards/accuracies": 1.0,
                          "eval_rewards/margins": 9.1, "train_loss": 0.4, "eval_logps/chosen": -39.0}}
    push(operator, cluster, api, ns, tmp_path, "prefs", "dpo", [(600, 600, {"loss": 0.3}, result)])
    api.complete_job(ns, "prefs-dpo")
    status = api.wait_phase(ns, "prefs", "Succeeded")
    assert status["stages"]["dpo"]["results"] == {"vaderBefore": 0.5, "vaderAfter": 0.85, "evalAccuracy": 1.0,
                                                  "evalMargin": 9.1, "trainLoss": 0.4}
