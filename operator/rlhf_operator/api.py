"""The RLHFJob resource: spec and status models, the single source of the CRD (``rlhf_operator.crd``).

A stage's fields are the trainer's stage models (``rlhf_trainer.stage.config``) plus the Kubernetes-only
settings of ``KubernetesStage``. Fields are snake_case in Python and camelCase in YAML; unknown fields are errors.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from rlhf_trainer.schema import Schema
from rlhf_trainer.stage.config import (
    STAGE_ORDER,
    Checked,
    ModelSource,
    PPOStage,
    RewardStage,
    Rule,
    SFTStage,
    StageKind,
    StageSettings,
)

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ["rlhf", "rlhfjob"]

# Kubernetes' resource.Quantity, as its CRDs declare it (an integer or a string like 500Mi or 1.5).
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 1, 500m, 16Gi)")
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_check_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _QUANTITY.pattern,
                    "x-kubernetes-int-or-string": True}),
]

FreeForm = dict[str, Any]
"""A Kubernetes object passed through as written (the API server and the kubernetes client check it)."""


# --- Kubernetes-only settings ---------------------------------------------------------------------------------

class Resources(Schema):
    """Compute resources of a stage's trainer container, per worker pod."""

    requests: dict[str, Quantity] | None = Field(None, description="Minimum resources, e.g. {cpu: 4, memory: 32Gi}.")
    limits: dict[str, Quantity] | None = Field(
        None, description="Maximum resources; GPUs go here, e.g. {nvidia.com/gpu: 8}.")


class LocalObjectReference(Schema):
    """A reference to an object in the job's namespace."""

    name: str = Field(min_length=1, description="The object's name.")


class EnvVar(Schema):
    """An environment variable of the trainer container."""

    name: str = Field(min_length=1, description="The variable's name.")
    value: str | None = Field(None, description="Its value.")
    value_from: FreeForm | None = Field(None, description="Where its value comes from (secretKeyRef, ...).")


