"""The stage config: the trainer's public input, one self-contained JSON document per stage (torch-free).

The plan (``rlhf_operator.plan``) writes it and ``python -m rlhf_trainer.stage CONFIG`` reads it. Every input is
resolved: a model or dataset is a hub id, an absolute path or a builtin, never a ``fromStage``. The RLHFJob's
``spec.stages.<kind>`` fields are the ``<Kind>Stage`` models below plus Kubernetes-only settings, so each field
is declared once, here, with its description and constraints; the CRD is generated from these declarations.

Adding a stage kind (DPO, GRPO): its name in ``StageKind`` (in run order), a ``<Kind>Stage`` model with its
fields, a ``<Kind>StageConfig`` adding ``kind``, one more member of ``StageConfig``; then its runner in the
trainer and its field in the spec (``rlhf_operator.api``).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from rlhf_trainer.builtin_models import BUILTIN_MODELS
from rlhf_trainer.data import BUILTIN_DATASETS
from rlhf_trainer.schema import Schema
from rlhf_trainer.trainer.ppo_config import PPOConfig

StageKind = Literal["sft", "reward", "ppo"]
"""The stage kinds, in the order a job runs them."""
STAGE_ORDER: tuple[str, ...] = get_args(StageKind)

# --- cross-field rules, checked here in Python and declared as CEL for the CRD -------------------------------

class Rule(NamedTuple):
    """A Kubernetes CEL validation rule (an entry of ``x-kubernetes-validations``)."""

    rule: str
    message: str


def _alias(cls: type[BaseModel], field: str) -> str:
    return cls.model_fields[field].alias or field


def _add_cel_rules(schema: dict[str, Any], cls: type[Checked]) -> None:
    if rules := cls.cel_rules():
        schema["x-kubernetes-validations"] = [rule._asdict() for rule in rules]


class Checked(Schema):
    """A model with cross-field rules: checked by pydantic, and declared as CEL rules in its JSON schema.

    ``choices``: groups of fields of which exactly one group is set (all of its fields, none of the others').
    ``only_with``: fields that may be set only together with one of the named fields.
    Subclasses with further rules check them in a validator and return their CEL twin from ``cel_rules``.
    """

    model_config = ConfigDict(json_schema_extra=_add_cel_rules)

    choices: ClassVar[tuple[tuple[str, ...], ...]] = ()
    only_with: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def _choice_message(cls) -> str:
        options = ["+".join(_alias(cls, f) for f in group) for group in cls.choices]
        return f"set exactly one of {', '.join(options)}"

    @classmethod
    def _only_with_message(cls, field: str) -> str:
        partners = [_alias(cls, f) for f in cls.only_with[field]]
        return f"{_alias(cls, field)} needs {partners[0] if len(partners) == 1 else 'one of ' + ', '.join(partners)}"

    @model_validator(mode="after")
    def _check_choices(self) -> Checked:
        cls = type(self)
        given = {name for name in cls.model_fields if getattr(self, name) is not None}
        if cls.choices:
            chosen = [group for group in cls.choices if given.issuperset(group)]
            in_groups = given.intersection(f for group in cls.choices for f in group)
            if len(chosen) != 1 or in_groups != set(chosen[0]):
                got = " and ".join(_alias(cls, f) for f in cls.model_fields if f in in_groups) or "none"
                raise ValueError(f"{cls._choice_message()} (got {got})")
        for field, partners in cls.only_with.items():
            if field in given and not given.intersection(partners):
                raise ValueError(cls._only_with_message(field))
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        """The CEL twins of this model's checks (``x-kubernetes-validations``)."""
        rules = []
        if cls.choices and all(len(group) == 1 for group in cls.choices):
            given = ", ".join(f"has(self.{_alias(cls, f)})" for (f,) in cls.choices)
            rules.append(Rule(f"[{given}].exists_one(x, x)", cls._choice_message()))
        elif cls.choices:
            every = [f for group in cls.choices for f in group]
            options = [
                " && ".join(("" if f in group else "!") + f"has(self.{_alias(cls, f)})" for f in every)
                for group in cls.choices
            ]
            rules.append(Rule(" || ".join(f"({option})" for option in options), cls._choice_message()))
        for field, partners in cls.only_with.items():
            needs = " || ".join(f"has(self.{_alias(cls, f)})" for f in partners)
            rules.append(Rule(f"!has(self.{_alias(cls, field)}) || {needs}", cls._only_with_message(field)))
        return rules

    @classmethod
    def cel_value(cls, field: str) -> str:
        """A CEL expression for a field's value, falling back to its default (the CRD declares no defaults)."""
        name, info = _alias(cls, field), cls.model_fields[field]
        if info.is_required():
            return f"self.{name}"
        return f"(has(self.{name}) ? self.{name} : {json.dumps(info.default)})"


# --- where models and datasets come from ----------------------------------------------------------------------

class ModelSource(Checked):
    """Where a model comes from: exactly one of name (a hub id), path, builtin or fromStage."""

    choices = (("name",), ("path",), ("builtin",), ("from_stage",))
    only_with = {"revision": ("name",)}

    name: str | None = Field(None, min_length=1, description="Hugging Face hub id, e.g. gpt2.")
    revision: str | None = Field(None, min_length=1, description="Hub revision of name: branch, tag or commit.")
    path: str | None = Field(
        None, min_length=1,
        description="Directory of a saved model (config, weights, tokenizer); relative to the job's workspace "
                    "unless absolute.")
    builtin: Literal[tuple(BUILTIN_MODELS)] | None = Field(
        None, description="A tiny random-initialised model built on the spot, for tests and the demo.")
    from_stage: StageKind | None = Field(
        None, description="The model an earlier stage of this job trained; the plan turns it into that stage's "
                          "model directory.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Data type of the loaded weights (transformers' dtype); unset: float32.")
    quantization: Literal["8bit", "4bit"] | None = Field(
        None, description="Load the weights quantized with bitsandbytes (CUDA only), to train LoRA adapters on "
                          "top (peft).")
    trust_remote_code: bool = Field(False, description="Run the model's own Python code from its repository.")


class RewardSource(ModelSource):
    """What scores PPO's responses: exactly one of a reward model (fromStage, name, path or builtin) or a callable."""

    choices = (("name",), ("path",), ("builtin",), ("from_stage",), ("callable",))
    only_with = {"revision": ("name",), "label": ("name", "path", "builtin", "from_stage")}

    from_stage: Literal["reward"] | None = Field(
        None, description="The reward model trained by this job's reward stage.")
    label: str | None = Field(
        None, min_length=1,
        description="For a classifier with several outputs: the label (as in its id2label, e.g. POSITIVE) whose "
                    "logit is the score; unset: the single output of a reward model.")
    callable: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="A Python function module:function importable in the trainer image, called as "
                    "fn(queries: list[str], responses: list[str]) -> list[float].")
    input: Literal["query+response", "response"] = Field(
        "query+response", description="The text scored: the query followed by the response, or the response alone.")
    batch_size: int = Field(16, ge=1, description="Texts scored per forward pass of the reward model.")


