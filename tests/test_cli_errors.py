"""What a user sees when a flow fails: one `plm: error:` line naming file and reason, and Prefect's one-line
state messages, not the tracebacks (those behind `plm --debug`, and always in the Prefect UI and its log)."""
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PLM = str(Path(sys.executable).parent / "plm")


def _plm(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([PLM, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_failed_flow_is_a_few_lines_and_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "proteins.fa"
    bad.write_bytes(b">x\n" + bytes(range(256)) * 4 + b"\n")  # binary: the ingest stage refuses it
    args = ["data", str(ROOT / "configs" / "demo.yaml"), "--set", f"workdir={tmp_path / 'w'}",
            "--set", f"source={{kind: fasta, paths: [{bad}]}}"]
    quiet = _plm(*args, cwd=tmp_path)
    assert quiet.returncode == 2
    assert f"plm: error: file {bad}" in quiet.stderr, quiet.stderr
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.splitlines()) < 20, quiet.stderr
    loud = _plm("--debug", *args, cwd=tmp_path)
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr


def test_what_can_be_checked_is_checked_before_prefect_starts(tmp_path):
    """A missing input, a split that the config leaves empty and a DMS file that is not there: all named at
    once, exit 2, before any flow run (nothing in the workdir, no Prefect output)."""
    args = ["run", str(ROOT / "configs" / "demo.yaml"), "--set", f"workdir={tmp_path / 'w'}",
            "--set", f"source={{kind: fasta, paths: [{tmp_path / 'nope.fa'}, {tmp_path / '*.fasta'}]}}",
            "--set", "train.enabled=true", "--set", "evaluate.enabled=true", "--set", "split.test_fraction=0",
            "--set", f"evaluate.dms.files=[{{path: {tmp_path / 'assay.csv'}}}]"]
    out = _plm(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"source.paths.0: {tmp_path / 'nope.fa'}: no such file or directory" in out.stderr
    assert f"source.paths.1: {tmp_path / '*.fasta'}: the pattern matches no file" in out.stderr
    assert "evaluate.perplexity.splits.1: split 'test' is empty (split.test_fraction is 0)" in out.stderr
    assert f"evaluate.dms.files.0.path: {tmp_path / 'assay.csv'}: no such file or directory" in out.stderr
    assert not (tmp_path / "w").exists() and "flow run" not in out.stderr.lower() + out.stdout.lower()
