"""Domain resolution through libvirt: by name, UUID or ID, to QEMU's pid and vCPU threads."""

from pathlib import Path

from kvmtrace.demo.run import start_demo, stop_demo
from kvmtrace.record.domain import resolve
from kvmtrace.demo.guest import Workload

from ..support.kernel import URI


def test_name_uuid_and_id_resolve_to_the_same_qemu(kernel, domain_name):
    conn, dom = start_demo(Workload(steady=True), URI, name=domain_name, paused=True)
    try:
        by_name = resolve(conn, domain_name)
        assert resolve(conn, dom.UUIDString()).pid == by_name.pid
        assert resolve(conn, str(dom.ID())).pid == by_name.pid
        assert by_name.uuid == dom.UUIDString() and by_name.name == domain_name
        assert list(by_name.vcpu_threads) == [0]
        tid = by_name.vcpu_threads[0]
        assert Path(f"/proc/{by_name.pid}/task/{tid}").exists()  # a thread of that QEMU
        assert set(by_name.kvm_run) == {0}
        assert "hpet" in by_name.memory_map_text and "<domain" in by_name.xml
    finally:
        stop_demo(dom)