DatasetFormat = Literal["jsonl", "json", "csv", "parquet"]
_FORMAT_SUFFIXES: dict[str, DatasetFormat] = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DatasetSource(Checked):
    """Where a dataset comes from: exactly one of name (a hub dataset), path (a local file) or builtin."""

    choices = (("name",), ("path",), ("builtin",))
    only_with = {"config": ("name",), "data_dir": ("name",), "revision": ("name",),
                 "split": ("name", "builtin"), "format": ("path",)}

    name: str | None = Field(None, min_length=1, description="Hugging Face hub dataset id, e.g. stanfordnlp/imdb.")
    config: str | None = Field(None, min_length=1, description="Configuration (subset) of the hub dataset.")
    data_dir: str | None = Field(None, min_length=1, description="Directory inside the hub dataset to read.")
    revision: str | None = Field(None, min_length=1, description="Hub revision of name: branch, tag or commit.")
    split: str | None = Field(
        None, min_length=1,
        description="Split of a hub or builtin dataset, with slicing as in datasets (train[:1000]); unset: train. "
                    "Builtin datasets have train and test.")
    path: str | None = Field(
        None, min_length=1,
        description="A jsonl, json, csv or parquet file, one row per example; relative to the job's workspace "
                    "unless absolute.")
    format: DatasetFormat | None = Field(None, description="Format of path; unset: from its extension.")
    builtin: Literal[BUILTIN_DATASETS] | None = Field(
        None, description="A small dataset shipped with the trainer, for tests and the demo.")

    @model_validator(mode="after")
    def _check_split_and_format(self) -> DatasetSource:
        if self.builtin is not None and self.split not in (None, "train", "test"):
            raise ValueError(f"builtin datasets have splits train and test, not {self.split!r}")
        if self.path is None and self.split is None:
            self.split = "train"
        if self.path is not None and self.format is None:
            suffix = posixpath.splitext(self.path)[1]
            if suffix not in _FORMAT_SUFFIXES:
                raise ValueError(f"cannot tell the format of {self.path!r} from its extension; set format "
                                 f"({', '.join(get_args(DatasetFormat))})")
            self.format = _FORMAT_SUFFIXES[suffix]
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        suffixes = " || ".join(f"self.path.endsWith('{suffix}')" for suffix in _FORMAT_SUFFIXES)
        return [
            *super().cel_rules(),
            Rule("!has(self.builtin) || !has(self.split) || self.split in ['train', 'test']",
                 "builtin datasets have splits train and test"),
            Rule(f"!has(self.path) || has(self.format) || {suffixes}",
                 "cannot tell the format of path from its extension; set format"),
        ]


