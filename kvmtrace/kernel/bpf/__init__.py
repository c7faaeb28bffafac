"""The BPF C programs (``*.bpf.c``) and the header they share with user space.

Not Python: kept as package data and compiled by :mod:`kvmtrace.kernel.probe`.
"""
