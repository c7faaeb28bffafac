"""`kvmtrace serve`'s exposition without the kernel: its collector fed the
aggregate rows a LiveCounter reads, built here by hand."""

from __future__ import annotations

import re
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kvmtrace.errors import ExitCode, UsageError
from kvmtrace.kernel.events import (AGGREGATE, EVENT_DTYPE, PADDING, VCPU_TIME_IN_GUEST, EventFlag, EventKind,
                                    Latency)
from kvmtrace.live import serve
from kvmtrace.live.serve import BUCKETS, KvmtraceCollector, check_port, histogram

from ..support.cli import run

PID = 4242
TID = 4243  # its vCPU 0 thread
IO, MMIO = 2, 6  # KVM_EXIT_*
VMX, SVM = 1, 2
VMX_IO_INSTRUCTION, VMX_EPT_VIOLATION, SVM_NPF = 30, 48, 0x400
FAILED_VMENTRY = 0x80000000


def rows(*specs: dict) -> pd.DataFrame:
    """Aggregate rows (kind | AGGREGATE, value = count), as LiveCounter.cumulative() gives."""
    a = np.zeros(len(specs), EVENT_DTYPE)
    for i, s in enumerate(specs):
        a[i]["pid"] = PID
        for k, v in s.items():
            a[i][k] = v
        a[i]["kind"] = int(s["kind"]) | AGGREGATE
    df = pd.DataFrame({n: a[n] for n in EVENT_DTYPE.names if n not in PADDING})
    df.index.name = "event"
    return df


def hist(which: Latency, reason: int, bucket: int, n: int, isa: int = 0) -> dict:
    return {"kind": EventKind.HIST, "op": int(which), "reason": reason, "isa": isa, "port": bucket, "value": n}


def scrape(frame: pd.DataFrame, lost: int = 0) -> dict[str, list[tuple[dict, float]]]:
    """The collector's samples by name: [(labels, value)], via the text exposition."""
    from prometheus_client import CollectorRegistry, generate_latest

    guest = SimpleNamespace(pid=PID, name="web1", memory_map_text=None, vcpu_threads={0: TID})
    live = SimpleNamespace(all_domains=False, guests=[guest], cumulative=lambda: frame,
                           session=SimpleNamespace(probes=SimpleNamespace(
                               counters=lambda: SimpleNamespace(lost_total=lost))))
    reg = CollectorRegistry()
    reg.register(KvmtraceCollector(live))
    out: dict[str, list] = defaultdict(list)
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        out[m.group(1)].append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))))
    return out


FRAME = rows(
    {"kind": EventKind.USERSPACE_EXIT, "reason": IO, "value": 600, "flags": int(EventFlag.RUN_FIELDS),
     "port": 0x80, "size": 1, "op": 1},
    {"kind": EventKind.USERSPACE_EXIT, "reason": IO, "value": 400, "flags": int(EventFlag.RUN_FIELDS),
     "port": 0x80, "size": 2, "op": 1},
    {"kind": EventKind.USERSPACE_EXIT, "reason": MMIO, "value": 101, "flags": int(EventFlag.RUN_FIELDS),
     "gpa": 0xFED00000, "size": 4, "op": 2},
    {"kind": EventKind.EXIT, "isa": VMX, "reason": VMX_IO_INSTRUCTION, "value": 1009},
    {"kind": EventKind.EXIT, "isa": VMX, "reason": VMX_EPT_VIOLATION, "value": 97},
    {"kind": EventKind.EXIT, "isa": VMX, "reason": VMX_EPT_VIOLATION | FAILED_VMENTRY, "value": 2},
    # port 0x80 written with two sizes: one series, not two with the same labels
    {"kind": EventKind.PIO, "port": 0x80, "size": 1, "op": 1, "value": 600},
    {"kind": EventKind.PIO, "port": 0x80, "size": 2, "op": 1, "value": 400},
    {"kind": EventKind.PIO, "port": 0x40, "size": 1, "op": 0, "value": 37},
    {"kind": EventKind.MMIO, "gpa": 0xFED00000, "size": 4, "op": 2, "value": 101},
    hist(Latency.VMM_SERVICE, IO, 11, 990),  # [1024, 2048) ns
    hist(Latency.VMM_SERVICE, IO, 15, 10),
    hist(Latency.VMM_SERVICE, MMIO, 12, 101),
    hist(Latency.EXIT_HANDLING, VMX_IO_INSTRUCTION, 10, 1009, isa=VMX),
    hist(Latency.EXIT_HANDLING, VMX_EPT_VIOLATION, 13, 97, isa=VMX),
    hist(Latency.EXIT_HANDLING, VMX_EPT_VIOLATION | FAILED_VMENTRY, 14, 2, isa=VMX),
    # vCPU 0's nanoseconds per state (VcpuState: guest 0, vmm 2, preempted 4)
    {"kind": EventKind.VCPU_TIME, "tid": TID, "op": 0, "value": 3_000_000_000},
    {"kind": EventKind.VCPU_TIME, "tid": TID, "op": 2, "value": 500_000_000},
    {"kind": EventKind.VCPU_TIME, "tid": TID, "op": 4, "value": 1_500_000_000},
    # ... and the in-guest part of its guest time (a VMX host: kvm_exit/kvm_entry fired)
    {"kind": EventKind.VCPU_TIME, "tid": TID, "op": VCPU_TIME_IN_GUEST, "value": 2_250_000_000},
)


