"""Security checks: no shell, no unsafe deserialisation, YAML only through safe_load, no credentials in lineage.

    .venv/bin/pytest -q tests/test_reliability_security.py

The source checks walk the AST of every ``*.py`` under ``pipeline_lib/``, ``tasks/`` and ``flows/`` (not a
grep: comments and strings do not count, ``model.eval()`` is not ``eval``). The credentials check runs the
data flow on a config whose FASTA is a URL with ``user:password@`` and a token (a local server answers 404,
so the run fails) and then searches every table of the lineage database for the secrets. The sources'
``allowed_hosts`` are tried against a real server on 127.0.0.1 (a refused host gets no request, not even
through a redirect), and ``plm dashboard`` is started for real to see which address it listens on.
"""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from conftest_http import http_server  # noqa: F401  (fixture)
from http_server import Fault

from pipeline_lib.config import FastaSource, UnirefSource, load_config
from pipeline_lib.errors import ConfigError
from pipeline_lib.sources.download import PermanentDownloadError
from pipeline_lib.sources.fasta_files import resolve_fasta_inputs
from pipeline_lib.sources.release import source_identity
from pipeline_lib.sources.uniref import download_uniref
from tests.conftest import ROOT
from tests.test_uniref import BASE, fake_ftp

SOURCES = sorted(p for d in ("pipeline_lib", "tasks", "flows") for p in (ROOT / d).rglob("*.py"))

FORBIDDEN_CALLS = {
    "os.system": "runs a shell", "os.popen": "runs a shell", "subprocess.getoutput": "runs a shell",
    "subprocess.getstatusoutput": "runs a shell", "eval": "evaluates text as code", "exec": "runs text as code",
    "pickle.load": "unpickling runs code", "pickle.loads": "unpickling runs code",
    "marshal.loads": "unmarshalling untrusted bytes", "tempfile.mktemp": "racy temporary name",
    "yaml.load": "use yaml.safe_load", "yaml.load_all": "use yaml.safe_load_all",
    "yaml.unsafe_load": "use yaml.safe_load", "yaml.unsafe_load_all": "use yaml.safe_load_all",
    "yaml.full_load": "use yaml.safe_load", "yaml.full_load_all": "use yaml.safe_load_all",
}
FORBIDDEN_NAMES = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader",
                   "yaml.CFullLoader"}
FORBIDDEN_IMPORTS = {("os", "system"), ("os", "popen"), ("yaml", "load"), ("yaml", "unsafe_load"),
                     ("yaml", "full_load"), ("yaml", "Loader"), ("yaml", "UnsafeLoader"), ("pickle", "loads"),
                     ("pickle", "load")}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def findings(path: Path, root: Path = ROOT) -> Iterator[str]:
    """Every risky construct in one file, as ``file:line: what``."""
    tree = ast.parse(path.read_text(), str(path))
    where = lambda node: f"{path.relative_to(root)}:{node.lineno}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in FORBIDDEN_CALLS:
                yield f"{where(node)}: {name}() ({FORBIDDEN_CALLS[name]})"
            if name.startswith(("os.spawn", "os.exec")):
                yield f"{where(node)}: {name}() (use subprocess with an argv list)"
            kw = {k.arg: k.value for k in node.keywords}
            if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
                yield f"{where(node)}: {name}(shell=...) (pass an argv list, never a shell)"
            if "verify" in kw and isinstance(kw["verify"], ast.Constant) and kw["verify"].value is False:
                yield f"{where(node)}: {name}(verify=False) (TLS verification off)"
            if name.endswith("torch.load") and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                    and kw["weights_only"].value is True):
                yield f"{where(node)}: torch.load without weights_only=True (unpickles code)"
            if name.endswith(".extractall") and "filter" not in kw:
                yield f"{where(node)}: {name}() without filter= (path traversal)"
        elif isinstance(node, ast.Attribute) and dotted(node) in FORBIDDEN_NAMES:
            yield f"{where(node)}: {dotted(node)} (YAML loader that builds arbitrary objects)"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_IMPORTS:
                    yield f"{where(node)}: from {node.module} import {alias.name}"


def test_sources_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"pipeline_lib/config.py", "pipeline_lib/tools/base.py", "tasks/common.py", "flows/cli.py"} <= names


def test_no_shell_no_unsafe_loading_anywhere():
    problems = [f for path in SOURCES for f in findings(path)]
    assert problems == []


