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
    args = ["data", str(ROOT / "configs" / "demo.yaml"), "--set", f"workdir={tmp_path / 'w'}",
            "--set", f"source={{kind: fasta, paths: [{tmp_path / 'nope.fa'}]}}"]
    quiet = _plm(*args, cwd=tmp_path)
    assert quiet.returncode == 2
    assert f"plm: error: file {tmp_path / 'nope.fa'}: FASTA input not found" in quiet.stderr
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.splitlines()) < 20, quiet.stderr
    loud = _plm("--debug", *args, cwd=tmp_path)
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr
