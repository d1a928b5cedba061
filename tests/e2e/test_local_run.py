"""``rlhf run`` as a user meets it: checks before running, Ctrl-C / SIGTERM / SIGHUP, running again, one run per
workspace, the printed summary and status."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}


def job_file(tmp_path, **stages) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
                                    "metadata": {"name": "local"},
                                    "spec": {"model": {"builtin": "tiny-gpt2"}, "stages": stages}}))
    return path


def command(job: Path, workspace: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_operator.cli", "run", str(job), "--workspace", str(workspace), *flags]


def rlhf_run(job: Path, workspace: Path, *flags: str, **kwargs):
    return subprocess.run(command(job, workspace, *flags), env=ENV, capture_output=True, text=True, **kwargs)


def start(job: Path, workspace: Path) -> subprocess.Popen:
    """``rlhf run`` in the background, once its stage has logged two records."""
    process = subprocess.Popen(command(job, workspace, "-o", "yaml"), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics = workspace / "sft" / "metrics.jsonl"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.1)
    return process


def printed_status(output: str) -> dict:
    return yaml.safe_load(output.split("\nstatus:\n", 1)[1])


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_ctrl_c_sigterm_and_sighup_stop_cleanly_and_running_again_continues(tmp_path, signum):
    job, workspace = job_file(tmp_path, sft=SFT), tmp_path / "ws"
    process = start(job, workspace)
    process.send_signal(signum)  # Ctrl-C; kill, timeout or a service manager; the terminal closing
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "sft: Stopped" in output
    assert "continue from its last checkpoint with:" in output
    status = printed_status(output)
    assert (status["phase"], status["stages"]["sft"]["phase"]) == ("Suspended", "Suspended")
    assert list((workspace / "sft" / "checkpoints").glob("checkpoint-*/COMPLETE"))

    again = rlhf_run(job, workspace, "-o", "yaml", timeout=600)  # the stopped stage did not live on: no lock left
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "sft: resuming from checkpoint-" in again.stdout
    status = printed_status(again.stdout)
    assert status["phase"] == "Succeeded"
    assert status["stages"]["sft"]["steps"] == 300
    steps = [r["step"] for r in map(json.loads, (workspace / "sft" / "metrics.jsonl").read_text().splitlines())
             if "result" not in r]
    assert steps == sorted(steps)  # one writer at a time: no steps logged twice, interleaved


def test_one_run_at_a_time_on_a_workspace_even_when_the_first_was_killed_and_its_stage_lives_on(tmp_path):
    job, workspace = job_file(tmp_path, sft=SFT), tmp_path / "ws"
    first = start(job, workspace)
    refused = rlhf_run(job, workspace)
    assert refused.returncode == 1
    assert f"is in use by another `rlhf run` (pid {first.pid}) and its stage process (pid" in refused.stderr

    first.kill()  # SIGKILL: no chance to stop its stage, which trains on alone
    first.communicate()
    refused = rlhf_run(job, workspace)
    assert refused.returncode == 1 and "is in use by another" in refused.stderr
    stage_pid = int(refused.stderr.split("stage process (pid ")[1].split(")")[0])
    os.kill(stage_pid, signal.SIGTERM)  # the stage checkpoints and ends; the workspace is free again
    while (workspace / ".rlhf" / "lock").exists() and _alive(stage_pid):
        time.sleep(0.1)
    again = rlhf_run(job, workspace, "--status")
    assert again.returncode == 0, again.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_status_shows_what_the_workspace_holds_without_running(tmp_path):
    job, workspace = job_file(tmp_path, sft=SFT), tmp_path / "ws"
    done = rlhf_run(job, workspace, "--status", "-o", "yaml")
    assert done.returncode == 0, done.stderr
    assert printed_status(done.stdout)["stages"]["sft"]["phase"] == "Pending"
    assert not (workspace / "sft").exists()
