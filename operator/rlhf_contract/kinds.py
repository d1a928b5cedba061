"""The stage kinds, in the order a job runs them, and what each kind declares (``rlhf_contract.stages.<kind>``).

A kind is one module of ``rlhf_contract.stages`` (its fields, the numbers it reports) and one runner module in the
trainer (``rlhf_trainer.stage.<kind>``); the plan, the operator's objects, its status and ``rlhf run``'s view are
the same for all kinds, built from what each declares here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from rlhf_contract.assignment import StageAssignment
    from rlhf_contract.settings import StageSettings

StageKind = Literal["sft", "reward", "dpo", "ppo", "grpo"]
STAGE_ORDER: tuple[str, ...] = get_args(StageKind)


@dataclass(frozen=True)
class Number:
    """A number a stage reports, as people see it: in the RLHFJob's status, and in ``rlhf run``'s view."""

    key: str
    """Where it comes from: the trainer's metric key in progress records (live numbers) or in result.json's
    metrics (results)."""
    label: str
    """A short name for people (``score``, ``eval accuracy``)."""
    description: str
    """What it means (the CRD describes the status field with it)."""


@dataclass(frozen=True)
class Kind:
    """What the operator and the trainer share about one stage kind."""

    name: str
    stage: type[StageSettings]
    """The job author's fields: ``spec.stages.<name>`` (plus the operator's Kubernetes settings)."""
    config: type[StageAssignment]
    """The stage config the trainer reads: ``stage`` plus what the plan assigns."""
    live: Mapping[str, Number] = field(default_factory=dict)
    """``status.<name>`` while the stage trains (besides step, totalSteps and updatedAt): field (camelCase) ->
    number. The first ones are what ``rlhf run`` shows as it trains."""
    results: Mapping[str, Number] = field(default_factory=dict)
    """``status.stages.<stage>.results`` once it ends: field (camelCase) -> number of its result."""
    reward: str | None = None
    """The live field that is the stage's reward (``kubectl get``'s REWARD column), if any."""
    kl: str | None = None
    """The live field that is its KL from the reference (the KL column), if any."""
