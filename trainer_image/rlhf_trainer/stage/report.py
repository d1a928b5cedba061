"""Progress reporting behind one small interface: always to ``metrics.jsonl``; in a cluster also an HTTP push.

Records are the contract's progress records (``rlhf_contract.progress``). The push goes to ``RLHF_STATUS_URL`` with
the pod's projected service-account token (``RLHF_STATUS_TOKEN_FILE``) as a bearer token; the operator verifies it
and patches the RLHFJob's status. Pushes never slow training: they go from a background thread, the newest record
wins, a failed push is logged and dropped (the file keeps every record), and closing waits a bounded time. A
503 (a standby replica of the operator answered, or the operator cannot reach the API server) is retried a second
later, with the same record unless a newer one is waiting, a few times.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlhf_contract.progress import progress_record
from rlhf_contract.runtime import ENV_STATUS_TOKEN_FILE, ENV_STATUS_URL
from rlhf_contract.workspace import StageDir

log = logging.getLogger(__name__)

PUSH_INTERVAL_SECONDS = 5.0
RETRY_SECONDS = 1.0
RETRIES = 10


class FileReporter:
    """Appends each record as one JSON line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def report(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class HttpReporter:
    """POSTs records as JSON from a background thread, at most one every ``interval`` seconds; a newer record
    replaces one not sent yet. ``close`` sends the last record and returns within about ``timeout`` seconds, even
    when the operator does not answer."""

    def __init__(self, url: str, token_file: str | None = None, interval: float = PUSH_INTERVAL_SECONDS,
                 timeout: float = 5.0):
        self.url, self.token_file, self.interval, self.timeout = url, token_file, interval, timeout
        self._pending: dict | None = None
        self._closing = False
        self._failing = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="status-push", daemon=True)
        self._thread.start()

    def report(self, record: dict) -> None:
        with self._wake:
            self._pending = record
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(self.timeout + 1.0)
        if self._thread.is_alive():
            log.warning("status push to %s did not finish within %.0fs; not waiting for it", self.url, self.timeout)

    def _run(self) -> None:
        last_sent, retries = float("-inf"), 0
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                if self._pending is None:
                    return  # closing, nothing left to send
                wait = last_sent + self.interval - time.monotonic()
                if wait > 0 and not self._closing:
                    self._wake.wait(wait)  # until the interval has passed, or a close
                    continue
                record, self._pending = self._pending, None
            last_sent = time.monotonic()
            retry = self._send(record)
            with self._wake:
                if not retry or self._pending is not None:  # sent, dropped, or overtaken by a newer record
                    retries = 0
                elif retries < RETRIES:
                    self._pending, retries = record, retries + 1
                    last_sent += RETRY_SECONDS - self.interval  # the next try in RETRY_SECONDS

    def _send(self, record: dict) -> bool:
        """POST one record; True when it is worth sending again (the operator answered 503)."""
        headers = {"Content-Type": "application/json"}
        try:
            if self.token_file:
                # Re-read each time: the kubelet rotates projected tokens.
                headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
            self._post(record, headers)
        except urllib.error.HTTPError as exc:
            self._failed(exc)
            return exc.code == 503
        except Exception as exc:  # noqa: BLE001 - reporting must never stop training
            self._failed(exc)
            return False
        self._failing = False
        return False

    def _failed(self, exc: Exception) -> None:
        if not self._failing:  # one warning per outage, not one per record
            log.warning("status push to %s failed (later failures are logged at debug level): %s", self.url, exc)
        else:
            log.debug("status push to %s failed: %s", self.url, exc)
        self._failing = True

    def _post(self, record: dict, headers: dict) -> None:
        request = urllib.request.Request(self.url, json.dumps(record).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()


class Reporter:
    """Makes progress records of a stage, with the time its remaining steps need at this run's pace, and sends each
    to every sink."""

    def __init__(self, stage: str, kind: str, sinks: list, clock=time.monotonic):
        self.stage, self.kind, self.sinks, self.clock = stage, kind, sinks, clock
        self._first: tuple[float, int] | None = None  # (time, step) of this run's first record

    def report(self, step: int, total_steps: int | None, metrics: dict, result: dict | None = None) -> dict:
        record = progress_record(self.stage, self.kind, step, total_steps, metrics, result,
                                 estimated_remaining_seconds=self._remaining(step, total_steps))
        for sink in self.sinks:
            sink.report(record)
        return record

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def _remaining(self, step: int, total_steps: int | None) -> float | None:
        now = self.clock()
        if self._first is None:
            self._first = (now, step)
        started, first_step = self._first
        if not total_steps or step <= first_step or now <= started:
            return None
        return max(0, total_steps - step) * (now - started) / (step - first_step)


def make_reporter(stage: str, kind: str, stage_dir: str | Path, env=os.environ) -> Reporter:
    """The file sink always; the HTTP sink when ``RLHF_STATUS_URL`` is set."""
    sinks: list = [FileReporter(StageDir(Path(stage_dir)).metrics)]
    if env.get(ENV_STATUS_URL):
        sinks.append(HttpReporter(env[ENV_STATUS_URL], env.get(ENV_STATUS_TOKEN_FILE)))
    return Reporter(stage, kind, sinks)
