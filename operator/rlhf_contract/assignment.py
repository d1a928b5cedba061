"""What the plan assigns to every stage config besides the job author's fields (torch-free)."""

from __future__ import annotations

import posixpath

from pydantic import Field, model_validator

from rlhf_contract.kinds import StageKind
from rlhf_contract.schema import Schema, alias
from rlhf_contract.settings import StageSettings
from rlhf_contract.sources import iter_sources


class StageAssignment(Schema):
    """What the plan assigns to every stage config: which stage of which job, and where it writes."""

    kind: StageKind = Field(description="The stage kind; selects the runner.")
    name: str = Field(min_length=1, description="The stage's name in the job (its directory in the workspace).")
    job_name: str = Field(min_length=1, description="The RLHFJob's name.")
    workspace: str = Field(description="Absolute path of the job's workspace (on Kubernetes: /workspace).")
    output_dir: str = Field(description="Absolute path of this stage's directory, <workspace>/<name>.")

    @model_validator(mode="after")
    def _check_resolved(self) -> StageAssignment:
        cls = type(self)
        for name in ("workspace", "output_dir"):
            if not posixpath.isabs(getattr(self, name)):
                raise ValueError(f"{alias(cls, name)} must be an absolute path")
        required = [cls.model_field, *cls.from_earlier] if issubclass(cls, StageSettings) else []
        for field in required:
            if getattr(self, field) is None:
                raise ValueError(f"{alias(cls, field)}: not set; the plan resolves it")
        for path, source in iter_sources(self):
            if getattr(source, "from_stage", None) is not None:
                raise ValueError(f"{path}.fromStage: not resolved; the plan turns it into a path")
            if source.path is not None and not posixpath.isabs(source.path):
                raise ValueError(f"{path}.path: {source.path!r} is not an absolute path; the plan resolves it")
        return self

    def to_json(self) -> str:
        """The stage config as the trainer reads it (camelCase JSON)."""
        return self.model_dump_json(by_alias=True, indent=2)
