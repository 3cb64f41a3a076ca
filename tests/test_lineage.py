"""Lineage store: records, trace, and concurrent writers."""
import threading
from datetime import timedelta

from pipeline_lib.lineage import ArtifactRecord, LineageStore, RunRecord, StepRecord, utcnow


def test_many_stores_on_one_file_from_many_threads(tmp_path):
    """Task threads each make their own LineageStore on the same file; writes must not collide."""
    db = tmp_path / "l.duckdb"
    LineageStore(db).start_run(RunRecord("r1", "f", "n", {}, "h", "v", str(tmp_path)))
    errors = []

    def work(i: int) -> None:
        try:
            store = LineageStore(db)
            t = utcnow()
            out = ArtifactRecord(f"/x/{i}", "thing", f"hash{i}", rows=i)
            store.record_step(StepRecord("r1", f"s{i}", {"i": i}, f"k{i}", "completed", t, t + timedelta(seconds=1),
                                         outputs=[out]))
            store.record_metrics("r1", None, [("m", i, float(i))])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = LineageStore(db)
    assert store.query("SELECT count(*) AS n FROM steps")[0]["n"] == 16
    assert store.query("SELECT count(*) AS n FROM metrics")[0]["n"] == 16
    chain = store.trace("/x/3")
    assert chain[0]["stage"] == "s3" and chain[0]["params"] == '{"i": 3}'
