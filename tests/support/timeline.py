"""What any Perfetto export must satisfy, checked on the JSON document it wrote."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from kvmtrace.present.perfetto import export_perfetto


def ns(us: float) -> int:
    return round(us * 1000)


def check_timeline(doc: dict) -> dict[str, list[dict]]:
    """What any export must satisfy (the rules Perfetto's importer applies); events by phase.

    Every event has a phase, ts and a named pid; slices have dur >= 0, a
    name and a named thread; slices on one track nest (sorted by start, a
    slice either ends by its parent's end or starts at/after it: touching is
    fine, a partial overlap is not); counters carry numbers.
    """
    events = doc["traceEvents"]
    assert isinstance(doc.get("otherData"), dict)
    procs, threads = set(), set()
    for e in events:
        if e["ph"] == "M":
            assert e["name"] in {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}
            if e["name"] == "process_name":
                assert e["args"]["name"]
                procs.add(e["pid"])
            elif e["name"] == "thread_name":
                assert e["args"]["name"]
                threads.add((e["pid"], e["tid"]))
    by_phase: dict[str, list[dict]] = defaultdict(list)
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        ph = e["ph"]
        by_phase[ph].append(e)
        if ph == "M":
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        assert e["pid"] in procs, f"pid {e['pid']} has no process_name"
        assert isinstance(e["name"], str) and e["name"], e
        if ph in ("X", "i"):
            assert (e["pid"], e["tid"]) in threads, f"track {(e['pid'], e['tid'])} has no thread_name"
        if ph == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            tracks[(e["pid"], e["tid"])].append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])))
        elif ph == "i":
            assert e["s"] == "t"
        elif ph == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values())
        else:
            raise AssertionError(f"unexpected phase {ph!r}")
    for key, slices in tracks.items():
        slices.sort(key=lambda s: (s[0], -s[1]))
        stack: list[int] = []
        for s, end in slices:
            while stack and stack[-1] <= s:
                stack.pop()
            assert not stack or end <= stack[-1], f"slices partially overlap on track {key} at {s} ns"
            stack.append(end)
    return by_phase


def export(trace, path: Path, **kw) -> tuple[dict, dict[str, list[dict]], object]:
    res = export_perfetto(trace, path, **kw)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    return doc, check_timeline(doc), res


def cat(by_phase, category: str, ph: str = "X") -> list[dict]:
    return [e for e in by_phase[ph] if e.get("cat") == category]
