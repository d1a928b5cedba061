"""Guardrails: conditions that end an RL stage early (the policy drifting too far from the reference, or the
reward no longer rising), read from the stage's history of rewards and KLs; the same for every RL kind."""

from __future__ import annotations

import statistics

from rlhf_contract.settings import Guardrails


def guardrail(guardrails: Guardrails | None, rewards: list[float], kls: list[float]) -> str | None:
    """The name of the guardrail that ends the stage now, if any. ``rewards`` and ``kls``: one value per step (or
    per logged step), oldest first."""
    if guardrails is None:
        return None
    if guardrails.max_kl is not None and len(kls) >= guardrails.for_steps and all(
            kl > guardrails.max_kl for kl in kls[-guardrails.for_steps:]):
        return "MaxKl"
    window = guardrails.window
    if guardrails.min_reward_improvement is not None and len(rewards) >= 2 * window:
        recent, before = rewards[-window:], rewards[-2 * window:-window]
        if statistics.fmean(recent) - statistics.fmean(before) < guardrails.min_reward_improvement:
            return "MinRewardImprovement"
    return None


def ended_by(guardrails: Guardrails, reason: str, step: int) -> dict:
    """What result.json says of a stage a guardrail ended: Succeeded (action stop) or Failed (action fail)."""
    action = guardrails.action
    return {"reason": reason, "phase": "Succeeded" if action == "stop" else "Failed",
            "message": f"guardrail {reason} ended the stage at step {step} (action {action})"}