# --- what a stage reads from its dataset ----------------------------------------------------------------------

class TextColumns(Checked):
    """The columns SFT learns from: exactly one of text, messages, or prompt+completion."""

    choices = (("text",), ("messages",), ("prompt", "completion"))

    text: str | None = Field(None, min_length=1, description="A column of plain text (TRL's dataset_text_field).")
    messages: str | None = Field(
        None, min_length=1,
        description="A column of conversations, lists of {role, content}, rendered with the chat template.")
    prompt: str | None = Field(None, min_length=1, description="A column of prompts, followed by completion.")
    completion: str | None = Field(None, min_length=1, description="A column of completions of prompt.")


class PreferenceColumns(Schema):
    """The columns a reward model learns from: a chosen and a rejected text, with an optional shared prompt."""

    chosen: str = Field("chosen", min_length=1, description="Column of the preferred text.")
    rejected: str = Field("rejected", min_length=1, description="Column of the other text.")
    prompt: str | None = Field(
        None, min_length=1, description="Column of a prompt put before both texts; unset: they are complete.")
    margin: str | None = Field(
        None, min_length=1, description="Column of how much chosen is preferred, added to the loss as a margin.")


class Queries(Checked):
    """The prompts PPO answers."""

    only_with = {"min_tokens": ("max_tokens",)}

    column: str = Field("query", min_length=1, description="Column of the prompts.")
    max_tokens: int | None = Field(None, ge=1, description="Truncate each prompt to at most this many tokens.")
    min_tokens: int | None = Field(
        None, ge=1,
        description="With maxTokens: truncate each prompt to a length drawn from [minTokens, maxTokens], as "
                    "TRL's sentiment example makes prompts of 2 to 8 tokens from IMDB reviews.")

    @model_validator(mode="after")
    def _check_range(self) -> Queries:
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"minTokens ({self.min_tokens}) exceeds maxTokens ({self.max_tokens})")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), Rule("!has(self.minTokens) || !has(self.maxTokens) || "
                                           "self.minTokens <= self.maxTokens", "minTokens exceeds maxTokens")]


# --- how a stage trains ---------------------------------------------------------------------------------------

class Training(Schema):
    """Optimisation settings of a supervised stage (mapped onto transformers' TrainingArguments)."""

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate of AdamW.")
    num_train_epochs: float = Field(1, gt=0, description="Passes over the dataset.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides numTrainEpochs).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Training examples per process per step.")
    per_device_eval_batch_size: int = Field(8, ge=1, description="Evaluation examples per process per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    warmup_ratio: float = Field(0, ge=0, lt=1, description="Fraction of the steps spent warming up the rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    ] = Field("linear", description="Learning rate schedule after warm-up.")
    weight_decay: float = Field(0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1, gt=0, description="Clip gradients to this norm.")
    max_seq_length: int = Field(512, ge=1, description="Truncate examples to this many tokens.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    logging_steps: int = Field(10, ge=1, description="Record metrics every this many steps.")


class SFTTraining(Training):
    """Optimisation settings of supervised fine-tuning."""

    packing: bool = Field(False, description="Pack several short examples into each sequence of maxSeqLength.")
    completion_only_loss: bool = Field(
        True, description="With prompt+completion or messages: learn only the completions (assistant turns).")


class HeldOut(Checked):
    """Data held out for evaluation: exactly one of split (another split of the dataset) or fraction (of its rows)."""

    choices = (("split",), ("fraction",))

    split: str | None = Field(None, min_length=1, description="Another split of the same dataset, e.g. test.")
    fraction: float | None = Field(None, gt=0, lt=1, description="Hold out this fraction of the dataset's rows.")
    steps: int | None = Field(None, ge=1, description="Evaluate every this many steps; unset: once, at the end.")


class LoRA(Schema):
    """Train LoRA adapters instead of all weights (peft)."""

    r: int = Field(8, ge=1, description="Rank of the adapters.")
    lora_alpha: float = Field(16, gt=0, description="Scale of the adapters' output (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Modules to adapt, e.g. [q_proj, v_proj]; unset: peft's default for the "
                                        "architecture.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    modules_to_save: list[str] | None = Field(
        None, min_length=1, description="Modules trained in full besides the adapters (a reward model's score "
                                        "head always is).")
    merge: bool = Field(
        True, description="Save the model with the adapters merged in, a plain model later stages load like any "
                          "other; false: save only the adapters.")


class Distributed(Schema):
    """How the stage's processes share the work."""

    num_processes: int = Field(1, ge=1, description="Processes per worker, usually one per GPU.")
    strategy: Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "ddp", description="Data parallel (ddp), fully sharded (fsdp), or DeepSpeed ZeRO stage 2 or 3 (needs the "
                           "deepspeed extra of the trainer image).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Mixed-precision training.")


