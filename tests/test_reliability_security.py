"""Security checks: no shell, no unsafe deserialisation, YAML only through safe_load, no credentials in lineage.

    .venv/bin/pytest -q tests/test_reliability_security.py

The source checks walk the AST of every ``*.py`` under ``pipeline_lib/``, ``tasks/`` and ``flows/`` (not a
grep: comments and strings do not count, ``model.eval()`` is not ``eval``). The credentials check runs the
data flow on a config whose FASTA is a URL with ``user:password@`` and a token (a local server answers 404,
so the run fails) and then searches every table of the lineage database for the secrets.
"""
from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from tests.conftest import ROOT

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
