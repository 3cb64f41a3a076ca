"""Config section `msa` (owned by the msa stage)."""
from __future__ import annotations

from pydantic import Field

from pipeline_lib.config import StrictModel

__all__ = ["MsaConfig"]


class MsaConfig(StrictModel):
    enabled: bool = Field(False, description="Run the msa stage.")