class Checkpointing(Schema):
    """When the stage saves checkpoints; a restarted stage resumes from the latest complete one."""

    save_steps: int = Field(100, ge=1, description="Save a checkpoint every this many optimizer (PPO) steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept, the newest.")


# --- the stages -----------------------------------------------------------------------------------------------

class StageSettings(Checked):
    """Fields every stage has.

    ``model_field`` names the stage's main model, which defaults to the job's model (``spec.model``);
    ``from_earlier`` maps model fields to the stage whose output they default to when the job runs it earlier.
    """

    model_field: ClassVar[str] = "model"
    from_earlier: ClassVar[dict[str, StageKind]] = {}

    seed: int = Field(0, ge=0, description="Seed of every random generator; each process adds its rank.")
    distributed: Distributed = Field(default_factory=Distributed, description="Processes and parallelism.")
    report_to: list[str] | None = Field(
        None, description="Trackers to log to, as transformers' report_to (tensorboard, wandb, mlflow, ...); "
                          "unset: TensorBoard under the stage's directory when installed; [] for none.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="When to save checkpoints.")


class SFTStage(StageSettings):
    """Supervised fine-tuning of a causal language model."""

    model: ModelSource | None = Field(None, description="The model to fine-tune; unset: spec.model.")
    dataset: DatasetSource = Field(description="The training data.")
    columns: TextColumns = Field(
        default_factory=lambda: TextColumns(text="text"), description="What to learn; unset: the text column.")
    training: SFTTraining = Field(default_factory=SFTTraining, description="Optimisation settings.")
    peft: LoRA | None = Field(None, description="Train LoRA adapters; unset: all weights.")
    evaluation: HeldOut | None = Field(None, description="Held-out data to report the loss on.")

    @model_validator(mode="after")
    def _check_held_out_split(self) -> SFTStage:
        _check_held_out_split(self)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _HELD_OUT_SPLIT_RULE]


class RewardStage(StageSettings):
    """Reward modelling: a scalar score trained on preference pairs (chosen over rejected)."""

    from_earlier = {"model": "sft"}

    model: ModelSource | None = Field(
        None, description="Initial weights (a score head is added); unset: the sft stage's model when the job "
                          "runs one, else spec.model.")
    dataset: DatasetSource = Field(description="The preference pairs.")
    columns: PreferenceColumns = Field(default_factory=PreferenceColumns, description="Where the pairs are.")
    training: Training = Field(default_factory=Training, description="Optimisation settings.")
    peft: LoRA | None = Field(None, description="Train LoRA adapters; unset: all weights.")
    evaluation: HeldOut | None = Field(None, description="Held-out pairs to report the accuracy on.")

    @model_validator(mode="after")
    def _check_held_out_split(self) -> RewardStage:
        _check_held_out_split(self)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), _HELD_OUT_SPLIT_RULE]


def _check_held_out_split(stage: SFTStage | RewardStage) -> None:
    if stage.evaluation is not None and stage.evaluation.split is not None and stage.dataset.path is not None:
        raise ValueError("evaluation.split: a dataset file has no other split; use evaluation.fraction")


_HELD_OUT_SPLIT_RULE = Rule(
    "!has(self.evaluation) || !has(self.evaluation.split) || !has(self.dataset.path)",
    "evaluation.split: a dataset file has no other split; use evaluation.fraction")


