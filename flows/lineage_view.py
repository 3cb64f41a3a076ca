"""``plm lineage runs | show | trace`` for people (``--json`` prints the rows as they are)."""
from __future__ import annotations

import json
from typing import Any

__all__ = ["print_runs", "print_show", "print_trace"]


def _when(t: Any) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t is not None else "-"


def _first_line(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[:width - 3] + "..."


def print_runs(rows: list[dict[str, Any]]) -> None:
    print(f"{'run id':<36}  {'flow':<13} {'status':<15} {'started':<19}  {'name':<16} error")
    for r in rows:
        print(f"{r['run_id']:<36}  {r['flow']:<13} {r['status']:<15} {_when(r['started_at']):<19}  "
              f"{r['name'] or '':<16} {_first_line(r.get('error'))}")


def print_show(found: dict[str, Any]) -> None:
    """``plm lineage show`` for people: a run with its steps, a step with its files, or an artifact with the
    steps that made and used it (``--json`` prints everything)."""
    if "run" in found:
        r = found["run"]
        print(f"run {r['run_id']}  {r['flow']}  {r['status']}  {r['name']}")
        print(f"  started {_when(r['started_at'])}  ended {_when(r['ended_at'])}  on {r['host']}")
        print(f"  workdir {r['workdir']}")
        if r.get("error"):
            print(f"  error: {_first_line(r['error'], 200)}")
        print(f"  {'stage':<17} {'status':<10} {'seconds':>8}  {'cache key':<16}  why it ran")
        for st in found["steps"]:
            why = "; ".join(st.get("why") or []) if st["status"] == "completed" else ""
            key = (st["cache_key"] or "")[:16]
            print(f"  {st['stage']:<17} {st['status']:<10} {st['duration_s'] or 0:>8.1f}  {key:<16}  {why}")
    elif "step" in found:
        st = found["step"]
        print(f"step {st['step_id']}  {st['stage']}  {st['status']}  run {st['run_id']}  cache key {st['cache_key']}")
        print(f"  params: {st['params']}")
        print(f"  stats:  {_first_line(st['stats'], 300)}")
        if st.get("error"):
            print(f"  error: {_first_line(st['error'], 200)}")
        for e in found["edges"]:
            print(f"  {e['direction']:<6}  {e['kind']:<16} {e['path']}")
    else:
        a = found["artifact"]
        print(f"artifact {a['artifact_id']}  {a['kind']}  {a['path']}")
        print(f"  sha256 {a['content_hash']}  rows {a['rows']}  bytes {a['bytes']}")
        for st in a["produced_by"]:
            print(f"  made by  {st['stage']} [{st['status']}] step {st['step_id']} run {st['run_id']}")
        for st in a["used_by"]:
            print(f"  used by  {st['stage']} step {st['step_id']} run {st['run_id']}")


def print_trace(chain: list[dict[str, Any]]) -> None:
    """The steps behind an artifact as a tree: each step under the one whose input it made."""
    for s in chain:
        pad = "   " * s["depth"]
        print(f"{pad}└─ {s['stage']} [{s['status']}] step {s['step_id']} run {s['run_id']}")
        release = json.loads(s["stats"] or "{}").get("release")
        if release:
            print(f"{pad}   release: {release}")
        tools = json.loads(s["tool_versions"] or "{}")
        if tools:
            print(f"{pad}   tools:  {tools}")
        print(f"{pad}   params: {s['params']}")
        for i in s["inputs"]:
            meta = json.loads(i["meta"] or "{}")
            extra = f"  {meta}" if meta else ""
            print(f"{pad}   input:  {i['kind']} {i['path']} sha256:{i['content_hash'][:16]}{extra}")
