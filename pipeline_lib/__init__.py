"""Protein language model data and pretraining pipeline: the library layer (no Prefect imports)."""

__version__ = "0.1.0"
