"""Domain resolution: each vCPU's kvm_run mapping read from QEMU's
/proc/PID/maps (tests/kernel/test_domain.py resolves real domains through libvirt)."""

from kvmtrace.record.domain import kvm_run_mappings

MAPS = """\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 123  /usr/bin/qemu-system-x86_64
7f9bf9643000-7f9bf9646000 rw-s 00000000 00:10 1038                       anon_inode:kvm-vcpu:0
7f9bf9640000-7f9bf9643000 rw-s 00000000 00:10 1039                       anon_inode:kvm-vcpu:1
7f9bf9650000-7f9bf9651000 rw-s 00001000 00:10 1039                       anon_inode:kvm-vcpu:1
"""


def test_kvm_run_mappings_take_offset_zero_of_each_vcpu():
    assert kvm_run_mappings(0, MAPS) == {0: 0x7F9BF9643000, 1: 0x7F9BF9640000}