@pytest.fixture(scope="module")
def samples():
    return scrape(FRAME, lost=3)


def test_le_bounds_are_every_kernel_bucket_upper_bound():
    # bcc's bpf_log2l gives 1..64 (the bit length of the ns interval): bucket
    # b holds [2^(b-1), 2^b) ns, so its upper bound is 2^b ns.
    assert len(BUCKETS) == 64
    assert BUCKETS[0] == 2e-9 and BUCKETS[10] == 2.048e-6 and BUCKETS[-1] == 2.0 ** 64 / 1e9


def test_every_histogram_series_has_the_same_le_set(samples):
    want = [*(f"{b:.17g}" for b in BUCKETS), "+Inf"]
    for name in ("kvmtrace_vmm_service_seconds_bucket", "kvmtrace_exit_handling_seconds_bucket"):
        per = defaultdict(list)
        for labels, v in samples[name]:
            series = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            per[series].append((labels["le"], v))
        assert len(per) >= 2, name
        for series, buckets in per.items():
            assert [float(le) for le, _ in buckets] == [float(x) for x in want], series
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{series} is not cumulative"


def test_histogram_counts_sit_in_their_kernel_buckets(samples):
    io = {labels["le"]: v for labels, v in samples["kvmtrace_vmm_service_seconds_bucket"]
          if labels["reason"] == "IO"}
    assert io["1.024e-06"] == 0  # below bucket 11
    assert io["2.048e-06"] == 990  # bucket 11's upper bound 2^11 ns
    assert io["1.6384e-05"] == 990 and io["3.2768e-05"] == 1000  # bucket 15
    assert io["+Inf"] == 1000
    count = {labels["reason"]: v for labels, v in samples["kvmtrace_vmm_service_seconds_count"]}
    assert count == {"IO": 1000, "MMIO": 101}


def test_histogram_function_range_and_sum():
    buckets, est = histogram({1: 3, 64: 1, 70: 2})  # 70 cannot happen: only +Inf holds it
    assert buckets[0] == ("2e-09", 3) and buckets[-2][1] == 4 and buckets[-1] == ("+Inf", 6)
    assert len(buckets) == 65
    # bucket 1 holds 0 and 1 ns (midpoint 1 ns); bucket 64 [2^63, 2^64) ns
    assert est == pytest.approx((3 * 1 + 1.5 * 2.0 ** 63) / 1e9)
    _, est = histogram({11: 2})
    assert est == pytest.approx(2 * 1536e-9)


def test_exit_handling_joins_exits_total_by_isa_and_reason(samples):
    exits = {(l["isa"], l["reason"]): v for l, v in samples["kvmtrace_exits_total"]}
    handling = {(l["isa"], l["reason"]): v for l, v in samples["kvmtrace_exit_handling_seconds_count"]}
    assert exits == {("VMX", "IO_INSTRUCTION"): 1009, ("VMX", "EPT_VIOLATION"): 99}
    assert handling == exits  # every exit handled, and the same names: they join
    for labels, _ in samples["kvmtrace_exit_handling_seconds_bucket"]:
        assert not labels["reason"].isdigit()


def test_one_series_per_label_set(samples):
    for name, ss in samples.items():
        keys = [tuple(sorted(l.items())) for l, _ in ss]
        assert len(keys) == len(set(keys)), f"{name} repeats a label set"
    pio = {(l["port"], l["direction"]): v for l, v in samples["kvmtrace_pio_total"]}
    assert pio[("0x0080", "write")] == 1000  # sizes 1 and 2 summed


def test_io_metrics_say_who_handled_them(samples):
    for name in ("kvmtrace_pio_total", "kvmtrace_mmio_total"):
        for labels, _ in samples[name]:
            assert "handler" not in labels
            assert labels["handled_by"] in ("kernel", "ioeventfd", "coalesced", "vmm")
    pio = {(l["port"], l["handled_by"]): v for l, v in samples["kvmtrace_pio_total"]}
    assert pio == {("0x0080", "vmm"): 1000, ("0x0040", "kernel"): 37}
    mm = {(l["page"], l["device"], l["handled_by"]): v for l, v in samples["kvmtrace_mmio_total"]}
    assert mm == {("0xfed00000", "hpet", "vmm"): 101}


