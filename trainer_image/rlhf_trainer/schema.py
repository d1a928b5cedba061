"""Base class for every user-facing config model (torch-free).

Fields are snake_case in Python and camelCase in YAML/JSON, as Kubernetes resources are; both spellings are
accepted on input. Unknown fields are errors, so a misspelled knob is never silently ignored.
"""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Schema(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )
