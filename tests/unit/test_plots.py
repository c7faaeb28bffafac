"""kvmtrace.present.plots on small trace files written here, shaped like the demo guest's recordings.

The builder writes real trace files (TraceWriter) whose counts are known in
advance: every figure is checked against them, not only for drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from kvmtrace.present import plots
from kvmtrace.analysis.latency import log2_histograms
from kvmtrace.errors import MissingTraceEventError
from kvmtrace.kernel.events import AGGREGATE, EVENT_DTYPE, EventFlag, EventKind, MmioOp
from kvmtrace.tables.ioctls import KvmIoctl
from kvmtrace.trace import load
from kvmtrace.tracefile import TraceWriter

from ..support import paths
from ..support.evbuild import Ev

MTREE = paths.DATA / "mtree" / "libvirt-pc-i440fx.txt"
PID = 4242
ROUNDS = 23  # loop iterations per vCPU: a prime, so off-by-one and double counting show
SERVICE_NS = (900, 1_300, 1_700, 6_000, 14_000)  # VMM service times the builder cycles through
SPAN_NS = 2_000_000_000  # the loop is spread over about 2 s
VMX_IO, VMX_EPT_MISCONFIG, VMX_HLT = 30, 49, 12

# Accesses per loop iteration and vCPU (see _loop): device -> (kernel, VMM)
PER_ROUND = {"ioport80": (0, 3), "kvm-pit": (2, 0), "rtc": (0, 1), "hpet": (0, 2), "kvm-ioapic": (1, 0)}
USERSPACE_PER_ROUND = {"IO": 4, "MMIO": 2}


def _loop(e: Ev, tid: int, vcpu: int, dt: int, i: int, hw: bool) -> None:
    """One iteration of the demo guest's loop on one vCPU thread, in the kernel's event order."""
    svc = SERVICE_NS[i % len(SERVICE_NS)]

    def x(reason):  # a hardware exit before the access (only where kvm_exit fires)
        if hw:
            e.exit(reason, vcpu=vcpu, tid=tid, pid=PID, dt=dt)

    def back():
        if hw:
            e.entry(vcpu=vcpu, tid=tid, pid=PID, dt=dt)

    for _ in range(3):  # out 0x80, answered by QEMU
        x(VMX_IO)
        e.pio(0x80, True, tid=tid, pid=PID, dt=dt).uexit_io(0x80, True, tid=tid, pid=PID, dt=dt)
        e.run(tid=tid, pid=PID, dt=svc)
        back()
    for port, write in ((0x43, True), (0x40, False)):  # the in-kernel PIT
        x(VMX_IO)
        e.pio(port, write, tid=tid, pid=PID, dt=dt)
        back()
    x(VMX_IO)  # in 0x71: QEMU answers; kvm_pio traces on completion
    e.uexit_io(0x71, False, tid=tid, pid=PID, dt=dt).run(tid=tid, pid=PID, dt=svc).pio(0x71, False, tid=tid,
                                                                                     pid=PID, dt=dt)
    back()
    x(VMX_EPT_MISCONFIG)  # HPET read answered by QEMU: two kvm_mmio events, one access
    e.mmio(0xFED00000, MmioOp.UNSATISFIED_READ, tid=tid, pid=PID, dt=dt)
    e.uexit_mmio(0xFED00000, False, tid=tid, pid=PID, dt=dt).run(tid=tid, pid=PID, dt=svc)
    e.mmio(0xFED00000, MmioOp.READ, tid=tid, pid=PID, dt=dt)
    back()
    x(VMX_EPT_MISCONFIG)  # HPET write, QEMU
    e.mmio(0xFED00010, MmioOp.WRITE, tid=tid, pid=PID, dt=dt).uexit_mmio(0xFED00010, True, tid=tid, pid=PID, dt=dt)
    e.run(tid=tid, pid=PID, dt=svc)
    back()
    x(VMX_EPT_MISCONFIG)  # IOAPIC write, in the kernel
    e.mmio(0xFEC00000, MmioOp.WRITE, tid=tid, pid=PID, dt=dt)
    back()
    if hw:  # a halt the kernel handles
        e.exit(VMX_HLT, vcpu=vcpu, tid=tid, pid=PID, dt=dt).entry(vcpu=vcpu, tid=tid, pid=PID, dt=dt)


def _launch(e: Ev, tid: int) -> None:
    """The VMM creating the VM, as kvmtrace launch records it (IOCTL events)."""
    e.add(EventKind.IOCTL, tid=tid, pid=PID, dt=5_000, reason=int(KvmIoctl.CREATE_VM), err=9, info2=300_000)
    e.add(EventKind.IOCTL, tid=tid, pid=PID, dt=5_000, reason=int(KvmIoctl.CREATE_VCPU), gpa=0, err=13,
          info2=250_000)
    for slot, gpa, size in ((0, 0, 0xC0000), (1, 0x100000, 0xF00000)):
        e.add(EventKind.IOCTL, tid=tid, pid=PID, dt=5_000, reason=int(KvmIoctl.SET_USER_MEMORY_REGION), size=slot,
              count=0, gpa=gpa, info1=size, err=0, info2=40_000)


def header(vcpus: int = 2, hw: bool = False, mode: str = "events", launched: bool = False,
           start_ns: int = 0) -> dict:
    probes = ["kvm_entry", "kvm_exit", "kvm_mmio", "kvm_pio", "kvm_userspace_exit", "sys_enter_ioctl"]
    h = {
        "kvmtrace_version": "test",
        "host": {"kernel_release": "6.1.0-test", "cpu_vendor": "GenuineIntel" if hw else "AuthenticAMD",
                 "kvm_modules": ["kvm", "kvm_intel" if hw else "kvm_pvm"], "isa": "vmx" if hw else "unknown",
                 "hostname": "testhost"},
        "tracepoint_formats": {},
        "probes": probes,
        "domains": [{"name": "demo", "uuid": "00000000-0000-0000-0000-000000000001", "id": 1,
                     "uri": "qemu:///system", "pid": PID,
                     "vcpu_threads": {str(v): 101 + v for v in range(vcpus)},
                     "memory_map_text": MTREE.read_text()}],
        "values_captured": False,
        "clock": "CLOCK_MONOTONIC",
        "mode": mode,
    }
    if launched:
        h["launch"] = {"xml": "<domain/>", "create_called_ns": start_ns + 1_000,
                       "create_returned_ns": start_ns + 40_000}
    return h


def _to_array(e: Ev) -> np.ndarray:
    df = e.frame()
    a = np.zeros(len(df), EVENT_DTYPE)
    for n in df.columns:
        a[n] = df[n].to_numpy()
    return a


def write_trace(path: Path, *, vcpus: int = 2, hw: bool = False, launched: bool = False,
                rounds: int = ROUNDS, idle_ns: int = 0) -> Path:
    """A demo-guest recording: ``rounds`` loop iterations on each of ``vcpus`` vCPUs over about 2 s.

    ``hw``: with kvm_exit/kvm_entry (an Intel host); ``launched``: from
    KVM_CREATE_VM on (kvmtrace launch); ``idle_ns``: quiet time before the
    guest runs (as a launch trace has).
    """
    e = Ev()
    e.t = 0
    if launched:
        _launch(e, tid=100)
    e.t += idle_ns
    events_per_round = 36 if hw else 16  # events spaced by dt (KVM_RUNs come after the service time)
    dt = SPAN_NS // (rounds * vcpus * events_per_round)
    for i in range(rounds):
        for v in range(vcpus):
            _loop(e, 101 + v, v, dt, i, hw)
    e.uexit(0, err=-4, tid=101, pid=PID, dt=dt).run(tid=101, pid=PID, dt=dt)  # a signal: not an exit
    end = e.t + dt
    w = TraceWriter(path, header(vcpus, hw, launched=launched))
    w.write(_to_array(e), {"t_ns": end, "lost_events": 0})
    w.close({"start_time_ns": 0, "end_time_ns": end, "stop_reason": "duration", "lost_events": 0})
    return path


def write_counts_trace(path: Path) -> Path:
    """A counts-mode recording (record --mode counts): aggregate rows, no single events."""
    rows = [
        dict(kind=EventKind.PIO | AGGREGATE, port=0x80, op=1, size=1, value=500),
        dict(kind=EventKind.USERSPACE_EXIT | AGGREGATE, reason=2, port=0x80, op=1, size=1,
             flags=int(EventFlag.RUN_FIELDS), value=500),
        dict(kind=EventKind.PIO | AGGREGATE, port=0x40, op=0, size=1, value=200),
        dict(kind=EventKind.MMIO | AGGREGATE, gpa=0xFED00000, op=2, size=4, value=70),
        dict(kind=EventKind.USERSPACE_EXIT | AGGREGATE, reason=6, gpa=0xFED00000, op=2, size=4,
             flags=int(EventFlag.RUN_FIELDS), value=70),
    ]
    a = np.zeros(len(rows), EVENT_DTYPE)
    for i, r in enumerate(rows):
        a[i]["ts_ns"] = 1_000_000_000
        a[i]["pid"], a[i]["tid"], a[i]["vcpu"] = PID, 101, 0xFFFFFFFF
        for k, v in r.items():
            a[i][k] = v
    w = TraceWriter(path, header(1, mode="counts"))
    w.write(a, {"t_ns": 2_000_000_000, "lost_events": 0})
    w.close({"start_time_ns": 0, "end_time_ns": 2_000_000_000, "stop_reason": "duration", "lost_events": 0})
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two vCPUs, no kvm_exit (like this project's nested dev host)."""
    return load(write_trace(tmp_path_factory.mktemp("plots") / "demo.kvmtrace"))


@pytest.fixture(scope="module")
def intel(tmp_path_factory):
    """Two vCPUs with kvm_exit/kvm_entry, as on an Intel host."""
    return load(write_trace(tmp_path_factory.mktemp("plots") / "intel.kvmtrace", hw=True))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return load(write_trace(tmp_path_factory.mktemp("plots") / "one.kvmtrace", vcpus=1))


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    return load(write_counts_trace(tmp_path_factory.mktemp("plots") / "counts.kvmtrace"))


def bars(ax):
    return [p for p in ax.patches if p.get_width() > 0 and p.get_height() > 0]


def ticklabels(ax):
    """The y tick labels from the top of the axes down."""
    ticks = sorted(((t.get_position()[1], t.get_text()) for t in ax.get_yticklabels()),
                   reverse=not ax.yaxis_inverted())
    return [text for _, text in ticks]


# ------------------------------------------------------------- the builder

def test_builder_counts_are_what_the_loop_does(demo, intel):
    for t in (demo, intel):
        s = t.summary
        assert dict(zip(s.userspace_exits["reason"], s.userspace_exits["count"])) == \
            {k: n * ROUNDS * 2 for k, n in USERSPACE_PER_ROUND.items()}
        assert t.summary.interrupted_runs == 1
        assert t.device_map.sources["io"] == "mtree"
    hw = intel.summary.exits
    assert dict(zip(hw["reason"], hw["count"])) == {"IO_INSTRUCTION": 6 * ROUNDS * 2,
                                                    "EPT_MISCONFIG": 3 * ROUNDS * 2, "HLT": ROUNDS * 2}
    assert 1.9 < demo.duration_s < 2.1


# ---------------------------------------------------------------- exit mix

def test_exit_mix_panels_bars_and_labels(demo):
    fig = plots.plot_exit_mix(demo)
    assert isinstance(fig, Figure)
    ue, io = fig.axes
    assert ue.get_title(loc="left").startswith("Userspace exits")
    assert io.get_title(loc="left") == "Port I/O and MMIO accesses by device, kernel vs VMM"
    assert "exits" in ue.get_xlabel() and "accesses" in io.get_xlabel()
    assert ticklabels(ue) == ["IO", "MMIO"]  # biggest at the top
    assert [p.get_width() for p in bars(ue)] == [4 * ROUNDS * 2, 2 * ROUNDS * 2]
    expect = {f"{d} ({'MMIO' if d in ('hpet', 'kvm-ioapic') else 'PIO'})": k + v for d, (k, v) in PER_ROUND.items()}
    assert set(ticklabels(io)) == set(expect)
    assert plots.legend_labels(io) == ["handled in the kernel (KVM)", "handled by the VMM (userspace)"]
    # stacked: per device the kernel and VMM segments add up to the device's accesses
    by_y = {}
    for p in bars(io):
        y = round(p.get_y() + p.get_height() / 2)
        by_y[y] = by_y.get(y, 0) + p.get_width()
    got = {t.get_text(): by_y[round(t.get_position()[1])] for t in io.get_yticklabels()}
    assert got == {k: v * ROUNDS * 2 for k, v in expect.items()}
    texts = [t.get_text() for t in io.texts]
    n = PER_ROUND["ioport80"][1] * ROUNDS * 2
    assert any(t.startswith(f"{n:,}") and f"({n / demo.duration_s:,.0f}/s)" in t for t in texts)
    assert "no kvm_exit" in fig._suptitle.get_text()


