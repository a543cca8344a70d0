"""What every configuration section shares: unknown keys refused, no NaN or infinity, and no
boolean where a number goes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def refuse_boolean(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """YAML reads ``on``, ``off``, ``yes`` and ``no`` as booleans, and pydantic would take
    ``qos: off`` as 0 (no queueing) or ``port: on`` as 1 without a word. A field validator, so
    the error names the key (``workers: ...``), not the section."""
    field = model.model_fields.get(info.field_name or "")
    if isinstance(value, bool) and field is not None and field.annotation in (int, float):
        raise ValueError("takes a number (YAML reads yes, no, on and off as booleans)")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_boolean(cls, value, info)
