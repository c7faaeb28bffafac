"""The timeline file: Chrome Trace Event JSON streamed a chunk at a time, renamed into place when complete."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from kvmtrace.errors import OutputError
from kvmtrace.present.perfetto.sources import _Source

_CHUNK = 50_000  # events formatted per write


def _open(path: Path, tmp: Path):
    try:
        if path.name.endswith(".gz"):
            return gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6)
        return open(tmp, "w", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write the timeline {path}: {e.strerror}", "choose a writable path") from e


def _write(path: Path, meta: list[str], sources: list[_Source], tids: list[np.ndarray], origin: int,
           counters: list[str], other: dict) -> None:
    """Stream the JSON to ``path`` (through a ``.part`` file renamed when complete)."""
    tmp = path.with_name(path.name + ".part")
    fh = _open(path, tmp)
    try:
        with fh:
            fh.write('{"traceEvents":[\n')
            sep = ""
            if meta:
                fh.write(",\n".join(meta))
                sep = ",\n"
            for s, tid in zip(sources, tids):
                rows = np.flatnonzero(s.keep)
                # Per track in time order, a parent before the children that start with it.
                rows = rows[np.lexsort((-s.dur[rows], s.start[rows], tid[rows], s.pid[rows]))]
                for c0 in range(0, len(rows), _CHUNK):
                    chunk = rows[c0:c0 + _CHUNK]
                    ts_l = ((s.start[chunk] - origin) / 1000).tolist()
                    dur_l = (s.dur[chunk] / 1000).tolist()
                    lines = [
                        f'{{"ph":"X","ts":{a:.3f},"dur":{d:.3f},"pid":{p},"tid":{t},{b}}}' if d >= 0 else
                        f'{{"ph":"i","ts":{a:.3f},"s":"t","pid":{p},"tid":{t},{b}}}'
                        for a, d, p, t, b in zip(ts_l, dur_l, s.pid[chunk].tolist(), tid[chunk].tolist(),
                                                 s.body(chunk))
                    ]
                    fh.write(sep)
                    fh.write(",\n".join(lines))
                    sep = ",\n"
            if counters:
                fh.write(sep)
                fh.write(",\n".join(counters))
            fh.write('\n],\n"otherData":')
            fh.write(json.dumps(other, ensure_ascii=False))
            fh.write("}\n")
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"writing the timeline {path} failed: {e.strerror or e}",
                          "free space or choose another path") from e