def test_exit_mix_with_hardware_exits_has_three_panels(intel):
    fig = plots.plot_exit_mix(intel)
    assert len(fig.axes) == 3
    hw = fig.axes[1]
    assert hw.get_title(loc="left").startswith("Hardware VM exits")
    assert ticklabels(hw) == ["VMX IO_INSTRUCTION", "VMX EPT_MISCONFIG", "VMX HLT"]
    assert sum(p.get_width() for p in bars(hw)) == 10 * ROUNDS * 2


def test_exit_mix_works_on_counts_mode(counts):
    fig = plots.plot_exit_mix(counts)
    ue, io = fig.axes
    assert sum(p.get_width() for p in bars(ue)) == 570
    assert set(ticklabels(io)) == {"ioport80 (PIO)", "kvm-pit (PIO)", "hpet (MMIO)"}


def test_exit_mix_without_exits_names_the_events(tmp_path):
    e = Ev()
    e.run(tid=101, pid=PID)
    w = TraceWriter(tmp_path / "empty.kvmtrace", header(1))
    w.write(_to_array(e), {"lost_events": 0})
    w.close({"start_time_ns": 0, "end_time_ns": 10_000, "lost_events": 0})
    with pytest.raises(MissingTraceEventError, match="kvm:kvm_userspace_exit"):
        plots.plot_exit_mix(load(tmp_path / "empty.kvmtrace"))


# ------------------------------------------------------------------- rates

def test_rates_one_line_per_device_and_they_integrate_to_the_counts(demo):
    fig = plots.plot_rates(demo, by="device", freq="250ms")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "seconds since start (s)"
    assert ax.get_ylabel() == "exits per second (exits/s)"
    assert ax.get_title(loc="left") == "Exit rate by device (port I/O and MMIO), 250 ms windows"
    lines = ax.get_lines()
    assert len(lines) == len(PER_ROUND)
    legend = plots.legend_labels(ax)
    assert [s.split("  ")[0] for s in legend] == [line.get_label().split("  ")[0] for line in lines]
    assert {s.split("  ")[0] for s in legend} == set(PER_ROUND)
    assert all("/s)" in s for s in legend)
    # each step times its window's length gives back the device's accesses
    cover = np.diff(lines[0].get_xdata())
    for line in lines:
        dev = line.get_label().split("  ")[0]
        got = float((line.get_ydata()[:-1] * cover).sum())
        assert got == pytest.approx(sum(PER_ROUND[dev]) * ROUNDS * 2, rel=1e-9)
    assert lines[0].get_xdata()[0] == 0.0 and lines[0].get_xdata()[-1] == pytest.approx(demo.duration_s)


def test_rates_other_line_and_zoom(demo):
    fig = plots.plot_rates(demo, by="port", freq=0.1, max_series=3)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 3 and labels[-1].startswith("other (2 keys)")
    zoom = plots.plot_rates(demo, by="userspace_exit", freq="100ms", time_range=(0.5, 1.0))
    x = zoom.axes[0].get_lines()[0].get_xdata()
    assert x[0] == pytest.approx(0.5) and x[-1] == pytest.approx(1.0)
    assert plots.legend_labels(zoom.axes[0])[0].startswith("IO")


def test_rates_missing_events(demo, counts):
    with pytest.raises(MissingTraceEventError, match="kvm:kvm_exit") as err:
        plots.plot_rates(demo, by="exit")
    assert "did not fire" in str(err.value)
    with pytest.raises(MissingTraceEventError, match="record --mode events"):
        plots.plot_rates(counts)
    with pytest.raises(ValueError, match="by must be one of"):
        plots.plot_rates(demo, by="colour")


# ----------------------------------------------------------------- latency

def test_latency_hist_one_panel_per_device_with_p50_p99(demo):
    fig = plots.plot_latency_hist(demo, "vmm_service", by="device")
    axes = fig.axes
    runs = demo.df_userspace_exits()
    devices = runs["device"].astype(str).value_counts()
    assert [ax.get_title(loc="left").split(":")[0] for ax in axes] == list(devices.index)
    assert fig._suptitle.get_text() == "VMM service time (userspace exit \u2192 next KVM_RUN), by device"
    hist = log2_histograms(runs.assign(device=runs["device"].astype(str)), "service_ns", ["device"])
    for ax in axes:
        dev = ax.get_title(loc="left").split(":")[0]
        assert ax.get_xscale() == "log"
        assert len(bars(ax)) == int(((hist["device"] == dev) & (hist["count"] > 0)).sum())
        assert sum(p.get_height() for p in bars(ax)) == devices[dev]
        legend = plots.legend_labels(ax)
        assert [s.split(" ")[0] for s in legend] == ["p50", "p99", "exits"]
        p50 = float(np.percentile(runs.loc[runs["device"] == dev, "service_ns"], 50)) / 1e3
        assert any(abs(line.get_xdata()[0] - p50) < 1e-9 for line in ax.get_lines())
    assert "\u00b5s" in axes[-1].get_xlabel()
    # bars sit on the log2 buckets, in µs: the fastest service time is 0.9 µs, in [512, 1023] ns
    first = min(p.get_x() for p in bars(axes[0]))
    assert first == pytest.approx(0.512)


