"""kvmtrace's benchmarks: the scripts in this directory (overhead, bpf_costs, scale,
soak) and the harness they share, ``bench.harness``, which the kernel tests reuse."""
