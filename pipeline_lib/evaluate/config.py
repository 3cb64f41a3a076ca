"""Config section `evaluate` (owned by the evaluate stage)."""
from __future__ import annotations

from pydantic import Field

from pipeline_lib.config import StrictModel

__all__ = ["EvaluateConfig"]


class EvaluateConfig(StrictModel):
    enabled: bool = Field(False, description="Run the evaluate stage.")