def test_the_scan_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess, yaml, torch\nfrom os import system\n"
                   "os.system('ls')\nsubprocess.run('ls', shell=True)\nsubprocess.run(['ls'], shell=flag)\n"
                   "yaml.load(text, Loader=yaml.Loader)\neval('1')\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
                   "model.eval()\nsubprocess.run(['ls'], shell=False)\nyaml.safe_load(text)\n"
                   "torch.load(f, weights_only=True)\n")
    got = list(findings(bad, root=tmp_path))
    assert len(got) == 9, got  # the last four lines are fine


def test_yaml_is_parsed_only_with_safe_load():
    uses = [f"{p.relative_to(ROOT)}:{n.lineno}: {dotted(n.func)}" for p in SOURCES
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call)
            and dotted(n.func).startswith("yaml.") and dotted(n.func) not in ("yaml.safe_load", "yaml.safe_load_all",
                                                                              "yaml.safe_dump", "yaml.dump")]
    assert uses == []


# --- credentials ---------------------------------------------------------------------------------------

class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def not_found_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


PASSWORD, TOKEN = "Pw-8f3kQz-secret", "Tk-77xq-secret"


def lineage_text(db: Path) -> str:
    """Every value of every lineage table, as text (what a user or a dashboard could read back)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return "\n".join(str(row) for t in tables for row in con.execute(f'SELECT * FROM "{t}"').fetchall())
    finally:
        con.close()


def test_lineage_never_stores_url_credentials(prefect_harness, not_found_server, tmp_path):
    from flows.data_refresh import data_refresh

    url = f"http://alice:{PASSWORD}@{not_found_server}/private/x.fa?token={TOKEN}"
    workdir = tmp_path / "work"
    with pytest.raises(Exception) as err:
        data_refresh(str(ROOT / "configs" / "demo.yaml"),
                     [f"workdir={workdir}", f'source={{kind: fasta, paths: ["{url}"]}}'])
    assert "404" in str(err.value) and PASSWORD not in str(err.value) and TOKEN not in str(err.value)
    text = lineage_text(workdir / "lineage.duckdb")
    assert "alice" in text or "***" in text  # the run is there (redacted), not missing
    assert PASSWORD not in text and TOKEN not in text
    leaked = [p for p in workdir.rglob("*") if p.is_file() and p.suffix != ".duckdb"
              and (PASSWORD.encode() in p.read_bytes() or TOKEN.encode() in p.read_bytes())]
    assert leaked == []


def test_config_errors_never_echo_url_credentials():
    from pipeline_lib.config import load_config
    from pipeline_lib.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["storage.url=s3://bob:hunter2@bucket/prefix"])
    assert "storage.url" in str(err.value) and "hunter2" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a wrong type elsewhere: the URL value is shown redacted too
        load_config(None, ["source.kind=fasta", "source.paths=https://bob:hunter2@example.org/x.fa?token=abc"])
    assert "hunter2" not in str(err.value) and "token=abc" not in str(err.value)
    # and so is the override each error line names, and an override that does not parse or index
    for bad in (["storage.url=s3://bob:hunter2@bucket/prefix: ["], ["cluster.levels.9.name=https://b:hunter2@x"],
                ["https://bob:hunter2@example.org"]):
        with pytest.raises(ConfigError) as err:
            load_config(None, bad)
        assert "hunter2" not in str(err.value), str(err.value)


# --- URL allow-lists of the sources ----------------------------------------------------------------

def test_source_hosts_outside_allowed_hosts_are_refused_before_any_request(http_server, tmp_path):  # noqa: F811 (the fixture)
    """``source.allowed_hosts`` (uniref and fasta) refuses other hosts when the config loads; the real
    server on 127.0.0.1 sees no request. Listing its host lets the same download through."""
    fake_ftp(http_server)
    base, fasta_url = http_server.url(BASE), http_server.url("/x.fa")
    with pytest.raises(ConfigError, match=r"source.*base_url: host '127\.0\.0\.1' is not in allowed_hosts "
                                          r"\['ftp\.uniprot\.org'\]"):
        load_config(None, [f"source={{kind: uniref, base_url: '{base}', allowed_hosts: [ftp.uniprot.org]}}"])
    with pytest.raises(ConfigError, match=r"source.*paths: host '127\.0\.0\.1' is not in allowed_hosts"):
        load_config(None, [f"source={{kind: fasta, paths: ['{fasta_url}'], allowed_hosts: [example.org]}}"])
    assert http_server.requests == []
    cfg = load_config(None, [f"source={{kind: uniref, base_url: '{base}', allowed_hosts: ['127.0.0.1']}}"])
    result, info = download_uniref(cfg.source, tmp_path, backoff_s=0, progress=False)
    assert info.release == "2025_03" and result.path.is_file()


def test_a_redirect_off_the_allowed_hosts_is_never_followed(http_server, tmp_path):  # noqa: F811 (the fixture)
    """Every request the sources make carries the allow-list, and it is checked on each redirect *before*
    the redirect is followed: here the server sends the metalink, a FASTA URL and a HEAD to ``localhost``
    (the same server under a name that is not allowed), and no request reaches it."""
    fake_ftp(http_server)
    http_server.put("/x.fa", b">a\nMKV\n")
    folder = f"{BASE}/uniref/uniref50"
    elsewhere = http_server.url("/").replace("127.0.0.1", "localhost")
    away = lambda path: Fault(status=302, headers={"Location": elsewhere + path.lstrip("/")})  # noqa: E731
    uniref = UnirefSource(base_url=http_server.url(BASE), allowed_hosts=["127.0.0.1"], retries=0)
    fasta = FastaSource(paths=[http_server.url("/x.fa")], allowed_hosts=["127.0.0.1"])
    attempts = [
        (f"{folder}/RELEASE.metalink", lambda: download_uniref(uniref, tmp_path / "u", backoff_s=0, progress=False)),
        (f"{folder}/RELEASE.metalink", lambda: source_identity(uniref, tmp_path / "d")),
        ("/x.fa", lambda: resolve_fasta_inputs(fasta.paths, tmp_path / "f", allowed_hosts=fasta.allowed_hosts)),
        ("/x.fa", lambda: source_identity(fasta, tmp_path / "d")),  # a HEAD request
    ]
    for path, attempt in attempts:
        http_server.requests.clear()
        http_server.add_faults(path, away(path))
        with pytest.raises(PermanentDownloadError, match="host 'localhost' is not one of"):
            attempt()
        assert [r.path for r in http_server.requests] == [path], "the redirect was followed"
    # the same redirect with no allow-list is followed: the faults above were real redirects
    http_server.requests.clear()
    http_server.add_faults("/x.fa", away("/x.fa"))
    assert resolve_fasta_inputs(fasta.paths, tmp_path / "g")[0].read_bytes() == b">a\nMKV\n"
    assert [r.path for r in http_server.requests] == ["/x.fa", "/x.fa"]


# --- dashboard binding -----------------------------------------------------------------------------

def listening_address(port: int) -> str:
    """The local IPv4 address a socket listens on at ``port`` (from /proc/net/tcp), e.g. '127.0.0.1'."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if int(local_port, 16) == port and state == "0A":  # 0A: LISTEN
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    raise AssertionError(f"nothing listens on port {port}")


