import json

from rlhf_trainer.stage.report import FileReporter, HttpReporter, Reporter
from rlhf_trainer.stage.workspace import StageDir, mark_complete, read_metrics


def test_latest_checkpoint_ignores_half_written_ones(tmp_path):
    stage = StageDir(tmp_path / "ppo")
    for step in (10, 20, 30):
        stage.checkpoint(step).mkdir(parents=True)
    mark_complete(stage.checkpoint(10))
    mark_complete(stage.checkpoint(20))
    (stage.checkpoints / "checkpoint-99.tmp").mkdir()
    assert stage.latest_checkpoint() == stage.checkpoint(20)


def test_no_checkpoint_dir_means_fresh_start(tmp_path):
    assert StageDir(tmp_path / "sft").latest_checkpoint() is None


def test_result_is_written_whole(tmp_path):
    stage = StageDir(tmp_path / "sft")
    assert stage.read_result() is None
    stage.write_result({"stage": "sft", "steps": 3})
    assert stage.read_result() == {"stage": "sft", "steps": 3}
    assert not list(stage.root.glob("*.tmp"))


def test_torn_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "met')
    assert read_metrics(path) == [{"step": 1}]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_http_push_is_throttled_and_last_record_sent_on_close(monkeypatch, tmp_path):
    sent = []
    monkeypatch.setattr(HttpReporter, "_post", lambda self, record, headers: sent.append((record, headers)))
    token = tmp_path / "token"
    token.write_text("abc\n")
    clock = FakeClock()
    reporter = Reporter("ppo", "ppo", [FileReporter(tmp_path / "metrics.jsonl"),
                                       HttpReporter("http://op/v1/status", str(token), interval=5, clock=clock)])
    for step in range(1, 11):
        clock.now = step  # one second per step
        reporter.report(step, 10, {"meanReward": step / 10})
    reporter.close()
    assert [r["step"] for r, _ in sent] == [1, 6, 10]
    assert sent[0][1]["Authorization"] == "Bearer abc"
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 11))
