"""What every config model shares: unknown keys are errors, and the error a person reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message says which key and why."""


class Strict(BaseModel):
    """Unknown keys are errors, and so is a float that is not finite (``.inf``, ``.nan``) in any field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Compact(Strict):
    """Dumped without its unset (None) entries: YAML and MLflow params show what was given."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}
