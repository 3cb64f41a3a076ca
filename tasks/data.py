"""Prefect tasks of the sequence data path: source -> ingest -> cluster -> split -> shards (partitions, manifest)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import Config
from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import duckdb_connect, sql_path
from pipeline_lib.lineage import ArtifactRecord, artifact_for, redact_secrets, to_json
from pipeline_lib.sequences.audit import audit_metrics, plan_audit, search_options, summarize_audit
from pipeline_lib.sequences.cluster import assemble_clusters
from pipeline_lib.sequences.cluster import cluster_level as cluster_level_members
from pipeline_lib.sequences.cluster_uniref import uniref_level
from pipeline_lib.sequences.cluster_update import cluster_level_incremental, find_previous_level, level_params
from pipeline_lib.sequences.config import ClusterLevel
from pipeline_lib.sequences.ingest import ingest_fasta
from pipeline_lib.sequences.search import (
    build_target_db,
    chunk_count,
    chunk_rows,
    fasta_target_db,
    merged_lines,
    search_chunk,
)
from pipeline_lib.sequences.shards import assemble_shards, partition_ranges, write_shard_partition
from pipeline_lib.sequences.split import (
    assign_splits,
    decontam_masks,
    decontam_options,
    decontam_rows,
    decontaminate,
    write_decontam_targets,
)
from pipeline_lib.stage_cache import relative_to_root
from pipeline_lib.tools.mmseqs import MMseqs
from tasks.artifacts import progress_artifacts
from tasks.common import Produced, RunContext, StageOutput, lineage_task, logger, retry_transient, run_stage

__all__ = ["check_release", "source_urls", "source_url", "source", "ingest", "cluster", "split", "decontam_chunks",
           "decontam_target", "decontam_chunk", "audit_chunks",
           "audit_target", "audit_chunk", "audit", "shard_partitions", "shards_partition", "shards", "ReleaseCheck"]


@dataclass
class ReleaseCheck:
    changed: bool
    current: dict[str, Any]
    previous: dict[str, Any] | None
    previous_run: str | None


@lineage_task(name="check_release", retries=3, retry_delay_seconds=[5, 30, 120], retry_condition_fn=retry_transient)
def check_release(ctx: RunContext, cfg: Config) -> ReleaseCheck:
    """Compare the upstream source's identity (release, checksums) with the last completed source step."""
    from pipeline_lib.sources.release import identity_changed, source_identity

    # compared with the identity lineage stored, which has its URL credentials redacted
    current = redact_secrets(source_identity(cfg.source, Path(ctx.workdir) / "downloads"))
    rows = ctx.store.query(
        "SELECT s.stats, s.run_id FROM steps s JOIN runs r USING (run_id) WHERE s.stage IN ('source', 'fetch') AND "
        "s.status='completed' AND r.status='completed' AND s.params=? ORDER BY s.started_at DESC LIMIT 1",
        [to_json(cfg.source.model_dump(mode="json"))])  # as lineage stores it: secrets redacted
    previous = json.loads(rows[0]["stats"]).get("identity") if rows else None
    check = ReleaseCheck(identity_changed(previous, current), current, previous, rows[0]["run_id"] if rows else None)
    logger().info("upstream %s: %s", current.get("release") or cfg.source.kind,
                  "changed since the last run" if check.changed else f"unchanged since run {check.previous_run}")
    return check


