"""The stage kinds, in the order a job runs them, and what each kind declares (``rlhf_contract.stages.<kind>``).

A kind is one module of ``rlhf_contract.stages`` (its fields, its live status) and one runner module in the trainer
(``rlhf_trainer.stage.<kind>``); the plan, the operator's objects and its status handling are the same for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from rlhf_contract.assignment import StageAssignment
    from rlhf_contract.schema import Schema
    from rlhf_contract.settings import StageSettings

StageKind = Literal["sft", "reward", "ppo"]
STAGE_ORDER: tuple[str, ...] = get_args(StageKind)


@dataclass(frozen=True)
class Kind:
    """What the operator and the trainer share about one stage kind."""

    name: str
    stage: type[StageSettings]
    """The job author's fields: ``spec.stages.<name>`` (plus the operator's Kubernetes settings)."""
    config: type[StageAssignment]
    """The stage config the trainer reads: ``stage`` plus what the plan assigns."""
    live: type[Schema] | None = None
    """``status.<name>``: statistics the trainer pushes while the stage runs (None: the kind has none)."""
    live_metrics: Mapping[str, str] = field(default_factory=dict)
    """Each live field (camelCase) and the progress-record metric key it is read from."""
