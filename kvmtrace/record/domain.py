"""Find a libvirt domain's QEMU process and vCPU threads, through libvirt.

The domain is looked up by ID, UUID or name with libvirt's API; the vCPU
thread ids come from QEMU's own answer to ``query-cpus-fast`` over libvirt's
monitor connection, and the QEMU pid from those threads' thread-group id.
Nothing here parses ``ps``.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from kvmtrace.errors import (
    DomainNotFoundError,
    DomainNotRunningError,
    LibvirtError,
    LibvirtUnreachableError,
)

DEFAULT_URI = "qemu:///system"


def _libvirt():
    try:
        import libvirt
    except ImportError as e:  # pragma: no cover - depends on the host
        raise LibvirtError(
            "libvirt-python is not importable",
            "apt-get install python3-libvirt and use a virtualenv made with "
            "--system-site-packages (./setup.sh does both)",
        ) from e
    return libvirt


def connect(uri: str = DEFAULT_URI):
    """Open a libvirt connection, or say how to start libvirtd."""
    libvirt = _libvirt()
    # libvirt prints every error to stderr by default; ours carry the message.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LibvirtUnreachableError(
            f"cannot connect to libvirt at {uri}: {e.get_error_message()}",
            "start the daemons (virtlogd -d && libvirtd -d, or ./setup.sh) "
            "or pass the right --connect URI",
        ) from e


def _domain_names(conn) -> list[str]:
    names = []
    for dom in conn.listAllDomains():
        state = "running" if dom.isActive() else "shut off"
        names.append(f"{dom.name()} ({state})")
    return sorted(names)


def lookup(conn, ident: str):
    """A domain by ID, UUID or name, in that order of preference."""
    libvirt = _libvirt()
    attempts = []
    if ident.isdigit():
        attempts.append(lambda: conn.lookupByID(int(ident)))
    try:
        uuidlib.UUID(ident)
        attempts.append(lambda: conn.lookupByUUIDString(ident))
    except ValueError:
        pass
    attempts.append(lambda: conn.lookupByName(ident))
    for attempt in attempts:
        try:
            return attempt()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise LibvirtError(f"libvirt failed to look up {ident!r}: {e}") from e
    known = _domain_names(conn)
    listing = ", ".join(known) if known else "none"
    raise DomainNotFoundError(
        f"no domain {ident!r} on {conn.getURI()} (domains: {listing})",
        "give a name, UUID or ID from that list",
    )


@dataclass(frozen=True)
class GuestProcess:
    """A running domain as the recorder needs it."""

    name: str
    uuid: str
    id: int
    uri: str
    pid: int
    vcpu_threads: dict[int, int] = field(default_factory=dict)  # vcpu index -> tid
    kvm_run: dict[int, int] = field(default_factory=dict)  # vcpu index -> kvm_run address
    xml: str = ""
    memory_map_text: str = ""  # QEMU's `info mtree -f`: device names for ports and MMIO

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "id": self.id,
            "uri": self.uri,
            "pid": self.pid,
            "vcpu_threads": {str(k): v for k, v in self.vcpu_threads.items()},
            "kvm_run": {str(k): hex(v) for k, v in self.kvm_run.items()},
            "xml": self.xml,
            "memory_map_text": self.memory_map_text,
        }


def tgid_of(tid: int) -> int:
    """The process a thread belongs to (/proc/TID/status Tgid)."""
    for line in Path(f"/proc/{tid}/status").read_text().splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    raise LibvirtError(f"thread {tid} has no Tgid in /proc")


def kvm_run_mappings(pid: int, maps: str | None = None) -> dict[int, int]:
    """vCPU id -> the address of its struct kvm_run in the VMM's memory.

    A VMM mmaps each vCPU fd at offset 0 to get the vCPU's kvm_run; the
    kernel names the mapping ``anon_inode:kvm-vcpu:ID`` in /proc/PID/maps.
    """
    if maps is None:
        maps = Path(f"/proc/{pid}/maps").read_text()
    found = {}
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5].startswith("anon_inode:kvm-vcpu:") and int(parts[2], 16) == 0:
            vcpu = int(parts[5].rsplit(":", 1)[1])
            found.setdefault(vcpu, int(parts[0].split("-")[0], 16))
    return found


def vcpu_threads(dom) -> dict[int, int]:
    """vCPU index -> host thread id, from QEMU's query-cpus-fast."""
    libvirt = _libvirt()
    import libvirt_qemu

    try:
        reply = libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "query-cpus-fast"}), 0)
    except libvirt.libvirtError as e:
        raise LibvirtError(
            f"QEMU's monitor did not answer query-cpus-fast for {dom.name()}: {e}",
            "is this a QEMU/KVM domain managed by this libvirtd?",
        ) from e
    return {int(c["cpu-index"]): int(c["thread-id"]) for c in json.loads(reply)["return"]}