def _resolve_sources(cfg: Config, ctx: RunContext, downloads: list[dict[str, Any]] | None = None
                     ) -> tuple[list[Produced], dict[str, Any]]:
    """Resolve the configured source to local FASTA files (downloading where needed)."""
    src = cfg.source
    downloads_dir = Path(ctx.workdir) / "downloads"
    if src.kind == "embedded":
        from pipeline_lib.sources.embedded import embedded_corpus, write_structure_chains_fasta

        files = embedded_corpus(src.corpus)
        produced = [Produced(f"source_{i}", "source_fasta", path=str(f.path),
                             meta={"package": f.package, "version": f.package_version, "about": f.description})
                    for i, f in enumerate(files)]
        chains_fasta = downloads_dir / "embedded" / f"{src.corpus}_structure_chains.fasta"
        chains = write_structure_chains_fasta(chains_fasta, src.corpus)
        produced.append(Produced(f"source_{len(files)}", "source_fasta", path=str(chains),
                                 meta={"about": "chain sequences of the embedded demo structures (pyjess)"}))
        return produced, {"source": "embedded", "release": f"embedded-{src.corpus}",
                          "packages": {f.package: f.package_version for f in files}}
    if src.kind == "fasta":
        from pipeline_lib.sources.fasta_files import resolve_fasta_inputs

        # URLs the source_url tasks of this run fetched or revalidated are current: not checked a second time
        paths = resolve_fasta_inputs(src.paths, downloads_dir / "urls", allowed_hosts=src.allowed_hosts,
                                     revalidate=downloads is None, **src.download_kwargs())
        info: dict[str, Any] = {"source": "fasta", "release": None}
        if downloads:  # which URL files were fetched this run, and why a copy that was here was not kept
            info["downloads"] = downloads
        return [Produced(f"source_{i}", "source_fasta", path=str(p)) for i, p in enumerate(paths)], info
    from pipeline_lib.sources.uniref import download_release_files, download_uniref

    result, release = download_uniref(src, downloads_dir)
    meta = {"release": release.release, "md5": release.md5, "url": result.url, "database": src.database}
    produced = [Produced("source_0", "source_fasta", path=str(result.path), meta=meta)]
    extra = download_release_files(src, release.release, downloads_dir)  # same release, or refused
    produced += [Produced(f"release_{i}", "release_file", path=str(r.path),
                          meta={"file": spec, "release": release.release, "url": r.url})
                 for i, (spec, r) in enumerate(extra.items())]
    return produced, {"source": "uniref", "release": release.release, "database": src.database, "md5": release.md5,
                      **({"files": list(extra)} if extra else {})}


def source_urls(cfg: Config) -> list[str]:
    """The http(s) files of a ``fasta`` source, each once: what :func:`source_url` can download side by side."""
    if cfg.source.kind != "fasta":
        return []
    return list(dict.fromkeys(p for p in cfg.source.paths if p.startswith(("http://", "https://"))))


