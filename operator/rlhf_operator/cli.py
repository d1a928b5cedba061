"""The ``rlhf`` command (never imports torch).

    rlhf validate FILE    check an RLHFJob file and print its plan
    rlhf crd              print the RLHFJob CustomResourceDefinition
    rlhf operator         run the operator (docs/operator-runtime.md)

Each subcommand is an ``add_<name>(subparsers)`` function in ``SUBCOMMANDS``; ``run`` (rlhf_operator.local) and
``operator`` (rlhf_operator.handlers) join the same way and read files with ``load_job`` / ``load_plan``.
Problems with the user's input raise ``UserError``: ``main`` prints its one message and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from rlhf_contract.sources import DatasetSource, ModelSource, Source, iter_sources
from rlhf_operator.api import KubernetesStage, RLHFJob
from rlhf_operator.crd import crd_yaml
from rlhf_operator.plan import Plan, PlanError, PlannedStage, make_plan
from rlhf_operator.settings import LOG_LEVELS, LeaderElection, OperatorSettings, SettingsError

WORKSPACES = "rlhf-workspace"
"""Where ``rlhf run`` keeps jobs' workspaces by default: ``./rlhf-workspace/<job name>``."""


class UserError(Exception):
    """Bad input, with a message that says what and where; ``rlhf`` exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --- reading files --------------------------------------------------------------------------------------------

def load_job(path: str) -> tuple[RLHFJob, yaml.Node]:
    """Read and validate an RLHFJob file; also its YAML node tree, to point at lines."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror}") from e
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise UserError(f"{where}: invalid YAML: {e.problem or e.context}") from e
    if len(documents) != 1:
        raise UserError(f"{path}: expected one RLHFJob, found {len(documents)} YAML documents")
    document, root = documents[0], nodes[0]
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected an RLHFJob (a mapping with apiVersion, kind, metadata and spec)")
    try:
        return RLHFJob.model_validate(document, by_alias=True, by_name=False), root
    except ValidationError as e:
        raise UserError("\n".join(dict.fromkeys(
            f"{_where(path, root, error['loc'])}: {_explain(error)}" for error in e.errors()))) from e


def load_plan(path: str, workspace: str | None = None) -> tuple[RLHFJob, Plan]:
    """Read, validate and plan an RLHFJob file; the workspace defaults to ``./rlhf-workspace/<job name>``."""
    job, root = load_job(path)
    workspace = os.path.abspath(workspace or os.path.join(WORKSPACES, job.metadata.name))
    try:
        return job, make_plan(job.spec, job.metadata.name, workspace)
    except PlanError as e:
        raise UserError(f"{_where(path, root, tuple(e.path.split('.')))}: {e.message}") from e


def _where(path: str, root: yaml.Node, loc: tuple[str | int, ...]) -> str:
    """``FILE:LINE:COLUMN: a.b.c`` for the deepest part of ``loc`` present in the file."""
    node, mark = root, root.start_mark
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            mark = node.start_mark
        else:
            break
    dotted = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in loc).lstrip(".")
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {dotted}"


def _explain(error: dict[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        return f"unknown field{_suggest(str(loc[-1]), _fields_at(loc[:-1]))}"
    if kind == "missing":
        return "required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind != "value_error" and not isinstance(error.get("input"), dict | list):
        message += f" (got {error['input']!r})"
    return message


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """The camelCase fields of the model at ``loc`` in an RLHFJob."""
    model: type[BaseModel] | None = RLHFJob
    for key in loc:
        if isinstance(key, int):
            continue
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        model = _model_in(fields[key].annotation) if key in fields else None
        if model is None:
            return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _model_in(arg)) is not None), None)


def _suggest(name: str, known: list[str]) -> str:
    if to_camel(name) in known:
        return f"; did you mean '{to_camel(name)}'? (fields are camelCase)"
    by_lower = {field.lower(): field for field in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.7)
    if close:
        return f"; did you mean '{by_lower[close[0]]}'?"
    return f" (known fields: {', '.join(known)})" if known else ""


# --- rlhf validate --------------------------------------------------------------------------------------------