def test_latency_hist_by_reason_and_grouping(demo):
    fig = plots.plot_latency_hist(demo, by="reason")
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes] == ["IO", "MMIO"]
    fig = plots.plot_latency_hist(demo, by="device", max_groups=2)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert len(titles) == 2 and titles[1].startswith("other (2 groups)")
    with pytest.raises(ValueError, match="not a column"):
        plots.plot_latency_hist(demo, by="colour")


def test_exit_handling_needs_kvm_exit(demo, intel, counts):
    with pytest.raises(MissingTraceEventError, match="kvm:kvm_exit"):
        plots.plot_latency_hist(demo, "exit_handling")
    with pytest.raises(MissingTraceEventError):
        plots.plot_latency_hist(counts)
    fig = plots.plot_latency_hist(intel, "exit_handling", by="reason")
    names = [ax.get_title(loc="left").split(":")[0] for ax in fig.axes]
    assert names == ["IO_INSTRUCTION", "EPT_MISCONFIG", "HLT"]
    assert fig._suptitle.get_text().startswith("Exit handling time (kvm_exit")
    by_dev = plots.plot_latency_hist(intel, "exit_handling", by="device")
    titles = {ax.get_title(loc="left").split(":")[0] for ax in by_dev.axes}
    assert {"ioport80", "hpet", "(HLT, no device)"} <= titles or "other" in " ".join(titles)


# ----------------------------------------------------------------- heat map

def test_heatmap_rows_per_vcpu_and_cells_sum_to_the_exits(demo):
    fig = plots.plot_vcpu_heatmap(demo, freq="250ms")
    ax, cbar = fig.axes
    assert ticklabels(ax) == ["vCPU 0", "vCPU 1"]
    assert ax.get_xlabel() == "seconds since start (s)" and ax.get_ylabel() == "vCPU"
    assert ax.get_title(loc="left") == "Exit rate per vCPU over time, 250 ms windows"
    assert "exits per second" in cbar.get_ylabel()
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    rate = np.asarray(mesh.get_array()).reshape(2, -1)
    coords = mesh.get_coordinates()
    widths = np.diff(coords[0, :, 0])
    per_vcpu = (rate * widths).sum(axis=1)
    assert per_vcpu.tolist() == pytest.approx([6 * ROUNDS, 6 * ROUNDS])  # userspace exits: kvm_exit did not fire
    assert "exits to userspace" in fig._suptitle.get_text()
    assert len(ax.texts) == rate.size  # few cells: each carries its rate


def test_heatmap_single_vcpu_is_one_readable_row(single, intel, counts):
    fig = plots.plot_vcpu_heatmap(single, freq=0.5)
    ax = fig.axes[0]
    assert ticklabels(ax) == ["vCPU 0"]
    assert fig.get_size_inches()[1] >= 2.5
    fig = plots.plot_vcpu_heatmap(intel)
    assert "VM exits (kvm_exit)" in fig._suptitle.get_text()
    with pytest.raises(MissingTraceEventError, match="record --mode events"):
        plots.plot_vcpu_heatmap(counts)


# ------------------------------------------------------------------ output

def test_figures_render_to_png_and_svg_without_urls(demo, tmp_path):
    for name, fig in {"mix": plots.plot_exit_mix(demo), "rates": plots.plot_rates(demo),
                      "latency": plots.plot_latency_hist(demo), "heat": plots.plot_vcpu_heatmap(demo)}.items():
        out = tmp_path / f"{name}.png"
        fig.savefig(out, dpi=60)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = plots.figure_svg(fig)
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
        assert "http://" not in svg and "https://" not in svg


def test_plots_package_never_uses_pyplot():
    modules = sorted(Path(plots.__file__).parent.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "common", "exit_mix", "rates", "latency", "heatmap"}
    for module in modules:
        assert "pyplot" not in module.read_text().replace("never pyplot", ""), module.name
