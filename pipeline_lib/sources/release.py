"""What identifies the current upstream data, cheaply: the release check of scheduled refreshes.

    ident = source_identity(cfg.source, download_dir)
    if identity_changed(previous_ident, ident): ...run the refresh...

- ``uniref``: the release name, file name, size and MD5 from ``RELEASE.metalink`` (one small request), and
  those of ``source.files`` from their folders' metalinks.
- ``fasta``: sha256 of local files; ETag / size / Last-Modified of URLs (a HEAD request each).
- ``embedded``: the wheels' versions and the files' sha256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_lib.config import EmbeddedSource, FastaSource, UnirefSource
from pipeline_lib.io import sha256_file

__all__ = ["source_identity", "identity_changed"]


def source_identity(source: UnirefSource | FastaSource | EmbeddedSource, download_dir: Path) -> dict[str, Any]:
    if isinstance(source, UnirefSource):
        from pipeline_lib.sources.uniref import release_info

        kw: dict[str, Any] = {"retries": source.retries, "timeout_s": source.timeout_s,
                              "allowed_hosts": source.allowed_hosts}
        info = release_info(source.base_url, source.database, **kw)
        d = info.to_dict()
        d.pop("metalink_sha256", None)  # a mirror-list edit is not a new release
        if source.files:  # the release's other files: each at the same release, with its size and MD5
            from pipeline_lib.sources.uniref import release_files

            d["files"] = {f.spec: {"size": f.size, "md5": f.md5}
                          for f in release_files(source.base_url, info.release, source.files, **kw)}
        return {"kind": "uniref", **d}
    if isinstance(source, EmbeddedSource):
        from pipeline_lib.sources.embedded import embedded_corpus

        corpus = embedded_corpus(source.corpus)
        return {"kind": "embedded", "release": f"embedded-{source.corpus}",
                "files": {f"{f.package}=={f.package_version}:{f.path.name}": sha256_file(f.path) for f in corpus}}
    from pipeline_lib.sources.download import head
    from pipeline_lib.sources.fasta_files import resolve_fasta_inputs

    files: dict[str, Any] = {}
    for item in source.paths:
        if item.startswith(("http://", "https://")):
            h = head(item, allowed_hosts=source.allowed_hosts)
            files[item] = {"etag": h.etag, "size": h.size, "last_modified": h.last_modified}
        else:
            for p in resolve_fasta_inputs([item], download_dir):
                files[str(p)] = sha256_file(p)
    return {"kind": "fasta", "release": None, "files": files}


def identity_changed(previous: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    return previous is None or previous != current
