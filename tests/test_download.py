"""Downloads against a real HTTP server on 127.0.0.1 with injected faults (drops, stalls, 5xx, 404, no Range).

Run: ``.venv/bin/pytest -q tests/test_download.py``
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_http import http_server  # noqa: F401  (fixture)
from http_server import Fault, LocalHTTPServer

from pipeline_lib.errors import ChecksumError, DownloadError, PipelineError, TransientError
from pipeline_lib.sources.download import (
    PermanentDownloadError,
    check_url_allowed,
    download,
    fetch_bytes,
    head,
    redact_url,
)

SIZE = 3 * (1 << 20) + 12345  # a bit over three 1 MiB chunks
FAST = {"backoff_s": 0.01, "timeout_s": 5.0, "progress": False}


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(0).randbytes(SIZE)


@pytest.fixture
def served(http_server: LocalHTTPServer, payload: bytes) -> LocalHTTPServer:  # noqa: F811
    http_server.put("/data/file.bin", payload)
    return http_server


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_fresh_download_is_verified_and_atomic(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "out" / "file.bin"
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert (r.path, r.bytes, r.md5, r.attempts, r.resumed, r.skipped) == (dest, SIZE, md5(payload), 1, False, False)
    assert r.sha256 == hashlib.sha256(payload).hexdigest()
    assert not dest.with_name("file.bin.partial").exists()
    assert served.requests_for("/data/file.bin")[0].headers.get("Range") is None


def test_skips_existing_valid_file(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert r.skipped and r.attempts == 0 and r.md5 == md5(payload)
    assert len(served.requests_for("/data/file.bin")) == 1


def test_existing_file_with_wrong_content_is_replaced(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"x" * SIZE)  # right size, wrong bytes
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert not r.skipped and dest.read_bytes() == payload


def test_resume_after_dropped_connection(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    served.add_faults("/data/file.bin", Fault(drop_after=SIZE // 2))
    dest = tmp_path / "file.bin"
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    reqs = served.requests_for("/data/file.bin")
    assert len(reqs) == 2 and r.attempts == 2 and r.resumed
    offset = int(reqs[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= SIZE // 2 and reqs[1].status == 206
    assert reqs[1].headers["If-Range"] == f'"{md5(payload)}"'  # the ETag of the first response
    assert not dest.with_name("file.bin.partial.validator").exists()
    assert served.bytes_sent("/data/file.bin") < 2 * SIZE


def test_resume_leftover_partial_from_earlier_run(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(payload[:1000])
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert r.resumed and r.md5 == md5(payload) and dest.read_bytes() == payload
    (req,) = served.requests_for("/data/file.bin")
    assert req.headers["Range"] == "bytes=1000-" and req.bytes_sent == SIZE - 1000


def test_corrupt_partial_is_caught_by_md5(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(b"\0" * 1000)  # resumed bytes are hashed too
    with pytest.raises(ChecksumError, match="md5"):
        download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert not dest.exists() and dest.with_name("file.bin.corrupt").exists()
    assert not dest.with_name("file.bin.partial").exists()  # the next run starts clean


def test_server_ignoring_range_restarts_from_zero(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(payload[:5000])
    served.add_faults("/data/file.bin", Fault(ignore_range=True))
    r = download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload and not r.resumed
    (req,) = served.requests_for("/data/file.bin")
    assert req.headers["Range"] == "bytes=5000-" and req.status == 200


def test_file_changed_on_server_restarts_via_if_range(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(b"old version of the file")
    dest.with_name("file.bin.partial.validator").write_text('"etag-of-the-old-version"')
    r = download(served.url("/data/file.bin"), dest, **FAST)  # no checksum to catch a spliced file
    assert dest.read_bytes() == payload and not r.resumed
    (req,) = served.requests_for("/data/file.bin")
    assert req.headers["If-Range"] == '"etag-of-the-old-version"' and req.status == 200


def test_complete_partial_without_expected_size_uses_416(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(payload)
    r = download(served.url("/data/file.bin"), dest, **FAST)
    assert r.md5 == md5(payload) and dest.read_bytes() == payload
    assert [q.status for q in served.requests_for("/data/file.bin")] == [416]


def test_oversized_partial_restarts(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.partial").write_bytes(payload + b"junk")
    r = download(served.url("/data/file.bin"), dest, **FAST)
    assert dest.read_bytes() == payload and r.md5 == md5(payload)


def test_5xx_then_success_is_retried(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    served.add_faults("/data/file.bin", Fault(status=500), Fault(status=503), Fault(status=429))
    r = download(served.url("/data/file.bin"), tmp_path / "f", expected_md5=md5(payload), **FAST)
    assert r.attempts == 4 and r.md5 == md5(payload)


def test_retries_exhausted_raise_transient_download_error(served: LocalHTTPServer, tmp_path: Path):
    served.add_faults("/data/file.bin", *[Fault(status=502)] * 3)
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*/data/file\.bin.*3 attempts.*502") as exc:
        download(served.url("/data/file.bin"), tmp_path / "f", retries=2, **FAST)
    assert isinstance(exc.value, TransientError)


def test_404_fails_at_once_naming_url_and_status(served: LocalHTTPServer, tmp_path: Path):
    url = served.url("/data/missing.bin")
    with pytest.raises(PermanentDownloadError) as exc:
        download(url, tmp_path / "f", retries=5, **FAST)
    assert url in str(exc.value) and "404" in str(exc.value) and exc.value.status == 404
    assert isinstance(exc.value, PipelineError) and not isinstance(exc.value, TransientError)
    assert len(served.requests_for("/data/missing.bin")) == 1


def test_stall_is_detected_and_retried(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    served.add_faults("/data/file.bin", Fault(stall_s=2.0, stall_after=100_000))
    t0 = time.monotonic()
    r = download(served.url("/data/file.bin"), tmp_path / "f", expected_md5=md5(payload),
                 **{**FAST, "timeout_s": 0.3})
    assert r.md5 == md5(payload) and r.attempts == 2
    assert time.monotonic() - t0 < 2.0  # gave up on the stalled response rather than waiting it out


def test_short_read_is_retried(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    served.add_faults("/data/file.bin", Fault(drop_after=10), Fault(drop_after=10))
    r = download(served.url("/data/file.bin"), tmp_path / "f", **FAST)
    assert r.md5 == md5(payload) and r.attempts == 3


def test_wrong_md5_raises_and_leaves_no_final_file(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError) as exc:
        download(served.url("/data/file.bin"), dest, expected_size=SIZE, expected_md5="0" * 32, **FAST)
    msg = str(exc.value)
    assert str(dest) in msg and "0" * 32 in msg and md5(payload) in msg
    assert not dest.exists() and dest.with_name("file.bin.corrupt").read_bytes() == payload


def test_size_mismatch_raises_before_transfer(served: LocalHTTPServer, tmp_path: Path):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError, match=f"{SIZE} bytes, expected {SIZE + 1}"):
        download(served.url("/data/file.bin"), dest, expected_size=SIZE + 1, **FAST)
    assert not dest.exists() and not dest.with_name("file.bin.partial").exists()
    assert len(served.requests_for("/data/file.bin")) == 1  # not retried: the server has other data


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://ftp.uniprot.org/pub/x.gz", "gopher://h/x", "/tmp/x"])
def test_disallowed_schemes_are_refused(url: str, tmp_path: Path):
    with pytest.raises(PermanentDownloadError, match="scheme"):
        download(url, tmp_path / "f", **FAST)


def test_host_allow_list(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    with pytest.raises(PermanentDownloadError, match="host '127.0.0.1' is not one of"):
        download(served.url("/data/file.bin"), tmp_path / "f", allowed_hosts=["ftp.uniprot.org"], **FAST)
    assert served.requests == []
    r = download(served.url("/data/file.bin"), tmp_path / "f", allowed_hosts=["127.0.0.1"], **FAST)
    assert r.md5 == md5(payload)
    check_url_allowed("ftp://ftp.uniprot.org/x", allowed_schemes=("ftp",))  # explicitly allowed: fine


def test_credentials_never_reach_errors_or_logs(served: LocalHTTPServer, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture):
    served.add_faults("/data/missing.bin", Fault(status=500))
    url = served.url("/data/missing.bin?token=abc123&x=1", userinfo="alice:s3cret")
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentDownloadError) as exc:
        download(url, tmp_path / "f", **FAST)
    ours = "".join(r.getMessage() for r in caplog.records if r.name.startswith("pipeline_lib"))
    assert "attempt 1/6 failed" in ours
    text = str(exc.value) + exc.value.url + ours
    assert "s3cret" not in text and "alice" not in text and "abc123" not in text
    assert "s3cret" not in caplog.text  # urllib3's own DEBUG lines show the query, never the userinfo
    assert "***@127.0.0.1" in str(exc.value) and "x=1" in str(exc.value)
    assert served.requests[-1].headers.get("Authorization", "").startswith("Basic ")  # still sent to the server


def test_redact_url():
    assert redact_url("https://u:p@h.org/a?b=1") == "https://***@h.org/a?b=1"
    assert redact_url("https://h.org/a?api_key=zz&n=2") == "https://h.org/a?api_key=***&n=2"
    assert redact_url("https://h.org/a") == "https://h.org/a"


def test_connection_refused_is_transient(tmp_path: Path):
    with LocalHTTPServer(tmp_path / "www") as srv:
        url = srv.url("/x")
    with pytest.raises(DownloadError, match="2 attempts"):
        download(url, tmp_path / "f", retries=1, **FAST)


def test_head_and_fetch_bytes(served: LocalHTTPServer, payload: bytes):
    info = head(served.url("/data/file.bin"))
    assert info.size == SIZE and info.accept_ranges and info.etag == f'"{md5(payload)}"'
    served.put("/small.txt", b"hello world")
    served.add_faults("/small.txt", Fault(drop_after=3), Fault(status=503))
    assert fetch_bytes(served.url("/small.txt"), backoff_s=0.01) == b"hello world"
    with pytest.raises(PermanentDownloadError, match="larger than"):
        fetch_bytes(served.url("/data/file.bin"), max_bytes=1000)


def test_pipeline_lib_sources_do_not_import_prefect():
    code = ("import sys, pipeline_lib.sources.download, pipeline_lib.sources.uniref, "
            "pipeline_lib.sources.fasta_files; sys.exit('prefect' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_progress_reports_bytes_rate_and_completion(served: LocalHTTPServer, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="pipeline_lib.progress"):
        download(served.url("/data/file.bin"), tmp_path / "file.bin", **{**FAST, "progress": True})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pipeline_lib.progress"]
    assert line.startswith("download file.bin: 3.0 MB / 3.0 MB (100.0%)") and "/s" in line and "done in" in line


# --- downloads end: trickles, deadlines, and retries that are not multiplied ----------------------------

def test_a_trickling_server_is_a_stall(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    """One byte every 50 ms never trips a per-read timeout (today's reads waited for a whole MiB); under
    min_bytes per timeout_s window it is a stall, named with the URL and the bytes received."""
    from pipeline_lib.errors import DownloadError

    served.add_faults("/data/file.bin", Fault(trickle_s=0.05, stall_after=5000))
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(served.url("/data/file.bin"), tmp_path / "f", **{**FAST, "timeout_s": 0.5, "retries": 0})
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    assert "stalled" in msg and "min_bytes=1024" in msg and "bytes received" in msg and "/data/file.bin" in msg
    assert err.value.retries_exhausted
    kept = (tmp_path / "f.partial").stat().st_size
    assert kept >= 5000                                   # what arrived stays for the resume ...
    r = download(served.url("/data/file.bin"), tmp_path / "f", expected_md5=md5(payload), **FAST)
    assert r.resumed and (tmp_path / "f").read_bytes() == payload
    assert served.requests[-1].headers.get("Range") == f"bytes={kept}-"   # ... which asks for the rest only


def test_a_stall_is_retried_and_resumed_within_the_call(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    served.add_faults("/data/file.bin", Fault(trickle_s=0.05, stall_after=200_000))
    r = download(served.url("/data/file.bin"), tmp_path / "f", expected_md5=md5(payload),
                 **{**FAST, "timeout_s": 0.5, "retries": 1})
    assert r.attempts == 2 and r.resumed and served.requests[1].headers.get("Range", "").startswith("bytes=2")


def test_the_deadline_ends_a_slow_but_steady_download(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    from pipeline_lib.errors import DownloadError

    served.add_faults("/data/file.bin", Fault(trickle_s=0.01, stall_after=1000))
    with pytest.raises(DownloadError, match=r"not finished within deadline_s=0.5 \(\d+ bytes received"):
        download(served.url("/data/file.bin"), tmp_path / "f", **{**FAST, "min_bytes": 0, "deadline_s": 0.5})
    assert len(served.requests) == 1                     # a deadline is not retried
    r = download(served.url("/data/file.bin"), tmp_path / "f", expected_md5=md5(payload), **FAST)
    assert r.resumed and (tmp_path / "f").read_bytes() == payload


def test_task_retries_do_not_multiply_the_configured_ones(prefect_harness, served: LocalHTTPServer,
                                                            tmp_path: Path):
    """The source_url task (Prefect retries 3 times on transient errors) with `retries: 1`: two GETs in all,
    where the task's retries used to add three more rounds of them after 5, 30 and 120 s."""
    from prefect import flow

    from pipeline_lib.errors import DownloadError
    from tasks import data
    from tasks.common import RunContext

    served.add_faults("/data/file.bin", *[Fault(status=503)] * 12)
    ctx = RunContext("run-r", str(tmp_path / "work"), str(tmp_path / "lineage.duckdb"))

    @flow
    def one() -> dict:
        return data.source_url(ctx, served.url("/data/file.bin"), None, {"retries": 1, "timeout_s": 5.0})

    with pytest.raises(DownloadError, match="giving up after 2 attempts"):
        one()
    assert [r.status for r in served.requests if r.method == "GET"] == [503, 503]


# --- downloads notice change ------------------------------------------------------------------------------

def test_a_file_changed_upstream_is_downloaded_again(served: LocalHTTPServer, payload: bytes, tmp_path: Path):
    """No checksum published: the copy here is kept while the server's size, ETag and Last-Modified match the
    ones recorded with it (one HEAD), and downloaded again, saying which changed, when they do not."""
    url, dest = served.url("/data/file.bin"), tmp_path / "f"
    first = download(url, dest, revalidate=True, **FAST)
    assert not first.skipped and first.refreshed is None
    stored = json.loads((tmp_path / "f.validators.json").read_text())
    assert stored["size"] == SIZE and stored["etag"] == f'"{md5(payload)}"' and stored["last_modified"]
    again = download(url, dest, revalidate=True, **FAST)
    assert again.skipped and [r.method for r in served.requests][-1] == "HEAD"
    changed = payload[:-1] + bytes([payload[-1] ^ 1])      # same size, same Last-Modified: only the ETag tells
    served.put("/data/file.bin", changed)
    third = download(url, dest, revalidate=True, **FAST)
    assert not third.skipped and dest.read_bytes() == changed
    assert third.refreshed.startswith("changed upstream: etag") and "size" not in third.refreshed
    assert download(url, dest, **FAST).skipped                # without revalidate: today's behaviour


@pytest.mark.parametrize("policy,fetched", [("download", True), ("trust", False)])
def test_a_server_without_validators_follows_the_policy(served: LocalHTTPServer, payload: bytes, tmp_path: Path,
                                                          policy: str, fetched: bool):
    url, dest = served.url("/data/file.bin"), tmp_path / "f"
    served.add_faults("/data/file.bin", Fault(no_validators=True), Fault(no_validators=True),
                      Fault(no_validators=True))
    download(url, dest, revalidate=True, **FAST)
    r = download(url, dest, revalidate=True, unvalidated=policy, **FAST)
    assert r.skipped is not fetched and dest.read_bytes() == payload
    if fetched:
        assert "no size, ETag or Last-Modified" in r.refreshed


def test_a_refresh_notices_a_changed_source_url(prefect_harness, http_server: LocalHTTPServer,  # noqa: F811
                                                tmp_path: Path):
    """The path a user takes: a `fasta` source URL whose file changed upstream between two refreshes. The second
    refresh downloads it again, ingests the new records, and its source step says which validator changed."""
    from flows.data_refresh import data_refresh
    from tests.conftest import ROOT
    from tests.helpers import family_fasta

    for name, seed in (("v1.fa", 1), ("v2.fa", 2)):
        family_fasta(tmp_path / name, seed=seed, families=3, mutants=2, unrelated=4 * seed)
    http_server.put("/proteins.fa", (tmp_path / "v1.fa").read_bytes())
    args = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{http_server.url('/proteins.fa')}]}}"]
    first = data_refresh(str(ROOT / "configs" / "demo.yaml"), args)
    http_server.put("/proteins.fa", (tmp_path / "v2.fa").read_bytes())
    second = data_refresh(str(ROOT / "configs" / "demo.yaml"), args)
    assert first.stages["ingest"].stats["records_in"] == 3 * 3 + 4
    assert second.stages["ingest"].stats["records_in"] == 3 * 3 + 8
    fetched = second.stages["source"].stats["downloads"][0]
    assert fetched["fetched"] and fetched["refreshed"].startswith("changed upstream:")
    assert "etag" in fetched["refreshed"]


def test_small_fetches_end_on_a_trickle_too(served: LocalHTTPServer, tmp_path: Path):
    from pipeline_lib.errors import DownloadError

    served.add_faults("/data/file.bin", Fault(trickle_s=0.05, stall_after=100))
    with pytest.raises(DownloadError, match="stalled"):
        fetch_bytes(served.url("/data/file.bin"), retries=0, timeout_s=0.5, backoff_s=0.01)
