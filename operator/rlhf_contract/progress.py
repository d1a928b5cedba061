"""What a stage reports: progress records while it trains, and its result when it ends (torch-free).

A progress record is one line of ``<stage>/metrics.jsonl``; in a cluster rank 0 also POSTs it to the operator
(``RLHF_STATUS_URL``), which turns it into the RLHFJob's status. The stage's last record carries ``result``: the
content of ``result.json``.

    {"stage": "ppo", "kind": "ppo", "step": 12, "totalSteps": 200, "metrics": {"objective/kl": 0.4, ...},
     "time": "2026-11-29T12:00:00Z"}

``metrics`` holds the trainer's own log keys: transformers' (``loss``, ``eval_loss``, ...) for sft and reward,
TRL v0.7's stats keys for ppo (``env/reward_mean``, ``objective/kl``, ...), TRL 1.x's for grpo and dpo.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from rlhf_contract.schema import Schema

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


def now_rfc3339() -> str:
    """The time now as Kubernetes writes times: ``2026-11-24T12:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StageResult(Schema):
    """``result.json``: how a stage ended. Written last (its presence means the stage finished); each kind adds its
    own parts (evaluation samples, per-step scores, revisions), which are kept as they are."""

    model_config = ConfigDict(extra="allow")

    stage: str = Field(description="The stage's name in the job.")
    kind: str = Field(description="The stage kind.")
    phase: Literal["Succeeded", "Failed"] = Field(description="Succeeded, or Failed (a guardrail with action fail).")
    reason: str = Field(description="Completed, or the guardrail that ended the stage (CamelCase).")
    message: str | None = Field(None, description="Details for people.")
    steps: int | None = Field(None, ge=0, description="Optimizer (PPO, GRPO) steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps planned.")
    duration_seconds: float | None = Field(None, ge=0, description="Seconds the stage ran, this run.")
    metrics: dict[str, float] = Field(default_factory=dict, description="The stage's headline numbers.")


class ProgressRecord(Schema):
    """One progress record. Unknown keys are ignored, so an operator reads records of newer trainers."""

    model_config = ConfigDict(extra="ignore")

    stage: str = Field(min_length=1, description="The stage's name in the job.")
    kind: str = Field(min_length=1, description="The stage kind.")
    step: int = Field(ge=0, description="Steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps in all, when known.")
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="The trainer's numbers at this step (anything else is ignored).")
    time: str | None = Field(None, description="When it was recorded (RFC 3339).")
    estimated_remaining_seconds: float | None = Field(
        None, ge=0, description="Seconds the stage needs for its remaining steps, at its pace in this run.")
    result: dict[str, Any] | None = Field(None, description="The stage's result (result.json), on its last record.")


def progress_record(stage: str, kind: str, step: int, total_steps: int | None, metrics: dict[str, Any],
                    result: dict | None = None, time: str | None = None,
                    estimated_remaining_seconds: float | None = None) -> dict[str, Any]:
    """A progress record as JSON-ready data: the finite numbers of ``metrics`` (tensors and numpy scalars
    included), stamped with the time."""
    record = {"stage": stage, "kind": kind, "step": step, "totalSteps": total_steps, "metrics": numbers(metrics),
              "time": time or now_rfc3339()}
    if estimated_remaining_seconds is not None:
        record["estimatedRemainingSeconds"] = round(estimated_remaining_seconds, 1)
    if result is not None:
        record["result"] = result
    return record


def numbers(values: Any) -> dict[str, float]:
    """The finite numbers among ``values`` as floats (JSON has no NaN, status holds numbers only)."""
    if not isinstance(values, dict):
        return {}
    found = {}
    for key, value in values.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[str(key)] = float(value)
    return found