class PodTemplate(Schema):
    """Settings of the stages' pods. Job-wide in spec.template; a stage's own template overrides it field by field."""

    node_selector: dict[str, str] | None = Field(None, description="Labels a node must have.")
    tolerations: list[FreeForm] | None = Field(None, description="Taints the pods tolerate (e.g. GPU nodes').")
    affinity: FreeForm | None = Field(None, description="Node and pod affinity.")
    priority_class_name: str | None = Field(None, description="Priority class of the pods.")
    service_account_name: str | None = Field(None, description="Service account the pods run as.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, description="Secrets for pulling the trainer image.")
    env: list[EnvVar] | None = Field(None, description="Environment variables of the trainer container.")
    env_from: list[FreeForm] | None = Field(
        None, description="Sources of environment variables, e.g. a Secret holding HF_TOKEN.")
    labels: dict[str, str] | None = Field(
        None, description="Labels of the stages' Jobs and pods (e.g. kueue.x-k8s.io/queue-name).")
    annotations: dict[str, str] | None = Field(None, description="Annotations of the stages' pods.")
    security_context: FreeForm | None = Field(
        None, description="Security context of the trainer container; replaces the restricted default.")
    pod_security_context: FreeForm | None = Field(
        None, description="Security context of the pods; replaces the restricted default.")


class KubernetesStage(Schema):
    """How a stage runs on Kubernetes (ignored by `rlhf run`)."""

    workers: int = Field(
        1, ge=1, description="Pods running the stage together; more than one gives an Indexed Job and a headless "
                             "Service for torch.distributed.")
    resources: Resources | None = Field(None, description="Resources of each worker's trainer container.")
    backoff_limit: int = Field(
        3, ge=0, description="Retries of the stage's Job; each resumes from the last complete checkpoint.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Time limit of the stage's Job, retries included.")
    template: PodTemplate | None = Field(None, description="This stage's overrides of spec.template.")


class SFTStageSpec(KubernetesStage, SFTStage):
    """Supervised fine-tuning of a causal language model."""


class RewardStageSpec(KubernetesStage, RewardStage):
    """Reward modelling: a scalar score trained on preference pairs (chosen over rejected)."""


class PPOStageSpec(KubernetesStage, PPOStage):
    """PPO: the policy answers prompts, the reward scores the answers, PPO updates the policy."""


# --- the spec -------------------------------------------------------------------------------------------------

class Stages(Checked):
    """The stages to run, always in the order sft, reward, ppo; any may be omitted."""

    sft: SFTStageSpec | None = Field(None, description="Supervised fine-tuning.")
    reward: RewardStageSpec | None = Field(None, description="Reward modelling.")
    ppo: PPOStageSpec | None = Field(None, description="PPO against the reward.")

    def present(self) -> list[tuple[StageKind, StageSettings]]:
        """The stages this job runs, in order, with their specs."""
        return [(kind, stage) for kind in STAGE_ORDER if (stage := getattr(self, kind)) is not None]

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        """The plan's checks, for the API server (``rlhf_operator.plan`` makes the same ones)."""
        kinds = " or ".join(STAGE_ORDER)
        rules = [Rule(" || ".join(f"has(self.{kind})" for kind in STAGE_ORDER), f"no stages: add {kinds}")]
        for position, kind in enumerate(STAGE_ORDER):
            stage_cls = _stage_spec(kind)
            earlier = STAGE_ORDER[:position]
            for field in _model_fields(stage_cls):
                name = stage_cls.model_fields[field].alias
                ref = f"self.{kind}.{name}.fromStage"
                unset = f"!has(self.{kind}) || !has(self.{kind}.{name}) || !has({ref})"
                if earlier:
                    runs_before = " || ".join(f"({ref} == '{e}' && has(self.{e}))" for e in earlier)
                    rules.append(Rule(f"{unset} || {runs_before}",
                                      f"{kind}.{name}.fromStage must name a stage that runs before {kind}"))
                else:
                    rules.append(Rule(unset, f"{kind}.{name}.fromStage: no stage runs before {kind}"))
            for field, source in stage_cls.from_earlier.items():
                if field != stage_cls.model_field:
                    name = stage_cls.model_fields[field].alias
                    rules.append(Rule(
                        f"!has(self.{kind}) || has(self.{kind}.{name}) || has(self.{source})",
                        f"{kind}.{name}: not set and no {source} stage runs before {kind}; set it or add the "
                        f"{source} stage"))
        return rules


def _stage_spec(kind: str) -> type[StageSettings]:
    return next(arg for arg in get_args(Stages.model_fields[kind].annotation) if arg is not type(None))


def _model_fields(stage_cls: type[StageSettings]) -> list[str]:
    """A stage's fields that hold a model source (those a fromStage may appear in)."""
    return [name for name, info in stage_cls.model_fields.items()
            if any(isinstance(arg, type) and issubclass(arg, ModelSource) for arg in get_args(info.annotation))]


class Storage(Checked):
    """The workspace volume the stages share: a PersistentVolumeClaim the operator creates, or an existing one."""

    size: Quantity | None = Field(None, description="Size of the claim; unset: the operator's default (20Gi).")
    storage_class_name: str | None = Field(None, description="Storage class of the claim; unset: the default.")
    existing_claim: str | None = Field(None, min_length=1, description="Use this claim instead of creating one.")
    keep_on_delete: bool = Field(
        False, description="Keep the created claim when the RLHFJob is deleted or its TTL expires.")

    @model_validator(mode="after")
    def _check_existing_claim(self) -> Storage:
        if self.existing_claim is not None and (self.size is not None or self.storage_class_name is not None):
            raise ValueError("size and storageClassName are for a new claim; not with existingClaim")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [Rule("!has(self.existingClaim) || (!has(self.size) && !has(self.storageClassName))",
                     "size and storageClassName are for a new claim; not with existingClaim")]


class RLHFJobSpec(Checked):
    """An RLHF pipeline: supervised fine-tuning, reward modelling and PPO, each a Kubernetes Job."""

    image: str | None = Field(None, min_length=1, description="Trainer image; unset: the operator's default.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the trainer image.")
    model: ModelSource | None = Field(None, description="The model of every stage that names none.")
    storage: Storage = Field(default_factory=Storage, description="The workspace volume.")
    stages: Stages = Field(description="The stages to run.")
    suspend: bool = Field(False, description="Suspend the running stage's Job; false again resumes it.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job's children (not a kept claim) this long after it finishes.")
    template: PodTemplate | None = Field(None, description="Settings of every stage's pods.")

    @model_validator(mode="after")
    def _check_model(self) -> RLHFJobSpec:
        if self.model is not None and self.model.from_stage is not None:
            raise ValueError("model.fromStage: the job's model cannot come from one of its stages")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        rules = [Rule("!has(self.model) || !has(self.model.fromStage)",
                      "model.fromStage: the job's model cannot come from one of its stages")]
        for kind in STAGE_ORDER:
            stage_cls = _stage_spec(kind)
            name = stage_cls.model_fields[stage_cls.model_field].alias
            fallbacks, message = ["has(self.model)"], f"stages.{kind}.{name}: no model to start from; set it or model"
            if source := stage_cls.from_earlier.get(stage_cls.model_field):
                fallbacks.append(f"has(self.stages.{source})")
                message += f", or add the {source} stage"
            rules.append(Rule(
                f"!has(self.stages.{kind}) || has(self.stages.{kind}.{name}) || {' || '.join(fallbacks)}", message))
        return rules


# --- the status -----------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class StageStatus(Schema):
    """How one stage went."""

    phase: Phase | None = Field(None, description="Where the stage is.")
    job: str | None = Field(None, description="Name of the stage's Job.")
    start_time: datetime | None = Field(None, description="When the stage's Job was created.")
    completion_time: datetime | None = Field(None, description="When the stage finished.")
    output: str | None = Field(None, description="The stage's directory in the workspace.")
    metrics: dict[str, float] | None = Field(
        None, description="The stage's latest metrics (loss, accuracy, mean score, ...).")
    retries: int | None = Field(None, ge=0, description="Times the stage's pod was retried.")
    reason: str | None = Field(None, description="Why the stage is in its phase, in CamelCase.")
    message: str | None = Field(None, description="Details for people.")


class StageStatuses(Schema):
    """Each stage's status, by stage."""

    sft: StageStatus | None = None
    reward: StageStatus | None = None
    ppo: StageStatus | None = None


class PPOStatus(Schema):
    """Live statistics of the PPO stage, updated as it trains."""

    step: int | None = Field(None, ge=0, description="PPO steps done.")
    total_steps: int | None = Field(None, ge=0, description="PPO steps in all.")
    mean_reward: float | None = Field(None, description="Mean score of the last step's responses.")
    kl: float | None = Field(None, description="KL divergence of the policy from the reference.")
    kl_coef: float | None = Field(None, description="Current KL penalty coefficient.")
    policy_loss: float | None = Field(None, description="Policy loss of the last step.")
    value_loss: float | None = Field(None, description="Value loss of the last step.")
    entropy: float | None = Field(None, description="Entropy of the policy's token distribution.")
    updated_at: datetime | None = Field(None, description="When these were reported.")


class Condition(Schema):
    """A metav1.Condition: Created, Running, Succeeded, Failed or Suspended."""

    type: str = Field(min_length=1, description="The condition's type.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether it holds.")
    reason: str | None = Field(None, description="Why, in CamelCase.")
    message: str | None = Field(None, description="Details for people.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation it was set for.")


class RLHFJobStatus(Schema):
    """What the operator observed."""

    phase: Phase | None = Field(None, description="Where the job is.")
    stage: StageKind | None = Field(None, description="The stage running now, or the last one run.")
    stages: StageStatuses | None = Field(None, description="Each stage's status.")
    ppo: PPOStatus | None = Field(None, description="Live PPO statistics.")
    conditions: list[Condition] | None = Field(
        None, description="The job's conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = Field(None, ge=0, description="The spec generation last acted on.")
    start_time: datetime | None = Field(None, description="When the first stage started.")
    completion_time: datetime | None = Field(None, description="When the job finished.")


# --- the resource ---------------------------------------------------------------------------------------------

class ObjectMeta(Schema):
    """The parts of metadata the tools read; the rest is kept as written."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="The job's name: lower-case letters, digits, '-' and '.'.")
    namespace: str | None = Field(None, description="The job's namespace.")


class RLHFJob(Schema):
    """An RLHFJob as written in a file or read from the API server."""

    api_version: Literal[API_VERSION] = Field(description=f"{API_VERSION}.")
    kind: Literal[KIND] = Field(description=f"{KIND}.")
    metadata: ObjectMeta
    spec: RLHFJobSpec
    status: RLHFJobStatus | None = None
