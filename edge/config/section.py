"""What every configuration section shares: unknown keys refused, no NaN or infinity, and no
boolean where a number goes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def refuse_booleans(model: type[BaseModel], data: Any) -> Any:
    """YAML reads ``on``, ``off``, ``yes`` and ``no`` as booleans, and pydantic would take
    ``qos: off`` as 0 (no queueing) or ``port: on`` as 1 without a word."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(
                f"{name} takes a number, not {str(value).lower()} "
                "(YAML reads yes, no, on and off as booleans)"
            )
    return data


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, data: Any) -> Any:
        return refuse_booleans(cls, data)
