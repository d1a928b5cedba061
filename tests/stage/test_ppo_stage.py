"""The ppo stage as the trainer image runs it: rewards, guardrails, kill and resume, progress pushes."""

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from stage_helpers import run_stage, stage_env, start_stage, tiny_spec

from rlhf_contract.workspace import StageDir, read_metrics
from rlhf_trainer.tiny import save_tiny

PPO = {
    "policy": {"builtin": "tiny-gpt2"},
    "reward": {"callable": "rlhf_trainer.rewards:vader_sentiment"},
    "dataset": {"builtin": "movie-prompts"},
    "steps": 6,
    "config": {"batchSize": 4, "miniBatchSize": 2, "ppoEpochs": 1, "learningRate": 1e-4},
    "generation": {"maxNewTokens": 6},
    "checkpointing": {"saveSteps": 2},
    "reportTo": [],
}


def ppo(**changes) -> dict:
    return {**PPO, **changes}


def stage_dir(config_file) -> StageDir:
    return StageDir(config_file.parents[1] / config_file.stem)


class Collector(BaseHTTPRequestHandler):
    """The operator's side of progress pushes, reduced to recording what arrives."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append((self.headers.get("Authorization"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def collector(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Collector.received = []
    token = tmp_path / "token"
    token.write_text("pod-token\n")
    yield f"http://127.0.0.1:{server.server_port}/v1/status", token, Collector.received
    server.shutdown()


def test_ppo_with_a_callable_reward_pushes_progress_and_saves_the_policy(plan_stages, collector):
    url, token, received = collector
    files = plan_stages(tiny_spec(ppo=ppo(reportTo=None, evaluation={
        "heldOutPrompts": {"builtin": "movie-prompts", "split": "test"}, "judge": "vader"})))
    done = run_stage(files["ppo"], env=stage_env(RLHF_STATUS_URL=url, RLHF_STATUS_TOKEN_FILE=str(token)))
    assert done.returncode == 0, done.stderr[-3000:]
    stage = stage_dir(files["ppo"])
    result = stage.read_result()
    assert (result["phase"], result["reason"], result["steps"], result["totalSteps"]) == (
        "Succeeded", "Completed", 6, 6)
    assert {"vaderBefore", "vaderAfter", "rewardBefore", "rewardAfter"} <= set(result["metrics"])
    assert len(result["scores"]) == 6 and result["revisions"]["dataset"]
    assert (stage.model / "v_head.safetensors").is_file() and (stage.model / "tokenizer.json").is_file()
    records = read_metrics(stage.metrics)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 6]
    assert {"objective/kl", "ppo/loss/policy", "env/reward_mean"} <= set(records[0]["metrics"])
    assert list((stage.root / "tensorboard").iterdir()), "reportTo unset: TensorBoard logs by default"
    # Throttled to one push per 5 s, the last one (the result) always sent, with the pod's token.
    assert received and all(auth == "Bearer pod-token" for auth, _ in received)
    assert received[0][1]["step"] == 1 and received[-1][1]["result"]["phase"] == "Succeeded"


def test_reward_classifier_label_is_used_and_a_wrong_label_is_refused(plan_stages, tmp_path):
    classifier = save_tiny(tmp_path / "sentiment", "gpt2", "seq-cls", num_labels=2,
                           id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    files = plan_stages(tiny_spec(ppo=ppo(steps=1, reward={"path": str(classifier), "label": "POSITIVE"})))
    assert run_stage(files["ppo"]).returncode == 0
    files = plan_stages(tiny_spec(ppo=ppo(steps=1, reward={"path": str(classifier), "label": "HAPPY"})))
    done = run_stage(files["ppo"])
    assert done.returncode == 4
    assert "'HAPPY'" in done.stderr and "POSITIVE" in done.stderr


def test_an_error_inside_a_library_is_a_crash_to_retry_with_its_message_kept_not_bad_input(plan_stages, tmp_path):
    # A ValueError from someone else's code (here the reward function's) is not the job's input being invalid: the
    # stage exits 1 (the Job retries it) and says what happened, where exit 4 would have ended the job for good.
    (tmp_path / "fragile_judge.py").write_text(
        "def score(queries, responses):\n    raise ValueError('the judge fell over')\n")
    files = plan_stages(tiny_spec(ppo=ppo(steps=2, reward={"callable": "fragile_judge:score"})))
    termination = tmp_path / "termination.log"
    env = stage_env(RLHF_TERMINATION_LOG=str(termination))
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    done = run_stage(files["ppo"], env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert termination.read_text() == "stage ppo crashed: ValueError: the judge fell over"
    assert "Traceback" in done.stderr  # the log keeps where it happened


@pytest.mark.parametrize(("action", "exit_code", "phase"), [("stop", 0, "Succeeded"), ("fail", 3, "Failed")])
def test_kl_guardrail_ends_the_stage_with_its_name(plan_stages, action, exit_code, phase):
    guarded = ppo(steps=20, guardrails={"maxKl": 1e-9, "forSteps": 2, "action": action},
                  config={**PPO["config"], "learningRate": 1e-2})
    files = plan_stages(tiny_spec(ppo=guarded))
    done = run_stage(files["ppo"])
    assert done.returncode == exit_code, done.stderr[-2000:]
    result = stage_dir(files["ppo"]).read_result()
    assert (result["phase"], result["reason"]) == (phase, "MaxKl")
    assert result["steps"] < 20 and "MaxKl" in result["message"]
    assert stage_dir(files["ppo"]).latest_checkpoint().name == f"checkpoint-{result['steps']}"


def test_killed_mid_run_a_rerun_resumes_and_ends_with_the_same_total_steps(plan_stages):
    files = plan_stages(tiny_spec(ppo=ppo(steps=12, checkpointing={"saveSteps": 3})))
    stage = stage_dir(files["ppo"])
    process = start_stage(files["ppo"])
    while stage.latest_checkpoint() is None or len(read_metrics(stage.metrics)) < 4:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = int(stage.latest_checkpoint().name.split("-")[1])
    assert 3 <= resumed_from < 12 and not stage.result.exists()
    done = run_stage(files["ppo"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = stage.read_result()
    assert result["steps"] == result["totalSteps"] == 12 and len(result["scores"]) == 12
    steps = [r["step"] for r in read_metrics(stage.metrics) if "result" not in r]
    assert steps[-(12 - resumed_from):] == list(range(resumed_from + 1, 13))


def test_sigterm_saves_a_checkpoint_of_the_current_step(plan_stages):
    files = plan_stages(tiny_spec(ppo=ppo(steps=200, checkpointing={"saveSteps": 1000})))
    stage = stage_dir(files["ppo"])
    process = start_stage(files["ppo"])
    while len(read_metrics(stage.metrics)) < 2:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    last = read_metrics(stage.metrics)[-1]["step"]
    assert stage.latest_checkpoint().name == f"checkpoint-{last}"


def test_sigterm_in_the_middle_of_a_step_checkpoints_it_and_the_rerun_finishes_it_with_the_steps_unchanged(
        plan_stages):
    # Long optimisation (many epochs), short generation: a stop 0.3 s after a step ends lands inside the next step.
    config = {**PPO["config"], "batchSize": 8, "miniBatchSize": 2, "ppoEpochs": 40}
    files = plan_stages(tiny_spec(ppo=ppo(steps=4, config=config, checkpointing={"saveSteps": 1000})))
    stage = stage_dir(files["ppo"])
    process = start_stage(files["ppo"])
    while len(read_metrics(stage.metrics)) < 1:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 143
    checkpoint = stage.latest_checkpoint()
    assert checkpoint.name == "checkpoint-1"
    assert (checkpoint / "pending_step_0.pt").is_file()  # step 2's rollout and the epochs it had done

    done = run_stage(files["ppo"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = stage.read_result()
    assert result["steps"] == result["totalSteps"] == 4 and len(result["scores"]) == 4
    assert [r["step"] for r in read_metrics(stage.metrics) if "result" not in r] == [1, 2, 3, 4]
