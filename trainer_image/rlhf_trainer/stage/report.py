"""Progress reporting behind one small interface: always to ``metrics.jsonl``; in a cluster also an HTTP push.

A record is ``{"stage", "kind", "step", "totalSteps", "metrics": {...}, "time"}``. The push goes to
``RLHF_STATUS_URL`` with the pod's projected service-account token (``RLHF_STATUS_TOKEN_FILE``) as a bearer
token; the operator verifies it and patches the RLHFJob's status. Pushes are throttled and never break
training: a failed push is logged and dropped (the file keeps every record).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

PUSH_INTERVAL_SECONDS = 5.0


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
    """POSTs records as JSON, at most one per ``interval`` seconds; the last record is always sent on close."""

    def __init__(self, url: str, token_file: str | None = None, interval: float = PUSH_INTERVAL_SECONDS,
                 timeout: float = 5.0, clock=time.monotonic):
        self.url, self.token_file, self.interval, self.timeout, self.clock = url, token_file, interval, timeout, clock
        self._last_sent = float("-inf")
        self._pending: dict | None = None

    def report(self, record: dict) -> None:
        self._pending = record
        if self.clock() - self._last_sent >= self.interval:
            self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        record, self._pending = self._pending, None
        self._last_sent = self.clock()
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            # Re-read each time: the kubelet rotates projected tokens.
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        self._post(record, headers)

    def _post(self, record: dict, headers: dict) -> None:
        request = urllib.request.Request(self.url, json.dumps(record).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 - reporting must never stop training
            log.warning("status push to %s failed: %s", self.url, exc)


class Reporter:
    """Sends each record to every sink; stamps stage identity and time."""

    def __init__(self, stage: str, kind: str, sinks: list):
        self.stage, self.kind, self.sinks = stage, kind, sinks

    def report(self, step: int, total_steps: int | None, metrics: dict, **extra) -> dict:
        record = {
            "stage": self.stage, "kind": self.kind, "step": step, "totalSteps": total_steps,
            "metrics": metrics, "time": datetime.now(UTC).isoformat(timespec="seconds"), **extra,
        }
        for sink in self.sinks:
            sink.report(record)
        return record

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_reporter(stage: str, kind: str, stage_dir: str | Path, env=os.environ) -> Reporter:
    """The file sink always; the HTTP sink when ``RLHF_STATUS_URL`` is set."""
    sinks: list = [FileReporter(Path(stage_dir) / "metrics.jsonl")]
    if env.get("RLHF_STATUS_URL"):
        sinks.append(HttpReporter(env["RLHF_STATUS_URL"], env.get("RLHF_STATUS_TOKEN_FILE")))
    return Reporter(stage, kind, sinks)
