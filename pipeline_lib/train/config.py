"""Config section `train` (owned by the train stage)."""
from __future__ import annotations

from pydantic import Field

from pipeline_lib.config import StrictModel

__all__ = ["TrainConfig"]


class TrainConfig(StrictModel):
    enabled: bool = Field(False, description="Run the train stage.")
