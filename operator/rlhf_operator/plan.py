"""spec -> plan: the ordered stages with their stage configs (pure; no I/O, no Kubernetes).

Each stage's inputs are resolved: an unset model falls back to an earlier stage's output or to ``spec.model``,
a ``fromStage`` becomes ``<workspace>/<stage>/model``, a relative path is joined to the workspace; each stage
writes to ``<workspace>/<stage>/``. A spec that cannot run fails here, before anything starts, with a
``PlanError`` naming the field.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import get_args

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.builtins import BUILTIN_MAX_POSITIONS
from rlhf_contract.kinds import STAGE_ORDER
from rlhf_contract.settings import StageSettings
from rlhf_contract.sources import Source, map_sources
from rlhf_contract.stages import STAGE_CONFIGS
from rlhf_contract.workspace import stage_dir, stage_model_dir
from rlhf_operator.api import KubernetesStage, RLHFJobSpec

# Child object names become label values and Indexed Job pod hostnames (<name>-<index>): 63 characters at most.
MAX_CHILD_NAME = 52


class PlanError(ValueError):
    """A spec that cannot run. ``path`` is the field to fix, e.g. ``spec.stages.ppo.reward.fromStage``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class PlannedStage:
    """One stage of the plan."""

    name: str
    """The stage's name, its kind: sft, reward, ppo, ..."""
    config: StageAssignment
    """What the trainer runs, every input resolved."""
    kubernetes: KubernetesStage
    """How it runs on Kubernetes: workers, resources, retries, pod template overrides."""
    object_name: str
    """Name of the stage's child objects (Job, ConfigMap, Service): stable, unique per job and stage."""


