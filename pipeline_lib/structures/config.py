"""Config section `structures` (owned by the structures stage)."""
from __future__ import annotations

from pydantic import Field

from pipeline_lib.config import StrictModel

__all__ = ["StructuresConfig"]


class StructuresConfig(StrictModel):
    enabled: bool = Field(False, description="Run the structures stage.")
