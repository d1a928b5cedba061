"""The RLHFJob resource: spec and status models, the single source of the CRD (``rlhf_operator.crd``).

``spec.stages.<kind>`` is the contract's stage model of that kind (``rlhf_contract.stages``) plus the
Kubernetes-only settings of ``KubernetesStage``; ``status.<kind>`` is the kind's live statistics. Both are built from
the contract's list of kinds, so a new kind needs nothing here. Fields are snake_case in Python and camelCase in
YAML; unknown fields are errors. Whatever the API server would refuse in the objects the operator creates from a
spec (int32 fields, Indexed Job sizes, quantities, tolerations, label syntax) is refused here and by the CRD first.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, create_model, model_validator
from pydantic.alias_generators import to_snake

from rlhf_contract.kinds import STAGE_ORDER, Kind, StageKind
from rlhf_contract.progress import Phase
from rlhf_contract.schema import INT32_MAX, Checked, Rule, Schema
from rlhf_contract.settings import StageSettings
from rlhf_contract.sources import ModelSource
from rlhf_contract.stages import KINDS

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ["rlhf", "rlhfjob"]

MAX_INDEXED_JOB_SIZE = 100_000
"""The most pods an Indexed Job may have (its completions and parallelism)."""
DEFAULT_TERMINATION_GRACE_SECONDS = 300
"""How long a stopping trainer has to checkpoint: Kubernetes' 30 s is too short for a model's weights."""

# --- quantities -------------------------------------------------------------------------------------------------

# Kubernetes' resource.Quantity without a sign (resources are never negative): 1, 500m, 16Gi, 1.5, 1e3.
_QUANTITY = re.compile(
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


def quantity_value(quantity: str | int) -> Decimal:
    """The number a Kubernetes quantity stands for (``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824)."""
    text = str(quantity).lstrip("+")
    if not _QUANTITY.match(str(quantity)):
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity (e.g. 1, 500m, 16Gi)")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[:-2]) * factor
    if text[-1:] in _DECIMAL and not text[-1:].isdigit():
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity (e.g. 1, 500m, 16Gi)") from None


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{value!r} is not a quantity: resources are never negative")
    if len(str(value)) > 64:
        raise ValueError(f"{str(value)[:20]}...: a quantity is at most 64 characters")
    quantity_value(value)
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_check_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _QUANTITY.pattern,
                    "minimum": 0, "maxLength": 64, "x-kubernetes-int-or-string": True}),
]
"""A non-negative Kubernetes quantity."""


def _cel_quantity(value: str) -> str:
    return f"quantity(string({value}))"


NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def is_extended_resource(name: str) -> bool:
    """Resources other than cpu, memory, ephemeral-storage and hugepages-* (``nvidia.com/gpu``): Kubernetes wants
    whole numbers of them, and requests equal to limits."""
    return name not in NATIVE_RESOURCES and not name.startswith("hugepages-")


# --- names and labels -------------------------------------------------------------------------------------------

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_KEY = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
_LABEL_VALUE = rf"^({_LABEL_NAME})?$"
MAX_MAP_ENTRIES = 64

DNSSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE)]
_VALUE_SCHEMAS = {LabelValue: {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE}, str: {"type": "string"}}


def _check_keys(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is not None and len(values) > MAX_MAP_ENTRIES:
        raise ValueError(f"at most {MAX_MAP_ENTRIES} entries")
    for key in values or {}:
        name = key.rpartition("/")[2]
        if len(name) > 63 or len(key) > 316 or not re.match(_LABEL_KEY, key):
            raise ValueError(f"{key!r} is not a valid label or annotation key: [prefix/]name, the name at most 63 "
                             "letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    return values


def _keyed_map(value_type: Any) -> Any:
    """A map whose keys are label keys. The operator checks the keys; the CRD does not, as a CEL rule over keys of
    unbounded length would exceed the API server's cost budget (a bad key is an InvalidSpec condition instead)."""
    return Annotated[dict[str, value_type], AfterValidator(_check_keys),
                     WithJsonSchema({"type": "object", "additionalProperties": _VALUE_SCHEMAS[value_type],
                                     "maxProperties": MAX_MAP_ENTRIES})]


FreeForm = dict[str, Any]
"""A Kubernetes object passed through as written (the API server checks it)."""


# --- Kubernetes-only settings ---------------------------------------------------------------------------------

