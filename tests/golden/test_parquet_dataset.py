"""The sample traces as one Parquet dataset, queried with DuckDB as a fleet
would: every event, the header of each trace, and the same counts as the
Trace API's frames."""

from __future__ import annotations

import json

import pytest

from kvmtrace.present.parquet import export_dataset, export_parquet
from kvmtrace.trace import load

from ..support.paths import SAMPLES

duckdb = pytest.importorskip("duckdb", reason="duckdb is a test extra: ./setup.sh installs it")

TRACES = sorted(SAMPLES.glob("*.kvmtrace")) + sorted((SAMPLES / "series").glob("*.kvmtrace"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    results = export_dataset(TRACES, out)
    assert len(results) == len(TRACES)  # one recorded domain each
    return out


def sql(dataset, query: str, *params):
    con = duckdb.connect()
    files = str(dataset / "**" / "*.parquet")
    return con.execute(query.replace("DATASET", f"read_parquet('{files}', hive_partitioning = true)")
                       .replace("KV", f"parquet_kv_metadata('{files}')"), list(params)).fetchall()


def test_every_event_of_every_trace(dataset):
    assert len(TRACES) >= 8
    total = sum(len(load(t).events) for t in TRACES)
    assert sql(dataset, "SELECT count(*) FROM DATASET") == [(total,)]
    for t in TRACES:
        trace = load(t)
        name = trace.domains[0]["name"]
        kinds = trace.df_events()["kind"].value_counts()
        got = dict(sql(dataset, "SELECT kind, count(*) FROM DATASET WHERE domain = ? GROUP BY kind", name))
        assert got == {k: n for k, n in kinds.items() if n}, t.name


def test_every_header_and_trailer(dataset):
    rows = sql(dataset, "SELECT file_name, decode(key), decode(value) FROM KV WHERE decode(key) LIKE 'kvmtrace.%'")
    meta: dict[str, dict] = {}
    for file, key, value in rows:
        meta.setdefault(file.rsplit("/", 1)[1].rsplit("-", 1)[0], {})[key] = json.loads(value)
    assert set(meta) == {t.stem for t in TRACES}
    for t in TRACES:
        trace = load(t)
        assert meta[t.stem]["kvmtrace.header"] == trace.header, t.name
        assert meta[t.stem]["kvmtrace.trailer"] == trace.data.trailer, t.name
        assert meta[t.stem]["kvmtrace.source"]["events"] == len(trace.events)


def test_partitions(dataset):
    # one date partition per recording day: the samples are from 2026-11-25, demo-vcpu-time from 2026-12-05
    got = sorted(sql(dataset, "SELECT DISTINCT host, CAST(date AS VARCHAR) FROM DATASET"))
    assert got == [("vm", "2026-11-25"), ("vm", "2026-12-05")]
    domains = {d for (d,) in sql(dataset, "SELECT DISTINCT domain FROM DATASET")}
    assert domains == {load(t).domains[0]["name"] for t in TRACES}


def test_decoded_names_agree_with_the_trace_api(dataset):
    t = load(SAMPLES / "demo-finite.kvmtrace")
    name = t.domains[0]["name"]
    pio = dict(sql(dataset, "SELECT device, count(*) FROM DATASET WHERE domain = ? AND kind = 'PIO' GROUP BY 1", name))
    assert pio == {k: v for k, v in t.df_pio()["device"].value_counts().items() if v}
    exits = dict(sql(dataset, "SELECT reason_name, count(*) FROM DATASET WHERE domain = ? "
                              "AND kind = 'USERSPACE_EXIT' AND err >= 0 GROUP BY 1", name))
    assert exits == dict(zip(t.summary.userspace_exits["reason"], t.summary.userspace_exits["count"]))
    assert exits == {"IO": 1501, "MMIO": 258}  # the finite ROM: 997 + 503 + 1 port, 127 + 131 HPET


def test_counts_mode_trace_sums_to_its_report(dataset):
    t = load(SAMPLES / "demo-counts.kvmtrace")
    name = t.domains[0]["name"]
    got = sql(dataset, "SELECT sum(value) FROM DATASET WHERE domain = ? AND kind = 'PIO_COUNT'", name)
    assert got == [(int(t.summary.pio["count"].sum()),)]
    hist = dict(sql(dataset, "SELECT reason_name, sum(value) FROM DATASET WHERE domain = ? AND kind = 'HIST_COUNT' "
                             "AND latency = 'VMM_SERVICE' GROUP BY 1", name))
    assert hist == {"IO": 30498, "MMIO": 4896}


def test_single_file_reads_alike(tmp_path):
    src = SAMPLES / "demo-launch.kvmtrace"
    export_parquet(src, tmp_path / "l.parquet")
    con = duckdb.connect()
    f = str(tmp_path / "l.parquet")
    assert con.execute(f"SELECT count(*) FROM '{f}'").fetchall() == [(len(load(src).events),)]
    ioctls = con.execute(f"SELECT count(*) FROM '{f}' WHERE reason_name = 'KVM_CREATE_VCPU'").fetchall()
    assert ioctls == [(1,)]