def memory_map(dom) -> str:
    """QEMU's flat memory and I/O map (HMP ``info mtree -f``), or "" if unavailable."""
    libvirt = _libvirt()
    import libvirt_qemu

    try:
        text = libvirt_qemu.qemuMonitorCommand(dom, "info mtree -f", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        return text.replace("\r\n", "\n")  # HMP answers with CRLF
    except libvirt.libvirtError:
        return ""  # device names then come from the built-in table


def resolve(conn, ident: str) -> GuestProcess:
    """The running domain ``ident`` with its QEMU pid and vCPU threads."""
    dom = lookup(conn, ident)
    if not dom.isActive():
        raise DomainNotRunningError(
            f"domain {dom.name()!r} is not running",
            f"start it first (virsh -c {conn.getURI()} start {dom.name()})",
        )
    threads = vcpu_threads(dom)
    if not threads:
        raise LibvirtError(f"domain {dom.name()!r} reports no vCPU threads")
    pids = {tgid_of(tid) for tid in threads.values()}
    if len(pids) != 1:
        raise LibvirtError(f"vCPU threads of {dom.name()!r} span processes {sorted(pids)}")
    pid = pids.pop()
    return GuestProcess(
        name=dom.name(),
        uuid=dom.UUIDString(),
        id=dom.ID(),
        uri=conn.getURI(),
        pid=pid,
        vcpu_threads=threads,
        kvm_run=kvm_run_mappings(pid),
        xml=dom.XMLDesc(0),
        memory_map_text=memory_map(dom),
    )


def running_domains(conn) -> list[GuestProcess]:
    """Every running QEMU domain of this connection, resolved (for --all)."""
    libvirt = _libvirt()
    guests = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            guests.append(resolve(conn, dom.UUIDString()))
        except (DomainNotRunningError, DomainNotFoundError):
            continue  # stopped meanwhile
    return guests


# --------------------------------------------------------------------------
# Domain life: creating, resuming and stopping (launch, the demo guest)
# --------------------------------------------------------------------------

def find(conn, name: str):
    """The domain called ``name``, or None when libvirt knows none."""
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def create(conn, xml: str, paused: bool = False):
    """Create a transient domain from its XML (virDomainCreateXML), paused if asked."""
    libvirt = _libvirt()
    try:
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as e:
        raise LibvirtError(f"libvirt could not start the domain: {e.get_error_message()}") from e


def resume(dom) -> None:
    """Resume a paused domain; a guest that ends itself at once is not an error.

    A short finite guest can run to its end (isa-debug-exit makes QEMU exit)
    before QEMU answers libvirt's "cont", and libvirt then reports the
    monitor connection reset. If the domain is gone by then, that is what
    happened.
    """
    libvirt = _libvirt()
    try:
        dom.resume()
    except libvirt.libvirtError:
        # libvirt may not have noticed QEMU's exit yet: give it a moment.
        if not wait_stopped(dom, 5.0):
            raise


def destroy(dom) -> None:
    """Destroy the domain if it still runs (a transient domain then vanishes)."""
    libvirt = _libvirt()
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass


def wait_stopped(dom, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the domain to stop; True when it has."""
    libvirt = _libvirt()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                return True
        except libvirt.libvirtError:
            return True
        time.sleep(0.05)
    return False
