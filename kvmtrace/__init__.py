"""kvmtrace: trace a KVM guest's vCPU run loop with eBPF."""

__version__ = "0.1.0"
