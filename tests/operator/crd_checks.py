"""What the API server checks when an RLHFJob is applied, played without one: the CRD's OpenAPI schema (jsonschema,
Draft 4 bounds as OpenAPI 3.0 has them), strict decoding (unknown fields), and the CEL rules (cel-python, plus the
Kubernetes quantity library the rules use: ``quantity()``, ``sign()``, ``isInteger()``, ``compareTo()``)."""

from __future__ import annotations

from decimal import Decimal
from functools import cache

import celpy
import jsonschema
from celpy import celtypes

from rlhf_operator.api import quantity_value
from rlhf_operator.crd import crd

SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_errors(obj, schema=SCHEMA) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft4Validator(schema).iter_errors(obj)]


def unknown_fields(schema, obj, path="") -> list[str]:
    """Fields the schema does not declare: the API server's strict decoding rejects them (else prunes them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
        return []
    found = []
    if isinstance(obj, dict):
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, value in obj.items():
            if properties is not None and key in properties:
                found += unknown_fields(properties[key], value, f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(extra, value, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            found += unknown_fields(schema["items"], item, f"{path}[{i}]")
    return found


class Quantity:
    """A value of Kubernetes' CEL quantity library."""

    def __init__(self, text):
        self.value = quantity_value(str(text))


def _compare(a: Quantity, b: Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


QUANTITY_LIBRARY = {
    "quantity": Quantity,
    "isQuantity": lambda text: celtypes.BoolType(_parses(text)),
    "sign": lambda q: celtypes.IntType((q.value > 0) - (q.value < 0)),
    "isInteger": lambda q: celtypes.BoolType(q.value == q.value.to_integral_value()),
    "asInteger": lambda q: celtypes.IntType(int(q.value)),
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(a.value > b.value),
    "isLessThan": lambda a, b: celtypes.BoolType(a.value < b.value),
}


def _parses(text) -> bool:
    try:
        return isinstance(quantity_value(str(text)), Decimal)
    except ValueError:
        return False


@cache
def cel_program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=QUANTITY_LIBRARY)


def cel_violations(schema, obj, old=None, path="") -> list[str]:
    """Messages of the x-kubernetes-validations rules ``obj`` breaks (transition rules only with ``old``), in
    objects, list items and map values."""
    found = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue
        activation = {"self": celpy.json_to_cel(obj)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = cel_program(rule["rule"]).evaluate(activation)
        assert isinstance(result, celtypes.BoolType), f"rule {rule['rule']!r} at {path} gave {result!r}"
        if not result:
            found.append(f"{path}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                previous = old.get(key) if isinstance(old, dict) else None
                found += cel_violations(sub, obj[key], previous, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, value in obj.items():
                found += cel_violations(schema["additionalProperties"], value, None, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            found += cel_violations(schema["items"], item, None, f"{path}[{index}]")
    return found