def start_dashboard(db: Path, *host: str) -> tuple[subprocess.Popen, list[str], int]:
    """Start ``plm dashboard`` on a free port; returns the process, its output up to the URL line, the port."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("plm")), "dashboard", "--db", str(db), "--port",
                             "0", *host], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    killer = threading.Timer(90, proc.kill)  # a dashboard that never says where it listens fails, not hangs
    killer.start()
    lines: list[str] = []
    try:
        while (line := proc.stdout.readline()) and not line.startswith("plm dashboard: http://"):
            lines.append(line)
        assert line, f"plm dashboard ended without serving:\n{''.join(lines)}"
    finally:
        killer.cancel()
    return proc, lines + [line], int(line.split("/")[2].rsplit(":", 1)[1])


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc/net/tcp")
def test_dashboard_binds_loopback_by_default_and_warns_otherwise(tmp_path):
    from flows.cli import _parser
    from pipeline_lib.lineage import LineageStore

    assert _parser().parse_args(["dashboard"]).host == "127.0.0.1"
    db = tmp_path / "lineage.duckdb"
    LineageStore(db)
    for host, address, warned in (((), "127.0.0.1", False), (("--host", "0.0.0.0"), "0.0.0.0", True)):
        proc, out, port = start_dashboard(db, *host)
        try:
            assert listening_address(port) == address, out
            assert any("without authentication" in line for line in out) == warned, out
        finally:
            proc.kill()
            proc.wait()