@dataclass(frozen=True)
class Plan:
    """The stages of one RLHFJob, in the order they run."""

    job_name: str
    workspace: str
    stages: tuple[PlannedStage, ...]

    def stage(self, name: str) -> PlannedStage:
        """The planned stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"this plan has no stage {name!r}; it has {', '.join(s.name for s in self.stages)}")


def make_plan(spec: RLHFJobSpec, job_name: str, workspace: str = "/workspace") -> Plan:
    """Plan ``spec`` for the job ``job_name`` whose workspace is the absolute path ``workspace``."""
    if not posixpath.isabs(workspace):
        raise ValueError(f"the workspace must be an absolute path, not {workspace!r}")
    present = spec.stages.present()
    if not present:
        raise PlanError("spec.stages", f"no stages; add at least one of {', '.join(STAGE_ORDER)}")
    stages = []
    for position, (kind, stage) in enumerate(present):
        earlier = [name for name, _ in present[:position]]
        stage = _fit_builtin_length(spec, kind, stage, earlier)
        stages.append(PlannedStage(
            name=kind,
            config=_stage_config(spec, kind, stage, earlier, job_name, workspace),
            kubernetes=KubernetesStage.model_validate(stage.model_dump(include=set(KubernetesStage.model_fields))),
            object_name=child_name(job_name, kind),
        ))
    return Plan(job_name=job_name, workspace=workspace, stages=tuple(stages))


def child_name(job_name: str, stage: str) -> str:
    """``<job>-<stage>``, a valid DNS-1035 label of at most MAX_CHILD_NAME characters, the same every time."""
    name = f"{job_name}-{stage}".replace(".", "-")
    if not name[0].isalpha():  # Service names start with a letter
        name = f"rlhf-{name}"
    if len(name) <= MAX_CHILD_NAME:
        return name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    keep = MAX_CHILD_NAME - len(stage) - len(digest) - 2
    return f"{name[:keep].rstrip('-')}-{digest}-{stage}"


def _stage_config(spec: RLHFJobSpec, kind: str, stage: StageSettings, earlier: list[str], job_name: str,
                  workspace: str) -> StageAssignment:
    stage = _with_default_models(spec, kind, stage, earlier)

    def resolve(field_path: str, source: Source) -> Source:
        ref = getattr(source, "from_stage", None)
        if ref is not None:
            if ref not in earlier:
                in_job = getattr(spec.stages, ref) is not None
                why = f"stages run in the order {', '.join(STAGE_ORDER)}" if in_job else f"this job has no {ref} stage"
                raise PlanError(f"spec.stages.{kind}.{field_path}.fromStage",
                                f"stage '{ref}' does not run before '{kind}' ({why})")
            takes = type(stage).from_earlier.get(field_path.split(".")[0].split("[")[0], ())
            if takes and ref not in takes:
                raise PlanError(f"spec.stages.{kind}.{field_path}.fromStage",
                                f"stage '{ref}' does not make a model this field can take (one of: {', '.join(takes)})")
            return source.model_copy(update={"from_stage": None, "path": stage_model_dir(workspace, ref)})
        if source.path is not None and not posixpath.isabs(source.path):
            return source.model_copy(update={"path": posixpath.normpath(posixpath.join(workspace, source.path))})
        return source

    config_cls = STAGE_CONFIGS[kind]
    fields = map_sources(stage, resolve).model_dump(include=set(config_cls.model_fields))
    return config_cls(**fields, name=kind, job_name=job_name, workspace=workspace,
                      output_dir=stage_dir(workspace, kind))


def _with_default_models(spec: RLHFJobSpec, kind: str, stage: StageSettings, earlier: list[str]) -> StageSettings:
    """Fill unset model fields: the output of the latest stage they default to that runs earlier, else spec.model."""
    cls = type(stage)
    updates = {}
    for field in (cls.model_field, *cls.from_earlier):
        if getattr(stage, field) is not None:
            continue
        sources = cls.from_earlier.get(field, ())
        source = next((name for name in reversed(earlier) if name in sources), None)
        if source is not None:
            source_cls = next(arg for arg in get_args(cls.model_fields[field].annotation) if arg is not type(None))
            updates[field] = source_cls(from_stage=source)
        elif field == cls.model_field and spec.model is not None:
            updates[field] = spec.model
        else:
            fallbacks = ["spec.model is not set either"] if field == cls.model_field else []
            fixes = ["set it"] + (["set spec.model"] if field == cls.model_field else [])
            if sources:
                fallbacks.insert(0, f"no {' or '.join(sources)} stage runs before {kind}")
                fixes.append(f"add a {' or '.join(sources)} stage")
            raise PlanError(f"spec.stages.{kind}.{cls.model_fields[field].alias}",
                            f"not set, and {' and '.join(fallbacks)}; {', '.join(fixes[:-1])} or {fixes[-1]}")
    return stage.model_copy(update=updates)


def _builtin_model(spec: RLHFJobSpec, kind: str, stage: StageSettings, earlier: list[str]) -> str | None:
    """The builtin model a stage starts from: its own model, or the one of the stage it takes its model from."""
    model = getattr(_with_default_models(spec, kind, stage, earlier), type(stage).model_field)
    if model.from_stage is None or model.from_stage not in earlier:
        return model.builtin
    source = earlier.index(model.from_stage)
    return _builtin_model(spec, model.from_stage, getattr(spec.stages, model.from_stage), earlier[:source])


def _fit_builtin_length(spec: RLHFJobSpec, kind: str, stage: StageSettings, earlier: list[str]) -> StageSettings:
    """A builtin model has BUILTIN_MAX_POSITIONS positions: an unset sequence length becomes that, a longer one set
    by hand is refused here rather than in the pod."""
    training = getattr(stage, "training", None)
    if training is None or training.max_seq_length <= BUILTIN_MAX_POSITIONS:
        return stage
    if not (builtin := _builtin_model(spec, kind, stage, earlier)):
        return stage
    if "max_seq_length" in training.model_fields_set:
        raise PlanError(f"spec.stages.{kind}.training.maxSeqLength",
                        f"{training.max_seq_length} is more than the {BUILTIN_MAX_POSITIONS} positions of the builtin "
                        f"model {builtin}; set it to at most {BUILTIN_MAX_POSITIONS}")
    fitted = training.model_copy(update={"max_seq_length": BUILTIN_MAX_POSITIONS})
    return stage.model_copy(update={"training": fitted})
