"""Facts about the recording host, and the checks made before recording.

Everything here reads the live system, so only the recorder calls it; the
facts it gathers are stored in the trace file and analyses read them there.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from kvmtrace.errors import KernelHeadersError, NotPrivilegedError, TracefsError

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

# Capability bits (linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

REQUIREMENTS = """\
Recording needs: root (or CAP_BPF with CAP_PERFMON), tracefs mounted
(mount -t tracefs nodev /sys/kernel/tracing), the kvm module loaded, kernel
headers for bcc (/lib/modules/$(uname -r)/build), python3-bpfcc, and libvirtd
running. ./setup.sh provides all of them on Debian."""


def effective_caps(status: str | None = None) -> int:
    """The CapEff bit mask of this process."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    if os.geteuid() == 0:
        return
    caps = effective_caps()
    if caps & (1 << CAP_SYS_ADMIN):
        return
    if caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON):
        return
    raise NotPrivilegedError(
        "recording needs root or the capabilities CAP_BPF and CAP_PERFMON",
        "run kvmtrace as root (sudo kvmtrace ...)",
    )


def find_tracefs() -> Path:
    """The mounted tracefs that has KVM's events."""
    for cand in TRACEFS_CANDIDATES:
        p = Path(cand)
        if (p / "events").is_dir():
            if not (p / "events" / "kvm").is_dir():
                raise TracefsError(
                    f"{p}/events/kvm is missing: the kvm module is not loaded",
                    "modprobe kvm_intel or kvm_amd (is /dev/kvm there?)",
                )
            return p
    raise TracefsError(
        "tracefs is not mounted",
        "mount -t tracefs nodev /sys/kernel/tracing (./setup.sh does it)",
    )


def check_kernel_headers(release: str | None = None) -> None:
    """bcc compiles against the running kernel's headers."""
    release = release or platform.release()
    build = Path("/lib/modules") / release / "build"
    if (build / "include").is_dir():
        return
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return
    raise KernelHeadersError(
        f"no kernel headers for {release} at {build} (bcc needs them)",
        "apt-get install linux-headers-amd64 and link "
        f"/usr/src/linux-headers-<ver>-amd64 to {build} (./setup.sh does it)",
    )


@dataclass(frozen=True)
class HostInfo:
    kernel_release: str
    cpu_vendor: str
    kvm_modules: tuple[str, ...]
    isa: str  # "VMX", "SVM" or "unknown"
    hostname: str

    def as_dict(self) -> dict:
        return {
            "kernel_release": self.kernel_release,
            "cpu_vendor": self.cpu_vendor,
            "kvm_modules": list(self.kvm_modules),
            "isa": self.isa,
            "hostname": self.hostname,
        }


def host_info() -> HostInfo:
    vendor = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    modules = tuple(
        m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", m).exists()
    )
    isa = "VMX" if "kvm_intel" in modules else "SVM" if "kvm_amd" in modules else "unknown"
    return HostInfo(platform.release(), vendor, modules, isa, platform.node())