def test_label_names_are_consistent(samples):
    labels = {name: set().union(*(l.keys() for l, _ in ss)) for name, ss in samples.items()}
    assert labels["kvmtrace_userspace_exits_total"] == {"domain", "reason"}
    assert labels["kvmtrace_vmm_service_seconds_bucket"] == {"domain", "reason", "le"}
    assert labels["kvmtrace_exits_total"] == {"domain", "isa", "reason"}
    assert labels["kvmtrace_exit_handling_seconds_bucket"] == {"domain", "isa", "reason", "le"}
    assert labels["kvmtrace_pio_total"] == {"domain", "port", "direction", "device", "handled_by"}
    assert labels["kvmtrace_mmio_total"] == {"domain", "page", "direction", "device", "handled_by"}
    assert samples["kvmtrace_lost_events_total"] == [({}, 3.0)]


def test_metric_list_is_what_the_collector_yields():
    live = SimpleNamespace(all_domains=False, guests=[], cumulative=lambda: FRAME,
                           session=SimpleNamespace(probes=SimpleNamespace(
                               counters=lambda: SimpleNamespace(lost_total=0))))
    assert tuple(f.name for f in KvmtraceCollector(live).collect()) == serve.METRICS


@pytest.mark.parametrize("port", [99999, 65536, 0, -1, True, "9464"])
def test_bad_port_is_a_usage_error(port):
    with pytest.raises(UsageError) as e:
        check_port(port)
    assert e.value.exit_code == ExitCode.USAGE == 2
    assert "--port" in str(e.value)


@pytest.mark.parametrize("port", [1, 9464, 65535])
def test_good_port_passes(port):
    check_port(port)


def test_run_serve_refuses_a_bad_port_before_attaching(monkeypatch):
    def attach(*a, **kw):
        raise AssertionError("LiveCounter was started")

    monkeypatch.setattr(serve, "LiveCounter", attach)
    with pytest.raises(UsageError, match="--port 99999"):
        serve.run_serve("web1", "qemu:///system", False, 99999, "127.0.0.1")


def test_run_serve_refuses_a_port_in_use_before_attaching(monkeypatch):
    import socket

    def attach(*a, **kw):
        raise AssertionError("LiveCounter was started")

    monkeypatch.setattr(serve, "LiveCounter", attach)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UsageError, match="cannot listen"):
            serve.run_serve("web1", "qemu:///system", False, s.getsockname()[1], "127.0.0.1")


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_cli_bad_port_is_one_line_and_exit_2(port):
    # No domain is resolved and nothing attached: the port is refused first.
    r = run("serve", "--domain", "no-such-domain", "--port", port)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "--port" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(lines) <= 3, r.stderr  # one error line (argparse's adds its usage)


def test_handled_by_uses_the_four_words_of_the_report():
    """A live guest ran before the probes: deduced from the device names, as the report does."""
    frame = rows({"kind": EventKind.PIO, "port": 0x70, "size": 1, "op": 1, "value": 23},
                 {"kind": EventKind.PIO, "port": 0x40, "size": 1, "op": 1, "value": 5})
    pio = {(l["port"], l["device"], l["handled_by"]): v for l, v in scrape(frame)["kvmtrace_pio_total"]}
    assert pio == {("0x0070", "rtc-index", "coalesced"): 23, ("0x0040", "kvm-pit", "kernel"): 5}


def test_vcpu_seconds_per_state_in_the_shape_of_node_cpu_seconds(samples):
    got = {(x["domain"], x["vcpu"], x["state"]): v for x, v in samples["kvmtrace_vcpu_seconds_total"]}
    assert got == {("web1", "0", "guest"): 3.0, ("web1", "0", "halted"): 0.0, ("web1", "0", "vmm"): 0.5,
                   ("web1", "0", "vmm_waiting"): 0.0, ("web1", "0", "preempted"): 1.5}
    assert sum(got.values()) == 5.0  # the states sum to the recorded time: the guest split is not among them


def test_vcpu_guest_seconds_split_guest_in_a_family_of_their_own(samples):
    got = {(x["domain"], x["vcpu"], x["part"]): v for x, v in samples["kvmtrace_vcpu_guest_seconds_total"]}
    assert got == {("web1", "0", "in_guest"): 2.25, ("web1", "0", "exit_handling"): 0.75}


def test_no_guest_split_series_where_kvm_exit_never_fired():
    frame = FRAME[FRAME["op"].to_numpy() != VCPU_TIME_IN_GUEST]
    assert "kvmtrace_vcpu_guest_seconds_total" not in scrape(frame)
