"""Domain resolution through libvirt: by name, UUID or ID, to QEMU's pid and vCPU threads."""

from pathlib import Path

import pytest

from kvmtrace.demo.run import start_demo, stop_demo
from kvmtrace.record.domain import kvm_run_mappings, resolve
from kvmtrace.demo.guest import Workload

from .conftest import URI

MAPS = """\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 123  /usr/bin/qemu-system-x86_64
7f9bf9643000-7f9bf9646000 rw-s 00000000 00:10 1038                       anon_inode:kvm-vcpu:0
7f9bf9640000-7f9bf9643000 rw-s 00000000 00:10 1039                       anon_inode:kvm-vcpu:1
7f9bf9650000-7f9bf9651000 rw-s 00001000 00:10 1039                       anon_inode:kvm-vcpu:1
"""


def test_kvm_run_mappings_take_offset_zero_of_each_vcpu():
    assert kvm_run_mappings(0, MAPS) == {0: 0x7F9BF9643000, 1: 0x7F9BF9640000}


@pytest.mark.kernel
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
