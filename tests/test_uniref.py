"""UniRef release check and download against a fake UniProt FTP tree served on 127.0.0.1; FASTA inputs.

Run: ``.venv/bin/pytest -q tests/test_uniref.py``
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from conftest_http import http_server  # noqa: F401  (fixture)
from http_server import Fault, LocalHTTPServer

from pipeline_lib.config import UnirefSource
from pipeline_lib.errors import ChecksumError, DataValidationError, PipelineError
from pipeline_lib.sources.download import PermanentDownloadError
from pipeline_lib.sources.fasta_files import resolve_fasta_inputs, url_download_path
from pipeline_lib.sources.uniref import (
    ReleaseInfo,
    download_uniref,
    fetch_metalink,
    parse_metalink,
    parse_release_note,
    release_changed,
    release_info,
)

BASE = "/pub/databases/uniprot"
RECORDS = (
    ">UniRef50_Q9K794 Putative AgrB-like protein n=2 Tax=Bacillus TaxID=1386 RepID=AGRB_BACHD\n"
    "MKLLSKLAERTANRLVQRGVITEEESHLYRYGLEVFLSGLLNGISLFVIA\n"
    ">UniRef50_P69905 Hemoglobin subunit alpha n=1 Tax=Homo sapiens TaxID=9606 RepID=HBA_HUMAN\n"
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHV\n"
)


def metalink_v3(files: dict[str, tuple[int, str]], version: str | None = "2025_03") -> str:
    """A metalink shaped like UniProt's RELEASE.metalink (Metalink 3, namespaced, FTP mirrors)."""
    body = "".join(
        f'<file name="{name}"><size>{size}</size>'
        f'<verification><hash type="md5">{md5}</hash></verification>'
        '<resources>'
        f'<url type="ftp" location="ch">ftp://ftp.expasy.org/databases/uniprot/uniref/x/{name}</url>'
        f'<url type="ftp" location="uk">ftp://ftp.ebi.ac.uk/pub/databases/uniprot/uniref/x/{name}</url>'
        '</resources></file>' for name, (size, md5) in files.items())
    ver = f"<version>{version}</version>" if version else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="http://www.metalinker.org/" version="3.0">'
            f'<publisher><name>UniProt Consortium</name><url>http://www.uniprot.org</url></publisher>{ver}'
            f'<files>{body}</files></metalink>\n')


def fake_ftp(srv: LocalHTTPServer, *, database: str = "uniref50", md5: str | None = None,
             version: str | None = "2025_03", note: str | None = None) -> bytes:
    """Write <BASE>/uniref/<db>/{<db>.fasta.gz, RELEASE.metalink[, <db>.release_note]}; return the gz bytes."""
    gz = gzip.compress(RECORDS.encode(), mtime=0)
    folder = f"{BASE}/uniref/{database}"
    srv.put(f"{folder}/{database}.fasta.gz", gz)
    real = hashlib.md5(gz).hexdigest()
    srv.put(f"{folder}/RELEASE.metalink",
            metalink_v3({f"{database}.fasta.gz": (len(gz), md5 or real), f"{database}.xml.gz": (99, "f" * 32)},
                        version).encode())
    if note is not None:
        srv.put(f"{folder}/{database}.release_note", note.encode())
    return gz


# --- metalink / release note parsing ---------------------------------------------------------------

def test_parse_uniprot_style_metalink():
    ml = parse_metalink(metalink_v3({"uniref50.fasta.gz": (12345, "AB" * 16)}))
    assert ml.version == "2025_03"
    entry = ml.files["uniref50.fasta.gz"]
    assert (entry.size, entry.md5) == (12345, "ab" * 16)
    assert entry.urls[0].startswith("ftp://ftp.expasy.org/") and len(entry.urls) == 2
    assert len(ml.sha256) == 64


def test_parse_metalink4_and_plain_xml():
    v4 = ('<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="a.gz"><size>7</size>'
          '<hash type="sha-256">' + "c" * 64 + '</hash><hash type="md5">' + "d" * 32 + '</hash>'
          '<pieces length="4" type="md5"><hash>' + "e" * 32 + '</hash></pieces>'
          '<url>https://m/a.gz</url></file></metalink>')
    entry = parse_metalink(v4).files["a.gz"]
    assert entry.md5 == "d" * 32 and entry.hashes["sha-256"] == "c" * 64 and entry.urls == ("https://m/a.gz",)
    plain = parse_metalink("<metalink><version>2024_01</version><files><file name='b'><size>3</size></file>"
                           "</files></metalink>")
    assert plain.version == "2024_01" and plain.files["b"].size == 3 and plain.files["b"].md5 is None


@pytest.mark.parametrize("doc,match", [
    ("<metalink><file name='x'><size>", "not valid metalink XML"),
    ("<html><body>503</body></html>", "expected <metalink>"),
    ("<metalink><files><file name='x'><size>big</size></file></files></metalink>", "not a byte count"),
])
def test_bad_metalinks_are_named(doc: str, match: str):
    with pytest.raises(DataValidationError, match=match) as exc:
        parse_metalink(doc, origin="http://m/RELEASE.metalink")
    assert "http://m/RELEASE.metalink" in str(exc.value)


def test_parse_release_note():
    assert parse_release_note("UniRef50 Release 2025_03\n\nThe UniProt Reference Clusters...") == "2025_03"
    assert parse_release_note("UniProt Knowledgebase release 2024_06 consists of") == "2024_06"
    assert parse_release_note("no release here") is None


# --- release check ---------------------------------------------------------------------------------