def add_validate(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("validate", help="check an RLHFJob file and print its plan")
    command.add_argument("file", help="the RLHFJob YAML file")
    command.add_argument("--workspace", help=f"workspace to plan for (default: ./{WORKSPACES}/<job name>)")
    command.set_defaults(handler=validate)


def validate(args: argparse.Namespace) -> int:
    job, plan = load_plan(args.file, args.workspace)
    print(describe_plan(job, plan))
    return 0


def describe_plan(job: RLHFJob, plan: Plan) -> str:
    """The plan for people: each stage's inputs, output, settings that differ from defaults, how it runs."""
    names = " -> ".join(stage.name for stage in plan.stages)
    lines = [f"{plan.job_name}: {len(plan.stages)} stage(s), {names}", f"workspace: {plan.workspace}"]
    for number, stage in enumerate(plan.stages, 1):
        rows = [(path, _describe_source(source)) for path, source in iter_sources(stage.config)]
        rows.append(("output", stage.config.output_dir))
        settings = _settings(getattr(job.spec.stages, stage.name))
        if settings:
            rows.append(("settings", " ".join(f"{key}={value}" for key, value in settings)))
        rows.append(("runs as", _describe_run(stage)))
        width = max(len(label) for label, _ in rows) + 2
        lines.append(f"[{number}/{len(plan.stages)}] {stage.name} (Job {stage.object_name})")
        lines += [f"    {label + ':':<{width}}{text}" for label, text in rows]
    return "\n".join(lines)


def _describe_source(source: Source) -> str:
    if source.name is not None:
        where = f"hub {source.name}" + (f"@{source.revision}" if source.revision else "")
    elif source.path is not None:
        where = source.path
    elif getattr(source, "callable", None) is not None:
        where = f"callable {source.callable}"
    elif getattr(source, "verifier", None) is not None:
        where = f"verifier {source.verifier}"
    else:
        where = f"builtin {source.builtin}"
    if isinstance(source, DatasetSource):
        details = {"config": source.config, "dir": source.data_dir,
                   "split": source.split, "format": source.format}
    else:
        details = {"dtype": source.dtype, "quantization": source.quantization,
                   "label": getattr(source, "label", None), "weight": getattr(source, "weight", 1.0) != 1.0 and
                   source.weight}
    shown = ", ".join(f"{key} {value}" for key, value in details.items() if value)
    return f"{where} ({shown})" if shown else where


def _settings(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """Settings that differ from their defaults, as dotted camelCase paths (sources and how it runs aside)."""
    found = []
    for name, info in type(model).model_fields.items():
        if not prefix and (name in KubernetesStage.model_fields or name == "distributed"):
            continue
        value, key = getattr(model, name), prefix + (info.alias or name)
        if isinstance(value, ModelSource | DatasetSource) or (
                isinstance(value, list) and value and isinstance(value[0], ModelSource)):
            continue  # listed as the stage's inputs
        if isinstance(value, BaseModel):
            found += _settings(value, key + ".")
        elif value != info.get_default(call_default_factory=True):
            found.append((key, value if isinstance(value, str) else json.dumps(value)))
    return found


def _describe_run(stage: PlannedStage) -> str:
    workers, distributed = stage.kubernetes.workers, stage.config.distributed
    how = f"{workers} worker(s) x {distributed.num_processes} process(es), {distributed.strategy}"
    if distributed.mixed_precision != "no":
        how += f", {distributed.mixed_precision}"
    if stage.kubernetes.resources and stage.kubernetes.resources.limits:
        how += ", limits " + " ".join(f"{k}={v}" for k, v in stage.kubernetes.resources.limits.items())
    return how


# --- rlhf crd -------------------------------------------------------------------------------------------------

def add_crd(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("crd", help="print the RLHFJob CustomResourceDefinition (YAML)")
    command.set_defaults(handler=crd)


def crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0


# --- rlhf operator --------------------------------------------------------------------------------------------

def add_operator(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser(
        "operator", help="run the operator (several replicas with --leader-elect: one acts, the others stand by)",
        description="Run the RLHFJob operator. Every flag also reads an RLHF_* environment variable; the flag "
                    "wins. Without --leader-elect run exactly one replica.")
    command.add_argument("--namespace", action="append", dest="namespaces", metavar="NS",
                         help="watch only this namespace (repeatable; env RLHF_WATCH_NAMESPACES, comma-separated); "
                              "default: all namespaces")
    command.add_argument("--port", type=int, help="HTTP port for progress pushes, metrics and probes "
                                                  "(env RLHF_PORT; default 8080)")
    command.add_argument("--trainer-image", help="image of stages whose RLHFJob sets no spec.image "
                                                 "(env RLHF_TRAINER_IMAGE)")
    command.add_argument("--log-level", choices=LOG_LEVELS, help="env RLHF_LOG_LEVEL; default info")
    election = command.add_argument_group("leader election", "a coordination.k8s.io/v1 Lease; times in seconds")
    election.add_argument("--leader-elect", action="store_true", default=None,
                          help="act only while holding the Lease (env RLHF_LEADER_ELECT=true)")
    defaults = {f.name: f.default for f in dataclasses.fields(LeaderElection)}
    for flag, default in (("lease-duration", defaults["lease_duration"]),
                          ("renew-deadline", defaults["renew_deadline"]), ("retry-period", defaults["retry_period"]),
                          ("resource-name", defaults["name"]), ("resource-namespace", "the operator's own namespace")):
        election.add_argument(f"--leader-elect-{flag}", metavar="S" if isinstance(default, float) else "NAME",
                              help=f"env RLHF_LEADER_ELECT_{flag.upper().replace('-', '_')}; default {default}")
    command.set_defaults(handler=operator)


def operator(args: argparse.Namespace) -> int:
    try:
        settings = OperatorSettings.from_env(
            namespaces=tuple(args.namespaces or ()), port=args.port, trainer_image=args.trainer_image,
            log_level=args.log_level, leader_elect=args.leader_elect,
            lease_duration=args.leader_elect_lease_duration, renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period, lease_name=args.leader_elect_resource_name,
            lease_namespace=args.leader_elect_resource_namespace)
    except SettingsError as e:
        raise UserError(str(e)) from e
    from rlhf_operator.handlers import run  # kopf and the Kubernetes client: only for this command

    run(settings)
    return 0


# --- the command ----------------------------------------------------------------------------------------------

def add_run(subparsers: argparse._SubParsersAction) -> None:
    from rlhf_operator.local import add_run as add

    add(subparsers)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_validate, add_run, add_crd, add_operator]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF pipelines (SFT, reward model, PPO) as RLHFJobs.")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as e:
        print(f"rlhf: {e}".replace("\n", "\nrlhf: "), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    # Through the module itself, not this __main__ copy: its UserError is the one the other modules raise.
    from rlhf_operator.cli import main as module_main

    sys.exit(module_main())
