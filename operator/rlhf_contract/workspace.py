"""The workspace layout, shared by the stage runner, ``rlhf run``, the operator and tests (torch-free).

    <workspace>/<stage>/model/          the stage's output model (safetensors + tokenizer)
    <workspace>/<stage>/metrics.jsonl   one progress record per logging step (rlhf_contract.progress)
    <workspace>/<stage>/checkpoints/checkpoint-<step>/   resumable state; complete once it holds COMPLETE
    <workspace>/<stage>/curves.png      the stage's curves, drawn when it ends (where matplotlib is installed)
    <workspace>/<stage>/result.json     written last: its presence means the stage finished (see its phase)
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_DIR, METRICS_FILE, CHECKPOINTS_DIR, RESULT_FILE = "model", "metrics.jsonl", "checkpoints", "result.json"
CURVES_FILE = "curves.png"
COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def stage_dir(workspace: str, stage: str) -> str:
    """Where a stage writes: ``<workspace>/<stage>`` (POSIX paths: the same on Kubernetes and locally)."""
    return posixpath.join(workspace, stage)


def stage_model_dir(workspace: str, stage: str) -> str:
    """The model a stage leaves for later stages: ``<workspace>/<stage>/model``."""
    return posixpath.join(workspace, stage, MODEL_DIR)


@dataclass(frozen=True)
class StageDir:
    """One stage's directory, ``<workspace>/<stage>``."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    def latest_checkpoint(self) -> Path | None:
        """The complete checkpoint with the highest step; half-written ones (no marker) are ignored."""
        if not self.checkpoints.is_dir():
            return None
        complete = [
            (int(m.group(1)), p) for p in self.checkpoints.iterdir()
            if (m := _CHECKPOINT.match(p.name)) and (p / COMPLETE_MARKER).is_file()
        ]
        return max(complete)[1] if complete else None

    def read_result(self) -> dict | None:
        return json.loads(self.result.read_text()) if self.result.is_file() else None

    def write_result(self, result: dict) -> None:
        """Atomically: a reader sees either no result or the whole of it."""
        write_json_atomic(self.result, result)


def mark_complete(checkpoint: Path) -> None:
    """Call once everything of a checkpoint is on disk."""
    (checkpoint / COMPLETE_MARKER).write_text("")


def unmark_complete(checkpoint: Path) -> None:
    """Call before writing into a checkpoint that exists: until it is marked complete again, it is not used."""
    (checkpoint / COMPLETE_MARKER).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (the writer was killed) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