class Generation(Checked):
    """How PPO samples responses."""

    max_new_tokens: int = Field(16, ge=1, description="Most tokens in a response.")
    min_new_tokens: int | None = Field(
        None, ge=1,
        description="When set, each batch's longest response length is drawn from [minNewTokens, maxNewTokens] "
                    "(TRL's LengthSampler); unset: maxNewTokens. Responses end at EOS either way.")
    temperature: float = Field(1, gt=0, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0: from all.")
    top_p: float = Field(1, gt=0, le=1, description="Sample from the smallest set of tokens with this much mass.")
    do_sample: bool = Field(True, description="Sample (true, as PPO needs) or decode greedily.")

    @model_validator(mode="after")
    def _check_range(self) -> Generation:
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"minNewTokens ({self.min_new_tokens}) exceeds maxNewTokens ({self.max_new_tokens})")
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        return [*super().cel_rules(), Rule(f"!has(self.minNewTokens) || self.minNewTokens <= "
                                           f"{cls.cel_value('max_new_tokens')}", "minNewTokens exceeds maxNewTokens")]


class Guardrails(Checked):
    """Conditions that end PPO early: the policy drifting too far from the reference, or the score stalling."""

    only_with = {"min_reward_improvement": ("window",), "window": ("min_reward_improvement",)}

    max_kl: float | None = Field(
        None, gt=0, description="End when the KL to the reference exceeds this for forSteps steps in a row.")
    for_steps: int = Field(1, ge=1, description="Consecutive steps over maxKl that end the stage.")
    min_reward_improvement: float | None = Field(
        None, description="End when the mean score of the last window steps is not at least this much above "
                          "that of the window steps before them.")
    window: int | None = Field(None, ge=1, description="Steps per window of minRewardImprovement.")
    action: Literal["stop", "fail"] = Field(
        "stop", description="stop: save the policy and succeed; fail: save a checkpoint and fail. Either way the "
                            "guardrail is the reason in result.json.")


class PPOEvaluation(Schema):
    """Scores of the policy's responses to held-out prompts, before and after PPO."""

    held_out_prompts: DatasetSource = Field(description="Prompts PPO does not train on (same query column).")
    judge: Literal["vader", "none"] = Field(
        "none", description="An independent judge besides the reward: vader (VADER sentiment compound score).")


# PPOConfig knobs the stage sets itself, and the stage field that does.
_OWNED_CONFIG_FIELDS = {"steps": "steps", "seed": "seed"}


class PPOStage(StageSettings):
    """PPO: the policy answers prompts, the reward scores the answers, PPO updates the policy (TRL v0.7's step)."""

    model_field = "policy"
    from_earlier = {"policy": "sft", "reward": "reward"}

    policy: ModelSource | None = Field(
        None, description="The policy's initial model (the reference is a frozen copy); unset: the sft stage's "
                          "model when the job runs one, else spec.model.")
    reward: RewardSource | None = Field(
        None, description="What scores responses; unset: the reward stage's model when the job runs one.")
    dataset: DatasetSource = Field(description="The prompts.")
    query: Queries = Field(default_factory=Queries, description="Where the prompts are and how long they are.")
    steps: int = Field(ge=1, description="PPO steps, each on config.batchSize prompts (the dataset repeats).")
    config: PPOConfig = Field(
        default_factory=PPOConfig, description="PPO's settings, as TRL's PPOConfig; steps and seed are the stage's.")
    generation: Generation = Field(default_factory=Generation, description="How responses are sampled.")
    peft: LoRA | None = Field(
        None, description="Train LoRA adapters; the reference is then the model with the adapters disabled.")
    num_shared_layers: int | None = Field(
        None, ge=0, description="Share the policy's first layers with the reference, frozen, to save memory "
                                "(create_reference_model); not with peft.")
    guardrails: Guardrails | None = Field(None, description="Conditions that end the stage early.")
    evaluation: PPOEvaluation | None = Field(None, description="Score held-out prompts before and after PPO.")

    @model_validator(mode="after")
    def _check_ppo(self) -> PPOStage:
        if self.num_shared_layers is not None and self.peft is not None:
            raise ValueError("numSharedLayers: not with peft (the reference is the model with adapters disabled)")
        if self.config.log_with is not None:
            raise ValueError("config.logWith: set the stage's reportTo instead")
        for knob, field in _OWNED_CONFIG_FIELDS.items():
            ours = getattr(self, field)
            if knob in self.config.model_fields_set and getattr(self.config, knob) != ours:
                raise ValueError(f"config.{_alias(PPOConfig, knob)} ({getattr(self.config, knob)}) differs from "
                                 f"{_alias(PPOStage, field)} ({ours}); set only {_alias(PPOStage, field)}")
            setattr(self.config, knob, ours)
        return self

    @classmethod
    def cel_rules(cls) -> list[Rule]:
        owned = [
            Rule(f"!has(self.config) || !has(self.config.{_alias(PPOConfig, knob)}) || "
                 f"self.config.{_alias(PPOConfig, knob)} == {cls.cel_value(field)}",
                 f"config.{_alias(PPOConfig, knob)} differs from {_alias(cls, field)}; set only {_alias(cls, field)}")
            for knob, field in _OWNED_CONFIG_FIELDS.items()
        ]
        return [
            *super().cel_rules(),
            *owned,
            Rule("!has(self.numSharedLayers) || !has(self.peft)", "numSharedLayers: not with peft"),
            Rule("!has(self.config) || !has(self.config.logWith)", "config.logWith: set the stage's reportTo instead"),
        ]


