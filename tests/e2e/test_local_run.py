"""``rlhf run`` as a user meets it: checks before running, Ctrl-C, running again, the printed status."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}


def job_file(tmp_path, **stages) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
                                    "metadata": {"name": "local"},
                                    "spec": {"model": {"builtin": "tiny-gpt2"}, "stages": stages}}))
    return path


def rlhf_run(job: Path, workspace: Path, **kwargs):
    command = [sys.executable, "-m", "rlhf_operator.cli", "run", str(job), "--workspace", str(workspace)]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, **kwargs)


SFT = {"dataset": {"builtin": "movie-reviews"}, "reportTo": [],
       "training": {"maxSteps": 300, "perDeviceTrainBatchSize": 4, "maxSeqLength": 32, "loggingSteps": 5},
       "checkpointing": {"saveSteps": 1000}}


def test_a_bad_ppo_dataset_is_found_before_any_stage_runs(tmp_path):
    job = job_file(tmp_path, sft=SFT, ppo={"reward": {"callable": "rlhf_trainer.rewards:vader_sentiment"},
                                            "dataset": {"builtin": "movie-reviews"}, "steps": 2})
    done = rlhf_run(job, tmp_path / "ws")
    assert done.returncode == 4
    assert "stage ppo: dataset has no column 'query'" in done.stderr
    assert "nothing was run" in done.stderr
    assert not (tmp_path / "ws" / "sft" / "metrics.jsonl").exists()


def test_ctrl_c_stops_cleanly_and_running_again_continues(tmp_path):
    job, workspace = job_file(tmp_path, sft=SFT), tmp_path / "ws"
    command = [sys.executable, "-m", "rlhf_operator.cli", "run", str(job), "--workspace", str(workspace)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workspace / "sft" / "metrics.jsonl"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "stopped; run the same command again" in output
    status = yaml.safe_load(output.split("\nstatus:\n", 1)[1])
    assert (status["phase"], status["stages"]["sft"]["phase"]) == ("Suspended", "Suspended")
    assert list((workspace / "sft" / "checkpoints").glob("checkpoint-*/COMPLETE"))

    again = rlhf_run(job, workspace, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:]
    assert "resuming from checkpoint-" in again.stdout
    status = yaml.safe_load(again.stdout.split("\nstatus:\n", 1)[1])
    assert status["phase"] == "Succeeded"
    assert status["stages"]["sft"]["metrics"]["steps"] == 300