@lineage_task(name="source_url", retries=3, retry_delay_seconds=[5, 30, 120], retry_condition_fn=retry_transient)
def source_url(ctx: RunContext, url: str, allowed_hosts: list[str] | None = None,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One source file to where the source stage looks for it, so several download at once on the task runner;
    the source stage then finds them in place. A copy already there is kept while the server's validators
    (size, ETag, Last-Modified) match the ones recorded with it. ``allowed_hosts``: the source's, checked
    before the request and every redirect; ``settings``: its retries, timeouts, deadline, ``unvalidated``.
    Returns what the source stage records: URL (redacted), path, bytes, whether it was fetched and why."""
    from pipeline_lib.sources.download import download
    from pipeline_lib.sources.fasta_files import url_download_path

    with progress_artifacts():  # bytes, rate and ETA as a progress bar "download-<file>" in the Prefect UI
        r = download(url, url_download_path(url, Path(ctx.workdir) / "downloads" / "urls"),
                     allowed_hosts=allowed_hosts, revalidate=True, **(settings or {}))
    return {"url": r.url, "path": str(r.path), "bytes": r.bytes, "fetched": not r.skipped, "refreshed": r.refreshed}


@lineage_task(name="source", retries=3, retry_delay_seconds=[5, 30, 120], retry_condition_fn=retry_transient)
def source(ctx: RunContext, cfg: Config, release: ReleaseCheck | None = None,
           downloads: list[dict[str, Any]] | None = None) -> StageOutput:
    """Stage 1: download / locate the source FASTA files (verified against published checksums, or against the
    server's validators). ``downloads``: what this run's :func:`source_url` tasks did, recorded in the stats."""
    def compute(tmp: Path):
        produced, info = _resolve_sources(cfg, ctx, downloads)
        if release is not None:
            info["identity"] = release.current
        return produced, info, {}

    # Fetching is never served from cache: it is cheap to re-check and must notice a new release.
    return run_stage(ctx, "source", cfg.source.model_dump(mode="json"), [], compute, cache=False)


@lineage_task(name="ingest")
def ingest(ctx: RunContext, cfg: Config, source: StageOutput) -> StageOutput:
    """Stage 2: FASTA -> sequences / duplicates / quarantine Parquet."""
    inputs = [a for a in source.outputs.values() if a.kind == "source_fasta"]  # not a release's other files

    def compute(tmp: Path):
        stats = ingest_fasta([Path(a.path) for a in inputs], tmp, cfg.ingest)
        if stats.records_in == 0:  # a truncated download or a wrong path far more often than intended
            raise DataValidationError("no FASTA records: the input is empty or blank",
                                      path=", ".join(a.path for a in inputs))
        if stats.kept == 0:  # else the cluster stage fails with "no sequences to cluster", naming no input
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(stats.quarantine_reasons.items()))
            raise DataValidationError(f"no record kept: {stats.records_in} records, {stats.duplicates} duplicates, "
                                      f"quarantined by reason: {reasons or 'none'}",
                                      path=", ".join(a.path for a in inputs))
        produced = [Produced("sequences.parquet", "sequences", stats.kept),
                    Produced("duplicates.parquet", "duplicates", stats.duplicates),
                    Produced("quarantine.parquet", "quarantine", stats.quarantined)]
        return produced, _asdict(stats), {}

    return run_stage(ctx, "ingest", cfg.ingest.model_dump(mode="json"), inputs, compute)


@lineage_task(name="cluster_level")
def cluster_level(ctx: RunContext, cfg: Config, ingested: StageOutput, index: int,
                  previous: StageOutput | None = None, fetched: StageOutput | None = None) -> StageOutput:
    """Stage 3a: one MMseqs2 level, cached on its own: its key holds this level's parameters and the previous
    level's result, so changing a coarser level re-runs that level and the ones after it only."""
    level = cfg.cluster.levels[index]
    seqs = ingested.outputs["sequences.parquet"]
    if level.method == "uniref":
        return _uniref_level(ctx, level, seqs, previous, fetched)
    limit = cfg.cluster.limit_of(level)
    mm = MMseqs(binary=cfg.cluster.binary, threads=cfg.cluster.threads, split_memory_limit=limit,
                mpi_runner=cfg.cluster.mpi_runner)
    # threads, memory limit and MPI change how it runs, not the clusters: keep them out of the cache key
    params = {"level": level_params(level), "binary": cfg.cluster.binary, "mmseqs_version": mm.version()}
    if cfg.cluster.incremental:  # (only then: turning it on re-keys, turning it off finds the plain result again)
        params["incremental"] = True
    inputs = [seqs, *([previous.outputs["members.parquet"]] if previous else [])]

    def compute(tmp: Path):
        above = Path(previous.outputs["members.parquet"].path) if previous else None
        if cfg.cluster.incremental:
            old = find_previous_level(Path(ctx.workdir) / "stages" / "cluster_level", level)
            if old is None:
                logger().info("cluster %s: no earlier incremental clustering of this level in %s; from scratch",
                              level.name, ctx.workdir)
            res = cluster_level_incremental(Path(seqs.path), level, tmp, tmp / "_mmseqs", mm, previous=above,
                                            old_level=old[0] if old else None)
        else:
            res = cluster_level_members(Path(seqs.path), level, tmp, tmp / "_mmseqs", mm, previous=above)
        _rm(tmp / "_mmseqs")
        produced = [Produced("members.parquet", "cluster_members", res.members, meta={"level": level.name})]
        stats = {"level": level.name, "sequences": res.members, "clusters": res.clusters, "commands": [res.command],
                 "memory_limit": limit, "mpi_runner": cfg.cluster.mpi_runner}
        if res.refresh and old:  # the clustering it was updated from: its stage directory and cache key
            stats["refresh"] = res.refresh | {"previous": relative_to_root(old[0], Path(ctx.workdir)),
                                              "previous_cache_key": old[1]["cache_key"]}
        return produced, stats, {"mmseqs": res.mmseqs_version}

    return run_stage(ctx, "cluster_level", params, inputs, compute)


def _membership_file(level: ClusterLevel, fetched: StageOutput | None) -> str:
    """The level's membership path; ``release:<database>/<name>`` is that file of the source's release."""
    assert level.membership is not None
    if not level.membership.startswith("release:"):
        return level.membership
    spec = level.membership.removeprefix("release:")
    found = [a.path for a in (fetched.outputs.values() if fetched else []) if a.meta.get("file") == spec]
    if not found:
        raise DataValidationError(f"cluster level {level.name}: the source stage fetched no {spec} "
                                  "(source.files of a uniref source)")
    return found[0]


def _uniref_level(ctx: RunContext, level: ClusterLevel, seqs: ArtifactRecord, previous: StageOutput | None,
                  fetched: StageOutput | None) -> StageOutput:
    """A level from UniProt's membership file (keyed by its content, like any input). ``fetched``: the source
    stage's output (a name other than ``source``, which the stage-code hash would take for the source task)."""
    level = level.model_copy(update={"membership": _membership_file(level, fetched)})
    assert level.membership is not None
    membership = artifact_for(level.membership, "uniref_membership")
    params = {"level": level.model_dump(mode="json", exclude={"membership", "memory_limit"})}
    inputs = [seqs, membership, *([previous.outputs["members.parquet"]] if previous else [])]

    def compute(tmp: Path):
        above = Path(previous.outputs["members.parquet"].path) if previous else None
        res = uniref_level(Path(seqs.path), level, tmp, tmp / "_work", previous=above)
        _rm(tmp / "_work")
        produced = [Produced("members.parquet", "cluster_members", res.members, meta={"level": level.name}),
                    Produced("missing.parquet", "cluster_missing", res.missing, meta={"level": level.name})]
        stats = {"level": level.name, "sequences": res.members, "clusters": res.clusters,
                 "not_in_membership": res.missing, "membership_not_in_sequences": res.not_in_fasta,
                 "membership": res.membership, "on_missing": level.on_missing}
        return produced, stats, {}

    return run_stage(ctx, "cluster_level", params, inputs, compute)


def _level_quarantine(cfg: Config, levels: list[StageOutput]) -> list[dict[str, Any]]:
    """Rows of uniref levels with ``on_missing: quarantine`` that the membership does not list."""
    rows: list[dict[str, Any]] = []
    for level, out in zip(cfg.cluster.levels, levels, strict=True):
        if level.method == "uniref" and level.on_missing == "quarantine" and "missing.parquet" in out.outputs:
            for r in pq.read_table(out.path("missing.parquet"), columns=["id"]).to_pylist():
                rows.append({"stage": "cluster", "source_file": level.membership, "source_record": None,
                             "id": r["id"], "reason": "not_in_membership",
                             "detail": f"cluster level {level.name}: not listed in {level.membership}", "raw": None})
    return rows


@lineage_task(name="cluster")
def cluster(ctx: RunContext, cfg: Config, ingested: StageOutput, levels: list[StageOutput]) -> StageOutput:
    """Stage 3b: the levels composed into each sequence's representative at every level."""
    seqs = ingested.outputs["sequences.parquet"]
    names = [lv.name for lv in cfg.cluster.levels]
    members = [out.outputs["members.parquet"] for out in levels]

    def compute(tmp: Path):
        by_level = {n: Path(m.path) for n, m in zip(names, members, strict=True)}
        per_level = assemble_clusters(Path(seqs.path), by_level, tmp, tmp / "_duckdb")
        _rm(tmp / "_duckdb")
        rows = pq.ParquetFile(tmp / "clusters.parquet").metadata.num_rows
        bad = _level_quarantine(cfg, levels)  # the split stage quarantines them
        pq.write_table(pa.Table.from_pylist(bad, schema=schemas.QUARANTINE), tmp / "quarantine.parquet")
        produced = [Produced("clusters.parquet", "clusters", rows, meta={"levels": names}),
                    Produced("cluster_sizes.parquet", "cluster_sizes"),
                    Produced("quarantine.parquet", "quarantine", len(bad))]
        stats = {"sequences": rows, "clusters_per_level": per_level, "to_quarantine": len(bad),
                 "commands": [c for out in levels for c in out.stats.get("commands", [])]}
        return produced, stats, {k: v for out in levels for k, v in out.tool_versions.items()}

    return run_stage(ctx, "cluster", {"levels": names}, [seqs, *members], compute)


def decontam_chunks(cfg: Config, ingested: StageOutput) -> int:
    """Chunks of ``split.decontaminate.chunk_rows`` sequence rows the decontamination searches in (0: none asked)."""
    d = cfg.split.decontaminate
    if not d.fasta and not d.held_out:
        return 0
    seqs = ingested.outputs["sequences.parquet"]
    rows = seqs.rows if seqs.rows is not None else pq.ParquetFile(seqs.path).metadata.num_rows
    return chunk_count(rows, d.chunk_rows)


def _split_params(cfg: Config) -> dict[str, Any]:
    return {"split": cfg.split.model_dump(mode="json", exclude={"audit"}), "level": cfg.split_level, "seed": cfg.seed}


@lineage_task(name="decontam_target")
def decontam_target(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
                    indexed: bool = True) -> StageOutput:
    """Stage 4 (decontamination 1/2): the evaluation FASTA records and, with ``held_out``, the would-be valid and
    test rows as one mmseqs database that every decontamination chunk searches (indexed once for several)."""
    mm = MMseqs(binary=cfg.cluster.binary, threads=cfg.cluster.threads)
    seqs, clusters = ingested.outputs["sequences.parquet"], clustered.outputs["clusters.parquet"]
    evals = [artifact_for(f, "eval_fasta") for f in cfg.split.decontaminate.fasta]
    # what the targets depend on: which rows are held out and the evaluation files (not the search's thresholds)
    params = {"split": cfg.split.model_dump(mode="json", exclude={"audit": True, "decontaminate": {
        "chunk_rows", "min_seq_id", "coverage"}}), "level": cfg.split_level, "seed": cfg.seed,
              "mmseqs_version": mm.version(), "indexed": indexed}

    def compute(tmp: Path):
        _, is_held = decontam_masks(Path(clusters.path), cfg.split_level, cfg.seed, cfg.split)
        n = write_decontam_targets(Path(seqs.path), is_held, cfg.split.decontaminate, tmp / "targets.fasta")
        fasta_target_db(tmp / "targets.fasta", tmp / "db", mm,
                        search_options=decontam_options(cfg.split.decontaminate) if n and indexed else None)
        return [Produced("db", "mmseqs_db", n)], {"targets": n}, {"mmseqs": mm.version()}

    return run_stage(ctx, "decontam_target", params, [seqs, clusters, *evals], compute)


@lineage_task(name="decontam_chunk", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def decontam_chunk(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
                   target: StageOutput, index: int) -> StageOutput:
    """Stage 4 (decontamination 2/2): the training rows among sequence rows ``[index * chunk_rows, ...)`` searched
    against the targets; a failed chunk retries alone, finished ones are cached."""
    d = cfg.split.decontaminate
    mm = MMseqs(binary=cfg.cluster.binary, threads=cfg.cluster.threads)
    seqs, clusters = ingested.outputs["sequences.parquet"], clustered.outputs["clusters.parquet"]
    params = {**_split_params(cfg), "chunk": index, "mmseqs_version": mm.version()}

    def compute(tmp: Path):
        is_train, _ = decontam_masks(Path(clusters.path), cfg.split_level, cfg.seed, cfg.split)
        lo = index * d.chunk_rows
        rows = lo + np.flatnonzero(is_train[lo:lo + d.chunk_rows])
        command = search_chunk(Path(seqs.path), rows, Path(target.outputs["db"].path) / "db", tmp / "hits.tsv",
                               tmp / "_mmseqs", mm, decontam_options(d))
        _rm(tmp / "_mmseqs")
        return [Produced("hits.tsv", "search_hits", len(rows))], \
            {"chunk": index, "queries": len(rows), "commands": [command] if command else []}, {"mmseqs": mm.version()}

    return run_stage(ctx, "decontam_chunk", params, [seqs, clusters, target.outputs["db"]], compute)


@lineage_task(name="split")
def split(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
          decontam: list[StageOutput] | None = None) -> StageOutput:
    """Stage 4: train/valid/test by cluster at the split level, with optional decontamination (from the
    ``decontam`` chunks' hits; None: searched here in one go)."""
    seqs, clusters = ingested.outputs["sequences.parquet"], clustered.outputs["clusters.parquet"]
    evals = [artifact_for(f, "eval_fasta") for f in cfg.split.decontaminate.fasta]
    level_bad = clustered.outputs.get("quarantine.parquet")  # rows a cluster level could not place
    hits = [c.outputs["hits.tsv"] for c in decontam or []]
    inputs: list[ArtifactRecord] = [seqs, clusters, *evals, *([level_bad] if level_bad else []), *hits]
    params = _split_params(cfg)

    def compute(tmp: Path):
        if decontam:
            is_train, _ = decontam_masks(Path(clusters.path), cfg.split_level, cfg.seed, cfg.split)
            rows = decontam_rows(Path(seqs.path), is_train, merged_lines(Path(h.path) for h in hits),
                                 cfg.split.decontaminate)
            cmds = [c for out in decontam for c in out.stats.get("commands", [])]
        else:
            rows, cmd = decontaminate(Path(seqs.path), Path(clusters.path), cfg.split.decontaminate, cfg.split,
                                      level=cfg.split_level, seed=cfg.seed, tmp_dir=tmp / "_mmseqs",
                                      threads=cfg.cluster.threads, binary=cfg.cluster.binary)
            cmds = [cmd] if cmd else []
        _rm(tmp / "_mmseqs")
        if level_bad is not None:
            rows = pq.read_table(level_bad.path).to_pylist() + rows
        res = assign_splits(Path(clusters.path), tmp, cfg.split, level=cfg.split_level, seed=cfg.seed,
                            excluded={r["id"] for r in rows})
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas.QUARANTINE), tmp / "quarantine.parquet")
        produced = [Produced("splits.parquet", "splits", sum(res.sizes.values())),
                    Produced("quarantine.parquet", "quarantine", len(rows))]
        stats = {"sizes": res.sizes, "clusters": res.clusters, "quarantined": len(rows),
                 "not_in_membership": sum(r["reason"] == "not_in_membership" for r in rows),
                 "decontaminated": sum(r["reason"] != "not_in_membership" for r in rows),
                 "commands": cmds, **({"decontam_chunks": len(decontam)} if decontam else {})}
        return produced, stats, ({"mmseqs": MMseqs(binary=cfg.cluster.binary).version()} if cmds else {})

    return run_stage(ctx, "split", params, inputs, compute)


def _audit_inputs(ingested: StageOutput, splitted: StageOutput) -> list[ArtifactRecord]:
    return [ingested.outputs["sequences.parquet"], splitted.outputs["splits.parquet"]]


def audit_chunks(cfg: Config, ingested: StageOutput, splitted: StageOutput) -> int:
    """How many query chunks the audit searches in (from the splits' sizes and the config, never the runner)."""
    con = duckdb_connect()
    try:
        path = splitted.path("splits.parquet")
        counts = dict(con.execute(f"SELECT split, count(*) FROM read_parquet({sql_path(path)}) GROUP BY split")
                      .fetchall())
    finally:
        con.close()
    if not counts.get("train"):
        return 0
    asked = sum(min(counts.get(s, 0), cfg.split.audit.max_queries) for s in ("valid", "test"))
    return chunk_count(asked, cfg.split.audit.chunk_queries)


@lineage_task(name="audit_target")
def audit_target(ctx: RunContext, cfg: Config, ingested: StageOutput, splitted: StageOutput,
                 indexed: bool = True) -> StageOutput:
    """Stage 4b (1/3): the train split as one mmseqs database, which every audit chunk searches; ``indexed``
    (several chunks) also writes its k-mer index once, which one search would only build again."""
    mm = MMseqs(binary=cfg.cluster.binary, threads=cfg.cluster.threads)
    seqs, splits = (Path(a.path) for a in _audit_inputs(ingested, splitted))
    options = search_options(cfg.split.audit) if indexed else None

    def compute(tmp: Path):
        plan = plan_audit(seqs, splits, cfg.split.audit, seed=cfg.seed)
        _, rows = build_target_db(seqs, plan.train, tmp / "db", mm, search_options=options)
        return [Produced("db", "mmseqs_db", rows)], {"train": rows, "indexed": indexed}, {"mmseqs": mm.version()}

    params = {"mmseqs_version": mm.version(), "index": cfg.split.audit.sensitivity if indexed else None}
    return run_stage(ctx, "audit_target", params, _audit_inputs(ingested, splitted), compute)


@lineage_task(name="audit_chunk", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def audit_chunk(ctx: RunContext, cfg: Config, ingested: StageOutput, splitted: StageOutput, target: StageOutput,
                index: int) -> StageOutput:
    """Stage 4b (2/3): the ``index``-th chunk of held-out queries searched against the train database; a failed
    chunk retries alone, finished ones are cached."""
    a = cfg.split.audit
    mm = MMseqs(binary=cfg.cluster.binary, threads=cfg.cluster.threads)
    seqs, splits = (Path(x.path) for x in _audit_inputs(ingested, splitted))
    params = {"audit": a.model_dump(mode="json", include={"max_queries", "coverage", "sensitivity", "chunk_queries"}),
              "seed": cfg.seed, "chunk": index, "mmseqs_version": mm.version()}

    def compute(tmp: Path):
        rows = chunk_rows(plan_audit(seqs, splits, a, seed=cfg.seed, with_train=False).asked, a.chunk_queries, index)
        db = Path(target.outputs["db"].path) / "db"
        command = search_chunk(seqs, rows, db, tmp / "hits.tsv", tmp / "_mmseqs", mm, search_options(a))
        _rm(tmp / "_mmseqs")
        return [Produced("hits.tsv", "search_hits", len(rows))], {"chunk": index, "queries": len(rows),
                                                                   "commands": [command]}, {"mmseqs": mm.version()}

    return run_stage(ctx, "audit_chunk", params, [*_audit_inputs(ingested, splitted), target.outputs["db"]],
                     compute)


@lineage_task(name="audit")
def audit(ctx: RunContext, cfg: Config, ingested: StageOutput, splitted: StageOutput,
          chunks: list[StageOutput]) -> StageOutput:
    """Stage 4b (3/3): the leakage audit from the chunks' hits: per held-out split the nearest train neighbour of
    every (sampled) sequence, the shares at 30/50/70/90 % (metrics ``audit/...``), ``split.audit.max_identity``."""
    seqs, splits = (Path(x.path) for x in _audit_inputs(ingested, splitted))
    hits = [c.outputs["hits.tsv"] for c in chunks]
    params = {"audit": cfg.split.audit.model_dump(mode="json", exclude={"chunk_queries"}), "seed": cfg.seed}

    def compute(tmp: Path):
        plan = plan_audit(seqs, splits, cfg.split.audit, seed=cfg.seed, with_train=False)
        res = summarize_audit(seqs, plan, [Path(h.path) for h in hits], tmp, cfg.split.audit, splits=splits)
        rows = sum(s["queries"] for s in res.per_split.values())
        stats = {**res.per_split, "chunks": len(chunks),
                 "commands": [cmd for c in chunks for cmd in c.stats.get("commands", [])]}
        return [Produced("audit.parquet", "split_audit", rows)], stats, {}

    out = run_stage(ctx, "audit", params, [*_audit_inputs(ingested, splitted), *hits], compute)
    ctx.store.record_metrics(ctx.run_id, None, [(name, 0, value) for name, value in audit_metrics(out.stats)])
    return out


def shard_partitions(cfg: Config, ingested: StageOutput) -> list[tuple[int, int]]:
    """The ingest-row ranges of the shard partitions (from the row count and the config, never the runner)."""
    seqs = ingested.outputs["sequences.parquet"]
    rows = seqs.rows if seqs.rows is not None else pq.ParquetFile(seqs.path).metadata.num_rows
    return partition_ranges(rows, cfg.shards.partition_rows)


def _shard_inputs(ingested: StageOutput, clustered: StageOutput, splitted: StageOutput) -> list[ArtifactRecord]:
    return [ingested.outputs["sequences.parquet"], clustered.outputs["clusters.parquet"],
            splitted.outputs["splits.parquet"]]


def _shard_params(cfg: Config) -> dict[str, Any]:
    return cfg.shards.model_dump(mode="json") | {"levels": [lv.name for lv in cfg.cluster.levels]}


def _shard_files(splits: dict[str, dict[str, Any]]) -> list[Produced]:
    """The shard files of a manifest's (or a partition's) splits as outputs, their sha256 already known."""
    return [Produced(f["path"], "shard", f["rows"], meta={"split": name, "tokens": f["tokens"]},
                     content_hash=f["sha256"]) for name, info in splits.items() for f in info["files"]]


@lineage_task(name="shards_partition")
def shards_partition(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
                     splitted: StageOutput, index: int, rows: tuple[int, int]) -> StageOutput:
    """Stage 5, one partition: the shards of the ingest rows ``[a, b)`` in a cached stage of its own (a failed
    partition reruns alone; a killed run finds the finished ones cached)."""
    seqs, clusters, splits = inputs = _shard_inputs(ingested, clustered, splitted)
    params = _shard_params(cfg) | {"partition": index, "rows": list(rows)}

    def compute(tmp: Path):
        written = write_shard_partition(Path(seqs.path), Path(clusters.path), Path(splits.path), tmp,
                                        levels=params["levels"], cfg=cfg.shards, rows=tuple(rows))
        return _shard_files(written), {"partition": index, "rows": list(rows), "splits": written}, {}

    return run_stage(ctx, "shards_partition", params, inputs, compute)


@lineage_task(name="shards")
def shards(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
           splitted: StageOutput, partitions: list[StageOutput]) -> StageOutput:
    """Stage 5: the partitions' shard files linked into place, numbered per split in partition order, and
    manifest.json (with one partition, the files a single pass writes)."""
    seqs, clusters, splits = _shard_inputs(ingested, clustered, splitted)
    provenance = {"run_id": ctx.run_id, "config_hash": cfg.hash(), "inputs": {
        "sequences": seqs.content_hash, "clusters": clusters.content_hash, "splits": splits.content_hash},
        "cluster_cache_key": clustered.cache_key, "split_cache_key": splitted.cache_key}
    parts = sorted(partitions, key=lambda p: p.stats["partition"])

    def compute(tmp: Path):
        manifest = assemble_shards([(Path(p.directory), p.stats["splits"]) for p in parts], tmp,
                                   levels=_shard_params(cfg)["levels"], provenance=provenance)
        stats = {s: {"rows": v["rows"], "tokens": v["tokens"], "files": len(v["files"])}
                 for s, v in manifest["splits"].items()}
        return [Produced("manifest.json", "manifest"), *_shard_files(manifest["splits"])], stats, {}

    # provenance names the run, but the shards' content does not depend on it; the partitions' files are
    # inputs so that, on object storage, a worker without them downloads them first
    inputs = [seqs, clusters, splits] + [a for p in parts for a in p.outputs.values()]
    out = run_stage(ctx, "shards", _shard_params(cfg), inputs, compute)
    logger().info("shards in %s (%d partitions)", out.directory, len(parts))
    return out


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
