"""Adapters for external binaries: one small class per tool (mmseqs, foldseek)."""
from pipeline_lib.tools.base import BinaryTool
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["BinaryTool", "MMseqs"]
