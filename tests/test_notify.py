"""Failure notifications: a failing flow POSTs its JSON to a real webhook server on 127.0.0.1, a
succeeding one does not; secrets never travel; `plm deploy` creates the Prefect automation when configured."""
import gzip
import json

import pytest

from flows.data_refresh import data_refresh
from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError
from pipeline_lib.lineage import LineageStore
from pipeline_lib.notify import failure_payload, notify_failure
from tests.conftest import ROOT
from tests.helpers import family_fasta
from tests.http_server import Fault, LocalHTTPServer

DEMO = str(ROOT / "configs" / "demo.yaml")
ONE_LEVEL = "cluster.levels=[{name: c50, min_seq_id: 0.5}]"  # one linclust level: seconds, not a minute


@pytest.fixture
def hook(tmp_path):
    with LocalHTTPServer(tmp_path / "www") as srv:
        yield srv


def _posts(srv):
    return [r for r in srv.requests if r.method == "POST"]


def test_failed_flow_posts_payload_and_succeeding_flow_does_not(prefect_harness, tmp_path, hook, monkeypatch):
    # the URL comes from the environment (a Slack-style token in the path must not reach lineage)
    secret_url = hook.url("/hooks/T0/B0/s3cr3tT0ken")
    monkeypatch.setenv("PLM_TEST_WEBHOOK", secret_url)
    cut = tmp_path / "cut.fa.gz"
    data = gzip.compress(b">a\n" + b"MKVLA" * 20000 + b"\n")
    cut.write_bytes(data[: len(data) // 2])
    work = tmp_path / "work"
    common = [f"workdir={work}", "notify.webhook_url_env=PLM_TEST_WEBHOOK", ONE_LEVEL]
    with pytest.raises(Exception, match="cut.fa.gz"):
        data_refresh(DEMO, [*common, f"source={{kind: fasta, paths: [{cut}]}}"])
    posts = _posts(hook)
    assert len(posts) == 1 and posts[0].path == "/hooks/T0/B0/s3cr3tT0ken"
    assert posts[0].headers["Content-Type"] == "application/json"
    body = json.loads(posts[0].body)
    store = LineageStore(work / "lineage.duckdb")
    run = store.runs()[0]
    assert run["status"] == "failed"
    assert body["run_id"] == run["run_id"] and body["flow"] == "data_refresh" and body["config"] == "demo"
    assert body["state"] == "failed" and body["stage"] == "ingest" and "cut.fa.gz" in body["error"]
    assert body["lineage"] == str(work / "lineage.duckdb") and body["ui_url"]
    assert "s3cr3tT0ken" not in json.dumps(store.query("SELECT config FROM runs"))

    fa = tmp_path / "ok.fa"
    family_fasta(fa, families=2, mutants=1, unrelated=2, length=60)
    data_refresh(DEMO, [*common, f"source={{kind: fasta, paths: [{fa}]}}"])
    assert len(_posts(hook)) == 1  # success: no second POST


@pytest.mark.parametrize("flow_fn", ["data_refresh", "end_to_end"])
def test_config_that_fails_at_run_time_is_a_failed_run_with_a_webhook(prefect_harness, tmp_path, hook, flow_fn):
    # the override naming an unknown key fails the run; the others still say where its lineage and webhook are
    from flows.end_to_end import end_to_end

    work = tmp_path / "work"
    good = [f"workdir={work}", f"notify.webhook_url={hook.url('/hook')}"]
    fn = {"data_refresh": data_refresh, "end_to_end": end_to_end}[flow_fn]
    with pytest.raises(ConfigError, match="clusterr"):
        fn(DEMO, [good[0], "clusterr.threads=4", good[1]])
    runs = LineageStore(work / "lineage.duckdb").query("SELECT run_id, flow, status, error FROM runs")
    assert [(r["flow"], r["status"]) for r in runs] == [(flow_fn, "failed")]
    assert "clusterr" in runs[0]["error"] and "ConfigError" in runs[0]["error"]
    posts = _posts(hook)
    assert len(posts) == 1
    body = json.loads(posts[0].body)
    assert body["run_id"] == runs[0]["run_id"] and body["flow"] == flow_fn and "clusterr" in body["error"]

    # a file edited after deploying so that it no longer validates: its workdir and notify sections still say
    # where the failed run goes
    edited = tmp_path / "edited.yaml"
    edited.write_text(f"name: edited\nworkdir: {tmp_path / 'work2'}\nnotify:\n  webhook_url: {hook.url('/e')}\n"
                      "clusterr:\n  threads: 4\n")
    with pytest.raises(ConfigError, match="clusterr"):
        fn(str(edited), [])
    runs = LineageStore(tmp_path / "work2" / "lineage.duckdb").query("SELECT name, flow, status, error FROM runs")
    assert [(r["name"], r["flow"], r["status"]) for r in runs] == [("edited", flow_fn, "failed")]
    assert [json.loads(r.body)["config"] for r in _posts(hook)][1:] == ["edited"]

    # a config file that does not load at all has no lineage file to name: the error still reaches the caller
    broken = tmp_path / "broken.yaml"
    broken.write_text("workdir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        fn(str(broken), [])


def test_payload_redacts_credentials_and_delivery_problems_do_not_raise(tmp_path, hook):
    exc = RuntimeError("GET https://user:hunter2@mirror.example/u50.fa.gz?token=abc123 failed")
    payload = failure_payload(flow="data_refresh", run_id="r1", config_name="c", exc=exc,
                              lineage_path=tmp_path / "none.duckdb")
    text = json.dumps(payload)
    assert "hunter2" not in text and "abc123" not in text and "mirror.example" in text
    assert payload["stage"] is None and payload["state"] == "failed"
    assert failure_payload(flow="f", run_id="r", config_name="c", exc=KeyboardInterrupt(),
                           lineage_path=tmp_path / "none.duckdb")["state"] == "crashed"

    cfg = load_config(None, [f"notify.webhook_url={hook.url('/h')}"]).notify
    args = dict(flow="f", run_id="r", config_name="c", exc=exc, lineage_path=tmp_path / "none.duckdb")
    hook.add_faults("/h", Fault(status=500))
    assert notify_failure(cfg, **args) is False  # a 500 is logged, not raised
    assert notify_failure(cfg, **args) is True
    assert [r.status for r in _posts(hook)] == [500, 200]
    closed = cfg.model_copy(update={"webhook_url": "http://127.0.0.1:9/h"})  # nothing listens on port 9
    assert notify_failure(closed, **args) is False


def test_webhook_host_must_be_allowed(tmp_path, hook, monkeypatch):
    with pytest.raises(ConfigError, match="not in allowed_hosts"):
        load_config(None, ["notify.webhook_url=https://hooks.example.com/x", "notify.allowed_hosts=[alerts.internal]"])
    monkeypatch.setenv("PLM_TEST_WEBHOOK", hook.url("/h"))
    cfg = load_config(None, ["notify.webhook_url_env=PLM_TEST_WEBHOOK", "notify.allowed_hosts=[alerts.internal]"])
    assert notify_failure(cfg.notify, flow="f", run_id="r", config_name="c", exc=ValueError("x"),
                          lineage_path=tmp_path / "none.duckdb") is False
    assert _posts(hook) == []


def test_deploy_creates_failure_automation(prefect_harness, tmp_path, hook):
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook

    from flows.deploy import deploy

    url = hook.url("/automation")
    dep_id = deploy(DEMO, "0 3 * * 1", name="notify-test", work_pool="plm-notify-test", paused=True,
                    overrides=[f"notify.webhook_url={url}", "notify.automation=true"])
    automation = Automation.read(name="plm data_refresh/notify-test: failed or crashed")
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert automation.trigger.match_related.root == {"prefect.resource.id": f"prefect.deployment.{dep_id}"}
    action = automation.actions[0]
    assert action.type == "call-webhook"
    assert Webhook.load("plm-data-refresh-notify-test-failure").url.get_secret_value() == url
    assert '"config": "demo"' in action.payload
    # deploying again replaces the automation instead of adding a second one
    deploy(DEMO, "0 3 * * 1", name="notify-test", work_pool="plm-notify-test", paused=True,
           overrides=[f"notify.webhook_url={url}", "notify.automation=true"])
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name("plm data_refresh/notify-test: failed or crashed")) == 1
