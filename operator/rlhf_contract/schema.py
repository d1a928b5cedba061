"""Base classes of every model in the contract: camelCase on the wire, unknown fields refused, and cross-field
rules checked in Python and declared as CEL for the CRD (torch-free).

Fields are snake_case in Python and camelCase in YAML/JSON, as Kubernetes resources are; both spellings are
accepted on input. Unknown fields are errors, so a misspelled knob is never silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

INT32_MAX = 2**31 - 1
"""Kubernetes' int32 fields (a Job's backoffLimit, ...) refuse anything larger. It bounds the int64 fields (seconds)
too: the API server keeps a CRD's bounds as floats, and 2**63 - 1 comes back as -2**63, refusing every value."""


class Schema(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )


class Rule(NamedTuple):
    """A Kubernetes CEL validation rule (an entry of ``x-kubernetes-validations``)."""

    rule: str
    message: str


def alias(cls: type[BaseModel], field: str) -> str:
    """A field's camelCase name."""
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
        options = ["+".join(alias(cls, f) for f in group) for group in cls.choices]
        return f"set exactly one of {', '.join(options)}"

    @classmethod
    def _only_with_message(cls, field: str) -> str:
        partners = [alias(cls, f) for f in cls.only_with[field]]
        return f"{alias(cls, field)} needs {partners[0] if len(partners) == 1 else 'one of ' + ', '.join(partners)}"

    @model_validator(mode="after")
    def _check_choices(self) -> Checked:
        cls = type(self)
        given = {name for name in cls.model_fields if getattr(self, name) is not None}
        if cls.choices:
            chosen = [group for group in cls.choices if given.issuperset(group)]
            in_groups = given.intersection(f for group in cls.choices for f in group)
            if len(chosen) != 1 or in_groups != set(chosen[0]):
                got = " and ".join(alias(cls, f) for f in cls.model_fields if f in in_groups) or "none"
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
            given = ", ".join(f"has(self.{alias(cls, f)})" for (f,) in cls.choices)
            rules.append(Rule(f"[{given}].exists_one(x, x)", cls._choice_message()))
        elif cls.choices:
            every = [f for group in cls.choices for f in group]
            options = [
                " && ".join(("" if f in group else "!") + f"has(self.{alias(cls, f)})" for f in every)
                for group in cls.choices
            ]
            rules.append(Rule(" || ".join(f"({option})" for option in options), cls._choice_message()))
        for field, partners in cls.only_with.items():
            needs = " || ".join(f"has(self.{alias(cls, f)})" for f in partners)
            rules.append(Rule(f"!has(self.{alias(cls, field)}) || {needs}", cls._only_with_message(field)))
        return rules

    @classmethod
    def cel_value(cls, field: str) -> str:
        """A CEL expression for a field's value, falling back to its default (the CRD declares no defaults)."""
        name, info = alias(cls, field), cls.model_fields[field]
        if info.is_required():
            return f"self.{name}"
        return f"(has(self.{name}) ? self.{name} : {json.dumps(info.default)})"
