"""The stage kinds and their stage configs: the trainer's public input, one self-contained JSON document per stage.

The plan (``rlhf_operator.plan``) writes a stage config and ``python -m rlhf_trainer.stage CONFIG`` reads it. It is
the kind's fields as the job author wrote them (``<Kind>Stage``) plus what the plan assigns (``StageAssignment``):
which stage of which job, where it writes, every input resolved (a hub id, an absolute path or a builtin, never a
``fromStage``). The RLHFJob's ``spec.stages.<kind>`` is the same ``<Kind>Stage`` plus Kubernetes-only settings, so
each field is declared once, in the kind's module, and the CRD is generated from it.

Adding a stage kind: its name in ``rlhf_contract.kinds.StageKind`` (in run order), a module here with its
``<Kind>Stage``, ``<Kind>StageConfig`` and ``KIND``, one entry in ``KINDS`` below; then its runner
``rlhf_trainer.stage.<kind>``.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.kinds import STAGE_ORDER, Kind
from rlhf_contract.stages import dpo, grpo, ppo, reward, sft

KINDS: dict[str, Kind] = {kind.name: kind for kind in (sft.KIND, reward.KIND, dpo.KIND, ppo.KIND, grpo.KIND)}
"""Every stage kind, in run order."""
assert tuple(KINDS) == STAGE_ORDER, "KINDS must list every kind of StageKind, in its order"


STAGE_CONFIGS: dict[str, type[StageAssignment]] = {name: kind.config for name, kind in KINDS.items()}
"""Stage kind -> its config model (``SFTStageConfig``, ``RewardStageConfig``, ``PPOStageConfig``, ...)."""

StageConfig = Annotated[Union[tuple(STAGE_CONFIGS.values())], Field(discriminator="kind")]  # noqa: UP007
"""Any stage's config; ``kind`` selects which."""

_STAGE_CONFIG = TypeAdapter(StageConfig)


def parse_stage_config(text: str | bytes) -> StageAssignment:
    """A stage config from its JSON."""
    return _STAGE_CONFIG.validate_json(text)


def load_stage_config(path: str) -> StageAssignment:
    """A stage config from a JSON file (``/etc/rlhf/stage.json`` in a trainer pod)."""
    with open(path, "rb") as f:
        return parse_stage_config(f.read())