# --- the stage configs ----------------------------------------------------------------------------------------

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
                raise ValueError(f"{_alias(cls, name)} must be an absolute path")
        required = [cls.model_field, *cls.from_earlier] if issubclass(cls, StageSettings) else []
        for field in required:
            if getattr(self, field) is None:
                raise ValueError(f"{_alias(cls, field)}: not set; the plan resolves it")
        for path, source in iter_sources(self):
            if getattr(source, "from_stage", None) is not None:
                raise ValueError(f"{path}.fromStage: not resolved; the plan turns it into a path")
            if source.path is not None and not posixpath.isabs(source.path):
                raise ValueError(f"{path}.path: {source.path!r} is not an absolute path; the plan resolves it")
        return self

    def to_json(self) -> str:
        """The stage config as the trainer reads it (camelCase JSON)."""
        return self.model_dump_json(by_alias=True, indent=2)


class SFTStageConfig(SFTStage, StageAssignment):
    """The sft stage's config."""

    kind: Literal["sft"] = "sft"


class RewardStageConfig(RewardStage, StageAssignment):
    """The reward stage's config."""

    kind: Literal["reward"] = "reward"


class PPOStageConfig(PPOStage, StageAssignment):
    """The ppo stage's config."""

    kind: Literal["ppo"] = "ppo"


StageConfig = Annotated[SFTStageConfig | RewardStageConfig | PPOStageConfig, Field(discriminator="kind")]
"""Any stage's config; ``kind`` selects which."""

STAGE_CONFIGS: dict[str, type[StageAssignment]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls for cls in get_args(get_args(StageConfig)[0])
}
"""Stage kind -> its config model."""

_STAGE_CONFIG = TypeAdapter(StageConfig)


def parse_stage_config(text: str | bytes) -> SFTStageConfig | RewardStageConfig | PPOStageConfig:
    """A stage config from its JSON."""
    return _STAGE_CONFIG.validate_json(text)


def load_stage_config(path: str) -> SFTStageConfig | RewardStageConfig | PPOStageConfig:
    """A stage config from a JSON file (``/etc/rlhf/stage.json`` in a trainer pod)."""
    with open(path, "rb") as f:
        return parse_stage_config(f.read())


Source = ModelSource | DatasetSource


def iter_sources(model: BaseModel, path: str = "") -> Iterator[tuple[str, Source]]:
    """Every model and dataset source in ``model``, with its camelCase path (``reward``, ``evaluation.heldOutPrompts``)."""
    for name, field in type(model).model_fields.items():
        value, here = getattr(model, name), f"{path}.{field.alias or name}".lstrip(".")
        if isinstance(value, ModelSource | DatasetSource):
            yield here, value
        elif isinstance(value, BaseModel):
            yield from iter_sources(value, here)


def map_sources(model: BaseModel, fn: Callable[[str, Source], Source], path: str = "") -> BaseModel:
    """A copy of ``model`` with every source replaced by ``fn(path, source)``."""
    updates = {}
    for name, field in type(model).model_fields.items():
        value, here = getattr(model, name), f"{path}.{field.alias or name}".lstrip(".")
        if isinstance(value, ModelSource | DatasetSource):
            updates[name] = fn(here, value)
        elif isinstance(value, BaseModel):
            updates[name] = map_sources(value, fn, here)
    return model.model_copy(update=updates)
