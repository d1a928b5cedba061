"""The RLHFJob CustomResourceDefinition, generated from ``rlhf_operator.api`` (``rlhf crd`` prints it).

pydantic's JSON schema becomes a *structural* OpenAPI v3 schema: references inlined, ``X | None`` turned into an
optional ``X`` (a null the user writes is pruned by the API server, as for any unset field), no other unions
except int-or-string, and no defaults: the operator applies them (pydantic), so a stored RLHFJob holds what its
author wrote and ``has()`` in a CEL rule means "set by the user". Defaults are named in the descriptions instead.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel

from rlhf_operator.api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    RLHFJob,
    RLHFJobSpec,
    RLHFJobStatus,
)

HEADER = "# Generated from rlhf_operator/api.py by `rlhf crd` (`make crd`). Do not edit.\n"

# `kubectl get rlhfjobs`; the priority 1 columns only with `-o wide`. Step, reward and KL are the running stage's,
# whichever its kind (status.progress).
PRINTER_COLUMNS = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "The stage running now."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Where the job is."},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Steps of the stage done."},
    {"name": "Reward", "type": "number", "jsonPath": ".status.progress.reward",
     "description": "The stage's latest mean reward (PPO, GRPO)."},
    {"name": "KL", "type": "number", "jsonPath": ".status.progress.kl", "description": "KL from the reference."},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percentage", "priority": 1,
     "description": "Percent of the stage's steps done."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "priority": 1,
     "description": "The stage's time left at its recent pace."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Rules on the whole object (they need the status, or the old object).
ROOT_RULES = [
    {
        "rule": "!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec.stages == oldSelf.spec.stages",
        "message": "spec.stages cannot change once the job has started; create a new RLHFJob",
    },
]


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model's camelCase JSON."""
    schema = model.model_json_schema(by_alias=True)
    return _structural(schema, schema.pop("$defs", {}))


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:  # the field's own keys (description, ...) win over the referenced model's
        return _structural({**defs[node.pop("$ref").removeprefix("#/$defs/")], **node}, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [option for option in node.pop("anyOf") if option != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"not expressible in a structural schema: a union of {options}")
        return _structural({**options[0], **node}, defs)

    node.pop("title", None)
    if "default" in node:
        default = node.pop("default")
        if default is not None and not isinstance(default, dict):
            shown = default if isinstance(default, str) else json.dumps(default)
            node["description"] = f"{node.get('description', '').rstrip('.')}. Default: {shown}.".lstrip(". ")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if not isinstance(node.get(exclusive, False), bool):  # JSON Schema 2020's number -> OpenAPI 3.0's flag
            node[bound], node[exclusive] = node[exclusive], True
    if "properties" in node:
        node["properties"] = {name: _structural(value, defs) for name, value in node["properties"].items()}
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    extra = node.pop("additionalProperties", False)
    if extra is True or extra == {}:
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif extra:
        node["additionalProperties"] = _structural(extra, defs)
    return {key: node[key] for key in sorted(node, key=_KEY_ORDER.get)}


# Keys in the order people read them: what it is, what it means, then constraints, then the parts.
_KEY_ORDER = {key: i for i, key in enumerate([
    "type", "description", "anyOf", "x-kubernetes-int-or-string", "enum", "format", "pattern", "minimum",
    "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "required",
    "properties", "items", "additionalProperties", "x-kubernetes-validations",
])}


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of RLHFJob."""
    schema = {
        "type": "object",
        "description": RLHFJob.__doc__,
        "properties": {
            "apiVersion": {"type": "string", "description": "The resource's API version."},
            "kind": {"type": "string", "description": "The resource's kind."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(RLHFJobSpec),
            "status": openapi_schema(RLHFJobStatus),
        },
        "required": ["spec"],
        "x-kubernetes-validations": ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # indent list items under their key, as yamllint expects


def crd_yaml() -> str:
    """The CRD as the YAML file kept in manifests/crd/ and the chart's crds/."""
    return HEADER + "---\n" + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=110)
