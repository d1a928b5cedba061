import json
import threading
import time

from rlhf_contract.progress import progress_record
from rlhf_contract.workspace import StageDir, mark_complete, read_metrics
from rlhf_trainer.stage.report import FileReporter, HttpReporter, Reporter


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


def pusher(monkeypatch, sent: list, release: threading.Event | None = None) -> threading.Event:
    """Record HttpReporter's POSTs (with ``release``, each blocks until it is set); the event set once one began."""
    began = threading.Event()

    def post(self, record, headers):
        began.set()
        if release is not None:
            release.wait(30)
        sent.append((record, headers))

    monkeypatch.setattr(HttpReporter, "_post", post)
    return began


def test_http_push_is_throttled_and_the_last_record_is_sent_on_close(monkeypatch, tmp_path):
    sent = []
    began = pusher(monkeypatch, sent)
    token = tmp_path / "token"
    token.write_text("abc\n")
    reporter = Reporter("ppo", "ppo", [FileReporter(tmp_path / "metrics.jsonl"),
                                       HttpReporter("http://op/v1/status", str(token), interval=60)])
    reporter.report(1, 10, {"meanReward": 0.1})
    assert began.wait(10)
    for step in range(2, 11):  # within the interval: held back, the newest replacing the others
        reporter.report(step, 10, {"meanReward": step / 10})
    reporter.close()
    assert [r["step"] for r, _ in sent] == [1, 10]
    assert sent[0][1]["Authorization"] == "Bearer abc"
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 11))


def test_a_push_that_hangs_never_blocks_training_and_newer_records_replace_waiting_ones(monkeypatch):
    sent, release = [], threading.Event()
    began = pusher(monkeypatch, sent, release)
    reporter = HttpReporter("http://op/v1/status", interval=0)
    reporter.report(progress_record("ppo", "ppo", 1, 5, {}))
    assert began.wait(10)
    for step in range(2, 6):  # the first POST hangs; report() still returns at once
        reporter.report(progress_record("ppo", "ppo", step, 5, {}))
    release.set()
    reporter.close()
    assert [r["step"] for r, _ in sent] == [1, 5]


def test_closing_waits_only_a_bounded_time_for_an_unreachable_operator(monkeypatch):
    sent, never = [], threading.Event()
    pusher(monkeypatch, sent, never)
    reporter = HttpReporter("http://op/v1/status", timeout=0.2)
    reporter.report(progress_record("ppo", "ppo", 1, 5, {}))
    started = threading.Thread(target=reporter.close)
    started.start()
    started.join(10)
    assert not started.is_alive()  # close() gave up on the hung push
    never.set()


def test_a_failed_push_is_dropped_and_later_ones_still_go(monkeypatch, caplog):
    sent = []

    def post(self, record, headers):
        if record["step"] == 1:
            raise OSError("connection refused")
        sent.append(record)

    monkeypatch.setattr(HttpReporter, "_post", post)
    reporter = HttpReporter("http://op/v1/status", interval=0)
    reporter.report(progress_record("ppo", "ppo", 1, 2, {}))
    reporter.close()
    reporter = HttpReporter("http://op/v1/status", interval=0)
    reporter.report(progress_record("ppo", "ppo", 2, 2, {}))
    reporter.close()
    assert [r["step"] for r in sent] == [2]
    assert "connection refused" in caplog.text


def test_a_push_a_standby_operator_refuses_with_503_is_sent_again_until_one_takes_it(monkeypatch):
    import urllib.error

    answers, sent = [503, 503, 200], []

    def post(self, record, headers):
        status = answers.pop(0)
        sent.append((record["step"], status))
        if status != 200:
            raise urllib.error.HTTPError(self.url, status, "standby", {"Retry-After": "1"}, None)

    monkeypatch.setattr("rlhf_trainer.stage.report.RETRY_SECONDS", 0.05)
    monkeypatch.setattr(HttpReporter, "_post", post)
    reporter = HttpReporter("http://op/v1/status", interval=60)
    reporter.report(progress_record("ppo", "ppo", 7, 10, {}))
    deadline = time.monotonic() + 10
    while len(sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    reporter.close()
    assert sent == [(7, 503), (7, 503), (7, 200)]  # the same record, a retry period apart, not the interval