class Resources(Checked):
    """Compute resources of a stage's trainer container, per worker pod. The operator checks them (extended
    resources whole, requests within limits) and fails the job naming the field."""

    # Not CEL rules: over maps whose keys have no length bound, they exceed the API server's cost budget.

    requests: dict[str, Quantity] | None = Field(
        None, max_length=MAX_MAP_ENTRIES, description="Minimum resources, e.g. {cpu: 4, memory: 32Gi}.")
    limits: dict[str, Quantity] | None = Field(
        None, max_length=MAX_MAP_ENTRIES, description="Maximum resources; GPUs go here, e.g. {nvidia.com/gpu: 8}.")

    @model_validator(mode="after")
    def _check_resources(self) -> Resources:
        requests, limits = self.requests or {}, self.limits or {}
        for kind, values in (("requests", requests), ("limits", limits)):
            for name, value in values.items():
                if is_extended_resource(name) and quantity_value(value) != int(quantity_value(value)):
                    raise ValueError(f"{kind}[{name}]: {value!r}: {name} is an extended resource; use a whole number")
        for name, value in requests.items():
            if name in limits and quantity_value(value) > quantity_value(limits[name]):
                raise ValueError(f"requests[{name}] ({value}) must be less than or equal to limits[{name}] "
                                 f"({limits[name]})")
            if is_extended_resource(name) and (name not in limits or quantity_value(value) != quantity_value(limits[name])):
                raise ValueError(f"requests[{name}]: {name} is an extended resource: set it in limits, and requests "
                                 "equal to limits (or only limits)")
        return self