def test_release_info_reads_only_the_metalink(http_server: LocalHTTPServer):  # noqa: F811
    gz = fake_ftp(http_server)
    info = release_info(http_server.url(BASE), "uniref50", backoff_s=0.01)
    assert info == ReleaseInfo("uniref50", "2025_03", "uniref50.fasta.gz", len(gz), hashlib.md5(gz).hexdigest(),
                               info.metalink_sha256)
    assert [r.path for r in http_server.requests] == [f"{BASE}/uniref/uniref50/RELEASE.metalink"]


def test_release_info_falls_back_to_release_note(http_server: LocalHTTPServer):  # noqa: F811
    fake_ftp(http_server, version=None, note="UniRef50 Release 2025_02\n")
    assert release_info(http_server.url(BASE), "uniref50").release == "2025_02"
    fake_ftp(http_server, version=None, note="nothing useful\n")
    with pytest.raises(DataValidationError, match="release note"):
        release_info(http_server.url(BASE), "uniref50")


def test_release_info_rejects_unsafe_release_and_missing_entry(http_server: LocalHTTPServer):  # noqa: F811
    fake_ftp(http_server, version="../../etc")
    with pytest.raises(DataValidationError, match="not a usable name"):
        release_info(http_server.url(BASE), "uniref50")
    with pytest.raises(PermanentDownloadError, match="404"):
        fetch_metalink(http_server.url(BASE), "uniref90")
    http_server.put(f"{BASE}/uniref/uniref90/RELEASE.metalink", metalink_v3({"other.gz": (1, "a" * 32)}).encode())
    with pytest.raises(DataValidationError, match="uniref90.fasta.gz.*other.gz"):
        release_info(http_server.url(BASE), "uniref90")


def test_release_changed():
    cur = ReleaseInfo("uniref50", "2025_03", "uniref50.fasta.gz", 10, "a" * 32, "s" * 64)
    assert release_changed(None, cur)
    assert not release_changed(cur, cur)
    assert not release_changed(cur.to_dict(), cur)
    assert not release_changed({**cur.to_dict(), "metalink_sha256": "t" * 64}, cur)  # mirror list edits only
    assert release_changed({**cur.to_dict(), "release": "2025_02"}, cur)
    assert release_changed({**cur.to_dict(), "md5": "b" * 32}, cur)
    assert release_changed(json.loads(json.dumps({**cur.to_dict(), "size": 11})), cur)


# --- end to end ------------------------------------------------------------------------------------

def test_download_uniref_end_to_end(http_server: LocalHTTPServer, tmp_path: Path):  # noqa: F811
    gz = fake_ftp(http_server)
    http_server.add_faults(f"{BASE}/uniref/uniref50/uniref50.fasta.gz", Fault(drop_after=40))
    cfg = UnirefSource(base_url=http_server.url(BASE), database="uniref50", retries=2, timeout_s=5)
    result, info = download_uniref(cfg, tmp_path / "downloads", backoff_s=0.01, progress=False)
    dest = tmp_path / "downloads" / "2025_03" / "uniref50.fasta.gz"
    assert result.path == dest and result.md5 == info.md5 and result.resumed
    assert gzip.decompress(dest.read_bytes()).decode() == RECORDS and len(gz) == result.bytes
    saved = json.loads((dest.parent / "uniref50.release.json").read_text())
    assert not release_changed(saved, info)
    again, _ = download_uniref(cfg, tmp_path / "downloads", backoff_s=0.01, progress=False)
    assert again.skipped


def test_download_uniref_wrong_md5_keeps_no_final_file(http_server: LocalHTTPServer, tmp_path: Path):  # noqa: F811
    fake_ftp(http_server, md5="0" * 32)
    cfg = UnirefSource(base_url=http_server.url(BASE), retries=0, timeout_s=5)
    with pytest.raises(ChecksumError, match="0{32}"):
        download_uniref(cfg, tmp_path, progress=False)
    assert not (tmp_path / "2025_03" / "uniref50.fasta.gz").exists()


# --- FASTA inputs ----------------------------------------------------------------------------------

def test_resolve_local_paths_and_globs(tmp_path: Path):
    for name in ("b.fasta", "a.fasta", "c.fa.gz"):
        (tmp_path / name).write_text(">x\nMKV\n")
    got = resolve_fasta_inputs([str(tmp_path / "*.fasta"), str(tmp_path / "c.fa.gz"), str(tmp_path / "a.fasta")],
                               tmp_path / "dl")
    assert got == [tmp_path / "a.fasta", tmp_path / "b.fasta", tmp_path / "c.fa.gz"]  # sorted, no duplicates
    with pytest.raises(DataValidationError, match=r"glob '.*\*\.faa' matches no file"):
        resolve_fasta_inputs([str(tmp_path / "*.faa")], tmp_path / "dl")
    with pytest.raises(DataValidationError, match="missing.fasta.*not found"):
        resolve_fasta_inputs([str(tmp_path / "missing.fasta")], tmp_path / "dl")
    with pytest.raises(PipelineError, match="scheme 'ftp'"):
        resolve_fasta_inputs(["ftp://u:pw@h/x.fa"], tmp_path / "dl")


def test_resolve_urls_downloads_once(http_server: LocalHTTPServer, tmp_path: Path):  # noqa: F811
    http_server.put("/seqs/extra.fa", RECORDS.encode())
    url = http_server.url("/seqs/extra.fa")
    (p,) = resolve_fasta_inputs([url], tmp_path / "dl", backoff_s=0.01, progress=False)
    assert p == url_download_path(url, tmp_path / "dl").resolve() and p.read_text() == RECORDS
    assert p.name.endswith("-extra.fa")
    assert resolve_fasta_inputs([url], tmp_path / "dl", progress=False) == [p]
    assert len(http_server.requests) == 1  # the second call reused the file
    with pytest.raises(PermanentDownloadError, match="404"):
        resolve_fasta_inputs([http_server.url("/seqs/none.fa")], tmp_path / "dl")
