"""Stage directories mirrored on object storage (S3, or anything fsspec opens), and reading shards from it.

    store = ObjectStore("s3://bucket/plm", endpoint_url="http://127.0.0.1:9000")
    store.publish(Path("work/stages/shards/0123abcd"), "stages/shards/0123abcd", marker)  # _SUCCESS.json last
    store.materialise("stages/shards/0123abcd", Path("work/stages/shards/0123abcd"))      # download, verified
    store.delete("stages/shards/0123abcd")                                               # retention: marker first
    fs, _ = open_url("s3://bucket/plm", endpoint_url="http://127.0.0.1:9000")
    shard_table("s3://bucket/plm/stages/shards/0123abcd", "train", fs)                   # pyarrow, from S3
    duckdb_connection(fs).sql("SELECT count(*) FROM read_parquet('s3://bucket/plm/stages/shards/*/train/*.parquet')")

Stages still compute in the local workdir (mmseqs needs local files), which serves as the local cache. Object
stores have no rename, so the marker is the atomicity: a stage counts as finished remotely only when its
``_SUCCESS.json`` object exists, and that object is uploaded after every other file of the stage. The
uploaded marker names its files by URL; a downloaded copy names them by local path again. Credentials come
from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE), never from the config, so
they cannot reach lineage or logs. Tests: ``.venv/bin/pytest -q tests/test_storage.py``.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError, PipelineError, TransientError
from pipeline_lib.io import atomic_dir, duckdb_connect, sha256_bytes
from pipeline_lib.lineage import ArtifactRecord, artifact_for
from pipeline_lib.stage_cache import MARKER, write_marker

__all__ = ["ObjectStore", "StorageError", "open_url", "stage_dir_of", "read_manifest", "shard_table",
           "verify_manifest", "duckdb_connection", "MARKER"]



class StorageError(TransientError):
    """Object storage did not answer as expected (network, throttling): worth a retry."""


def _options(protocol: str, endpoint_url: str | None, region: str | None,
             options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    if protocol in ("s3", "s3a"):
        if endpoint_url:
            opts.setdefault("endpoint_url", endpoint_url)
        if region:
            opts["client_kwargs"] = {"region_name": region, **opts.get("client_kwargs", {})}
        # markers appear and vanish under us (other machines publish): a cached listing would hide that
        opts.setdefault("use_listings_cache", False)
    return opts


def open_url(url: str, *, endpoint_url: str | None = None, region: str | None = None,
             options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it (``s3://b/p`` -> ``b/p``)."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    return fsspec.core.url_to_fs(url, **_options(protocol, endpoint_url, region, options))


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """Name the URL in every failure; network-type failures become retryable :class:`StorageError`."""
    try:
        yield
    except (PipelineError, FileNotFoundError):
        raise
    except PermissionError as exc:  # wrong or missing credentials: retrying will not help
        raise PipelineError(f"{url}: access denied ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise StorageError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _rebase(marker: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The marker with output paths under ``old`` (a directory or URL) moved under ``new``."""
    out = json.loads(json.dumps(marker, default=str))
    for art in out["outputs"].values():
        if art["path"] == old or art["path"].startswith(old + "/"):
            art["path"] = new + art["path"][len(old):]
    return out