class Toleration(Checked):
    """A taint the pods tolerate (e.g. GPU nodes'), as a pod's tolerations entry."""

    key: str | None = Field(None, min_length=1, max_length=316, pattern=_LABEL_KEY,
                            description="The taint key; unset with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal; unset: Equal.")
    value: str | None = Field(None, max_length=63, pattern=_LABEL_VALUE, description="The taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect to tolerate; unset: every effect.")
    toleration_seconds: int | None = Field(
        None, ge=0, le=INT32_MAX, description="With effect NoExecute: how long the pod stays after the taint.")

    @model_validator(mode="after")
    def _check_toleration(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.key is None and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("effect must be NoExecute when tolerationSeconds is set")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [
            Rule("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                 "value must be empty when operator is Exists"),
            Rule("has(self.key) || (has(self.operator) && self.operator == 'Exists')",
                 "operator must be Exists when key is empty"),
            Rule("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 "effect must be NoExecute when tolerationSeconds is set"),
        ]


class LocalObjectReference(Schema):
    """A reference to an object in the job's namespace."""

    name: DNSSubdomain = Field(description="The object's name.")


class EnvVar(Schema):
    """An environment variable of the trainer container."""

    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="The variable's name.")
    value: str | None = Field(None, description="Its value.")
    value_from: FreeForm | None = Field(None, description="Where its value comes from (secretKeyRef, ...).")


class PodTemplate(Schema):
    """Settings of the stages' pods. Job-wide in spec.template; a stage's own template overrides it field by field."""

    node_selector: _keyed_map(LabelValue) | None = Field(None, description="Labels a node must have.")
    tolerations: list[Toleration] | None = Field(
        None, max_length=MAX_MAP_ENTRIES, description="Taints the pods tolerate (e.g. GPU nodes').")
    affinity: FreeForm | None = Field(None, description="Node and pod affinity.")
    priority_class_name: DNSSubdomain | None = Field(None, description="Priority class of the pods.")
    service_account_name: DNSSubdomain | None = Field(None, description="Service account the pods run as.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, description="Secrets for pulling the trainer image.")
    env: list[EnvVar] | None = Field(None, description="Environment variables of the trainer container.")
    env_from: list[FreeForm] | None = Field(
        None, description="Sources of environment variables, e.g. a Secret holding HF_TOKEN.")
    labels: _keyed_map(LabelValue) | None = Field(
        None, description="Labels of the stages' Jobs and pods (e.g. kueue.x-k8s.io/queue-name).")
    annotations: _keyed_map(str) | None = Field(None, description="Annotations of the stages' pods.")
    security_context: FreeForm | None = Field(
        None, description="Security context of the trainer container; replaces the restricted default.")
    pod_security_context: FreeForm | None = Field(
        None, description="Security context of the pods; replaces the restricted default.")
    termination_grace_period_seconds: int | None = Field(
        None, ge=0, le=INT32_MAX,
        description=f"Seconds a stopping trainer pod gets to save a checkpoint before it is killed (preemption, "
                    f"eviction, spec.suspend); unset: {DEFAULT_TERMINATION_GRACE_SECONDS}.")


class KubernetesStage(Schema):
    """How a stage runs on Kubernetes (ignored by `rlhf run`)."""

    workers: int = Field(
        1, ge=1, le=MAX_INDEXED_JOB_SIZE,
        description="Pods running the stage together; more than one gives an Indexed Job and a headless Service for "
                    "torch.distributed.")
    resources: Resources | None = Field(None, description="Resources of each worker's trainer container.")
    backoff_limit: int = Field(
        3, ge=0, le=INT32_MAX, description="Retries of the stage's Job; each resumes from the last complete checkpoint.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Time limit of the stage's Job, retries included.")
    template: PodTemplate | None = Field(None, description="This stage's overrides of spec.template.")


def _stage_spec(kind: Kind) -> type[StageSettings]:
    """``spec.stages.<kind>``: the kind's fields, and how it runs on Kubernetes."""
    return type(f"{kind.stage.__name__}Spec", (KubernetesStage, kind.stage),
                {"__doc__": kind.stage.__doc__, "__module__": __name__})


STAGE_SPECS: dict[str, type[StageSettings]] = {name: _stage_spec(kind) for name, kind in KINDS.items()}


# --- the spec -------------------------------------------------------------------------------------------------

class _Stages(Checked):
    """The stages to run, always in the order of the kinds (``rlhf_contract.kinds``); any may be omitted."""

    def present(self) -> list[tuple[StageKind, StageSettings]]:
        """The stages this job runs, in order, with their specs."""
        return [(kind, stage) for kind in STAGE_ORDER if (stage := getattr(self, kind)) is not None]

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        """The plan's checks, for the API server (``rlhf_operator.plan`` makes the same ones)."""
        kinds = " or ".join(STAGE_ORDER)
        rules = [Rule(" || ".join(f"has(self.{kind})" for kind in STAGE_ORDER), f"no stages: add {kinds}")]
        for position, kind in enumerate(STAGE_ORDER):
            stage_cls = STAGE_SPECS[kind]
            earlier = STAGE_ORDER[:position]
            for field, many in model_source_fields(stage_cls):
                name = stage_cls.model_fields[field].alias
                where = f"self.{kind}.{name}"
                if earlier:
                    def runs_before(ref: str) -> str:
                        return " || ".join(f"({ref} == '{e}' && has(self.{e}))" for e in earlier)  # noqa: B023
                    message = f"{kind}.{name}.fromStage must name a stage that runs before {kind}"
                else:
                    def runs_before(ref: str) -> str:
                        return "false"
                    message = f"{kind}.{name}.fromStage: no stage runs before {kind}"
                if many:
                    rule = f"!has(self.{kind}) || !has({where}) || {where}.all(x, !has(x.fromStage) || " \
                           f"{runs_before('x.fromStage')})"
                else:
                    rule = f"!has(self.{kind}) || !has({where}) || !has({where}.fromStage) || " \
                           f"{runs_before(where + '.fromStage')}"
                rules.append(Rule(rule.removesuffix(" || false"), message))
                if (takes := stage_cls.from_earlier.get(field)) and not many:
                    rules.append(Rule(
                        f"!has(self.{kind}) || !has({where}) || !has({where}.fromStage) || "
                        f"{where}.fromStage in {list(takes)}",
                        f"{kind}.{name}.fromStage must name a stage whose model it can take: {', '.join(takes)}"))
            for field, sources in stage_cls.from_earlier.items():
                if field != stage_cls.model_field:
                    name = stage_cls.model_fields[field].alias
                    present = " || ".join(f"has(self.{source})" for source in sources)
                    stages = " or ".join(sources)
                    rules.append(Rule(
                        f"!has(self.{kind}) || has(self.{kind}.{name}) || {present}",
                        f"{kind}.{name}: not set and no {stages} stage runs before {kind}; set it or add the "
                        f"{stages} stage"))
        return rules


Stages = create_model(
    "Stages", __base__=_Stages, __doc__=f"The stages to run, always in the order {', '.join(STAGE_ORDER)}; any may "
                                        "be omitted.",
    **{name: (STAGE_SPECS[name] | None, Field(None, description=kind.stage.__doc__)) for name, kind in KINDS.items()})


def model_source_fields(stage_cls: type[StageSettings]) -> list[tuple[str, bool]]:
    """A stage's fields that hold model sources (those a fromStage may appear in), and whether each holds a list."""
    found = []
    for name, info in stage_cls.model_fields.items():
        options = get_args(info.annotation) if get_origin(info.annotation) in (Union, UnionType) else [info.annotation]
        for arg in options:
            many = get_origin(arg) is list
            inner = get_args(arg)[0] if many else arg
            if isinstance(inner, type) and issubclass(inner, ModelSource):
                found.append((name, many))
                break
    return found


class Storage(Checked):
    """The workspace volume the stages share: a PersistentVolumeClaim the operator creates, or an existing one."""

    size: Quantity | None = Field(None, description="Size of the claim; unset: the operator's default (20Gi).")
    storage_class_name: DNSSubdomain | None = Field(
        None, description="Storage class of the claim; unset: the default.")
    existing_claim: DNSSubdomain | None = Field(None, description="Use this claim instead of creating one.")
    keep_on_delete: bool = Field(
        False, description="Keep the created claim when the RLHFJob is deleted or its TTL expires.")

    @model_validator(mode="after")
    def _check_storage(self) -> Storage:
        if self.existing_claim is not None and (self.size is not None or self.storage_class_name is not None):
            raise ValueError("size and storageClassName are for a new claim; not with existingClaim")
        if self.size is not None and quantity_value(self.size) <= 0:
            raise ValueError(f"size ({self.size}) must be greater than zero")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [Rule("!has(self.existingClaim) || (!has(self.size) && !has(self.storageClassName))",
                     "size and storageClassName are for a new claim; not with existingClaim"),
                Rule(f"!has(self.size) || {_cel_quantity('self.size')}.compareTo(quantity('0')) > 0", "size must be greater than zero")]


class RLHFJobSpec(Checked):
    """An RLHF pipeline: its stages (SFT, reward modelling, PPO, ...), each a Kubernetes Job."""

    image: str | None = Field(None, min_length=1, description="Trainer image; unset: the operator's default.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the trainer image.")
    model: ModelSource | None = Field(None, description="The model of every stage that names none.")
    storage: Storage = Field(default_factory=Storage, description="The workspace volume.")
    stages: Stages = Field(description="The stages to run.")
    suspend: bool = Field(False, description="Suspend the running stage's Job; false again resumes it.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=INT32_MAX, description="Delete the job's children (not a kept claim) this long after it finishes.")
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
            stage_cls = STAGE_SPECS[kind]
            name = stage_cls.model_fields[stage_cls.model_field].alias
            fallbacks, message = ["has(self.model)"], f"stages.{kind}.{name}: no model to start from; set it or model"
            if sources := stage_cls.from_earlier.get(stage_cls.model_field):
                fallbacks += [f"has(self.stages.{source})" for source in sources]
                message += f", or add the {' or '.join(sources)} stage"
            rules.append(Rule(
                f"!has(self.stages.{kind}) || has(self.stages.{kind}.{name}) || {' || '.join(fallbacks)}", message))
        return rules


# --- the status -----------------------------------------------------------------------------------------------

class StageStatus(Schema):
    """How one stage went."""

    phase: Phase | None = Field(None, description="Where the stage is.")
    job: str | None = Field(None, description="Name of the stage's Job.")
    start_time: datetime | None = Field(None, description="When the stage's Job was created.")
    completion_time: datetime | None = Field(None, description="When the stage finished.")
    steps: int | None = Field(None, ge=0, description="Steps done, once it finished.")
    total_steps: int | None = Field(None, ge=0, description="Steps planned.")
    duration_seconds: float | None = Field(None, ge=0, description="Seconds it trained (its last run).")
    output: str | None = Field(None, description="The stage's directory in the workspace.")
    retries: int | None = Field(None, ge=0, description="Times the stage's pod was retried.")
    reason: str | None = Field(None, description="Why the stage is in its phase, in CamelCase.")
    message: str | None = Field(None, description="Details for people.")


def _numbers(kind: Kind, numbers: dict) -> dict:
    """Model fields (snake_case) for a kind's numbers."""
    return {to_snake(name): (float | None, Field(None, description=number.description))
            for name, number in numbers.items()}


class _LiveStatus(Schema):
    step: int | None = Field(None, ge=0, description="Steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps in all.")
    updated_at: datetime | None = Field(None, description="When these were reported.")


LIVE_STATUSES: dict[str, type[Schema]] = {
    name: create_model(f"{kind.stage.__name__.removesuffix('Stage')}Status", __base__=_LiveStatus,
                       __doc__=f"Live statistics of the {name} stage, updated as it trains.",
                       **_numbers(kind, kind.live))
    for name, kind in KINDS.items() if kind.live}
"""``status.<kind>`` of each kind that reports live numbers."""


def _stage_status(kind: Kind) -> type[StageStatus]:
    results = create_model(f"{kind.stage.__name__.removesuffix('Stage')}Results", __base__=Schema,
                           __doc__=f"The {kind.name} stage's headline results.", **_numbers(kind, kind.results))
    return create_model(f"{results.__name__.removesuffix('Results')}StageStatus", __base__=StageStatus,
                        __doc__=StageStatus.__doc__,
                        results=(results | None, Field(None, description="Its headline results, once it ended.")))


StageStatuses = create_model(
    "StageStatuses", __base__=Schema, __doc__="Each stage's status, by stage.",
    **{name: (_stage_status(kind) | None, Field(None, description=f"The {name} stage."))
       for name, kind in KINDS.items()})


class Progress(Schema):
    """How far the running stage is (the last stage's, once the job has ended), as its trainer reports it."""

    stage: StageKind | None = Field(None, description="The stage.")
    step: int | None = Field(None, ge=0, description="Steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps in all.")
    percentage: int | None = Field(None, ge=0, le=100, description="Percent of the steps done.")
    estimated_remaining_seconds: int | None = Field(
        None, ge=0, description="Seconds left at the trainer's recent pace.")
    eta: str | None = Field(None, description="The time left, for people (1h02m, 5m10s, 40s).")
    reward: float | None = Field(None, description="The stage's latest mean reward (PPO, GRPO).")
    kl: float | None = Field(None, description="The policy's latest KL from the reference (PPO, GRPO).")
    updated_at: datetime | None = Field(None, description="When the trainer reported it.")


class Condition(Schema):
    """A metav1.Condition: Created, Running, Succeeded, Failed or Suspended."""

    type: str = Field(min_length=1, description="The condition's type.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether it holds.")
    reason: str | None = Field(None, description="Why, in CamelCase.")
    message: str | None = Field(None, description="Details for people.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation it was set for.")


class _RLHFJobStatus(Schema):
    """What the operator observed."""

    phase: Phase | None = Field(None, description="Where the job is.")
    stage: StageKind | None = Field(None, description="The stage running now, or the last one run.")
    stages: StageStatuses | None = Field(None, description="Each stage's status.")
    progress: Progress | None = Field(None, description="How far the running stage is.")
    conditions: list[Condition] | None = Field(
        None, description="The job's conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = Field(None, ge=0, description="The spec generation last acted on.")
    start_time: datetime | None = Field(None, description="When the first stage started.")
    completion_time: datetime | None = Field(None, description="When the job finished.")


RLHFJobStatus = create_model(
    "RLHFJobStatus", __base__=_RLHFJobStatus, __doc__=_RLHFJobStatus.__doc__,
    **{name: (live | None, Field(None, description=live.__doc__)) for name, live in LIVE_STATUSES.items()})
"""The status: the fields above, plus ``<kind>``: the live statistics of each kind (``status.ppo``, ...)."""


# --- the resource ---------------------------------------------------------------------------------------------

class ObjectMeta(Schema):
    """The parts of metadata the tools read; the rest is kept as written."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN,
        description="The job's name: lower-case letters, digits, '-' and '.'.")
    namespace: str | None = Field(None, description="The job's namespace.")


class RLHFJob(Schema):
    """An RLHFJob as written in a file or read from the API server."""

    api_version: Literal[API_VERSION] = Field(description=f"{API_VERSION}.")
    kind: Literal[KIND] = Field(description=f"{KIND}.")
    metadata: ObjectMeta
    spec: RLHFJobSpec
    status: RLHFJobStatus | None = None