class ObjectStore:
    """A mirror of the workdir's stage directories under ``url`` (``<url>/stages/<stage>/<key16>/...``)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, root = open_url(self.url, endpoint_url=endpoint_url, region=region, options=options)
        self.root = root.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> ObjectStore | None:
        """From the ``storage`` config section as a dict (what a RunContext carries); None without a URL."""
        if not settings or not settings.get("url"):
            return None
        return cls(settings["url"], endpoint_url=settings.get("endpoint_url"), region=settings.get("region"),
                   options=settings.get("options"))

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _files(self, rel_dir: str) -> list[str]:
        prefix = self._key(rel_dir) + "/"
        return sorted(k for k in self.fs.find(prefix) if k.startswith(prefix))

    def read_marker(self, rel_dir: str) -> dict[str, Any] | None:
        """The stage's remote marker (outputs named by URL), or None when the stage is not finished there."""
        with _storage_errors(self.url_of(rel_dir)):
            try:
                return json.loads(self.fs.cat_file(self._key(f"{rel_dir}/{MARKER}")))
            except FileNotFoundError:
                return None

    def publish(self, local_dir: Path, rel_dir: str, marker: dict[str, Any]) -> int:
        """Upload the stage's files, then its marker; returns the number of files uploaded before the marker."""
        prefix, url = self._key(rel_dir), self.url_of(rel_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MARKER)
        with _storage_errors(url):
            stale = self._files(rel_dir)  # what a crashed upload left: never mixed with this copy
            if stale:
                self.fs.rm(stale)
            for p in files:
                self.fs.put_file(str(p), f"{prefix}/{p.relative_to(local_dir).as_posix()}")
            body = json.dumps(_rebase(marker, str(local_dir), url), indent=2, sort_keys=True, default=str)
            self.fs.pipe_file(f"{prefix}/{MARKER}", body.encode())
        return len(files)

    def size(self, rel_dir: str) -> int | None:
        """Bytes of the objects under the stage directory ``rel_dir``; None when there are none."""
        prefix = self._key(rel_dir) + "/"
        with _storage_errors(self.url_of(rel_dir)):
            found = {k: v for k, v in self.fs.find(prefix, detail=True).items() if k.startswith(prefix)}
        return sum(int(v.get("size") or 0) for v in found.values()) if found else None

    def delete(self, rel_dir: str) -> int:
        """Delete the stage directory ``rel_dir``: its marker first, so that it stops counting as finished at
        once (what an interrupted deletion leaves is removed by the next publish of that key); returns the
        number of objects deleted."""
        marker = self._key(f"{rel_dir}/{MARKER}")
        with _storage_errors(self.url_of(rel_dir)):
            files = self._files(rel_dir)
            if marker in files:
                self.fs.rm_file(marker)
            rest = [k for k in files if k != marker]
            if rest:
                self.fs.rm(rest)
        return len(files)

    def materialise(self, rel_dir: str, local_dir: Path) -> dict[str, Any] | None:
        """Download a finished stage into ``local_dir`` (built under a temporary name, checked against the
        marker's content hashes); returns the local marker, or None when the stage is not finished remotely."""
        marker = self.read_marker(rel_dir)
        if marker is None:
            return None
        prefix, url = self._key(rel_dir), self.url_of(rel_dir)
        with atomic_dir(local_dir) as tmp, _storage_errors(url):
            for key in self._files(rel_dir):
                dest = tmp / key[len(prefix) + 1:]
                if dest.name != MARKER:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(key, str(dest))
            local = _rebase(marker, url, str(local_dir))
            for name, art in local["outputs"].items():
                path = Path(art["path"])
                if path.is_relative_to(local_dir):
                    got = tmp / path.relative_to(local_dir)
                    if not got.exists() or artifact_for(got, art["kind"]).content_hash != art["content_hash"]:
                        raise DataValidationError(f"output {name!r} is missing or differs from its marker's "
                                                  "content hash", path=f"{url}/{path.relative_to(local_dir)}")
            write_marker(tmp, local_dir, local)
        return local

    def published(self, art: ArtifactRecord, workdir: str | Path) -> ArtifactRecord:
        """``art`` named by its URL when it lies in a stage directory of ``workdir`` (as lineage records it)."""
        rel = stage_dir_of(art.path, workdir)
        if rel is None:
            return art
        return replace(art, path=self.url_of(Path(art.path).relative_to(Path(workdir).resolve()).as_posix()))


def stage_dir_of(path: str | Path, workdir: str | Path) -> str | None:
    """``stages/<stage>/<key16>`` when ``path`` lies in (or is) a stage directory of ``workdir``, else None."""
    p, root = Path(path), Path(workdir).resolve()
    if not p.is_relative_to(root):
        return None
    parts = p.relative_to(root).parts
    return "/".join(parts[:3]) if len(parts) >= 3 and parts[0] == "stages" else None


# --- reading shards straight from object storage -----------------------------------------------------------

def _strip(fs: fsspec.AbstractFileSystem, url: str) -> str:
    return fs._strip_protocol(url).rstrip("/")


def read_manifest(url: str, fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """``manifest.json`` of a shard directory given by URL (``s3://.../stages/shards/<key16>``)."""
    try:
        return json.loads(fs.cat_file(f"{_strip(fs, url)}/manifest.json"))
    except FileNotFoundError:
        raise DataValidationError("no manifest.json in shard directory", path=url) from None


def shard_table(url: str, split: str, fs: fsspec.AbstractFileSystem,
                columns: list[str] | None = None) -> pa.Table:
    """One split's shards read with pyarrow straight from storage (only ``columns`` when given)."""
    manifest = read_manifest(url, fs)
    if split not in manifest["splits"]:
        raise DataValidationError(f"split {split!r} not in manifest (has {sorted(manifest['splits'])})", path=url)
    paths = [f"{_strip(fs, url)}/{f['path']}" for f in manifest["splits"][split]["files"]]
    if not paths:
        return pa.table({})
    return pq.ParquetDataset(paths, filesystem=fs).read(columns=columns)


def verify_manifest(url: str, fs: fsspec.AbstractFileSystem) -> list[str]:
    """Each shard object's sha256 and row count against the manifest; returns the problems found."""
    problems = []
    for info in read_manifest(url, fs)["splits"].values():
        for f in info["files"]:
            key = f"{_strip(fs, url)}/{f['path']}"
            if not fs.exists(key):
                problems.append(f"{f['path']}: missing")
            elif sha256_bytes(fs.cat_file(key)) != f["sha256"]:
                problems.append(f"{f['path']}: sha256 mismatch")
            elif pq.ParquetFile(key, filesystem=fs).metadata.num_rows != f["rows"]:
                problems.append(f"{f['path']}: row count differs from manifest")
    return problems


def duckdb_connection(fs: fsspec.AbstractFileSystem, con: Any = None) -> Any:
    """A DuckDB connection that reads ``s3://...`` (the fs's protocols) through ``fs``; no httpfs download."""
    con = con or duckdb_connect()
    con.register_filesystem(fs)
    return con
