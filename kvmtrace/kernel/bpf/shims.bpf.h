/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel-version shims (libbpf-tools keeps its own in core_fixes.bpf.h): the
 * raw tracepoint argument layouts kvmtrace reads, each with the change that
 * fixed it. A raw tracepoint's
 * arguments are its TP_PROTO (include/trace/events/kvm.h,
 * arch/x86/kvm/trace.h), not the fields of its format file: which layout
 * this kernel has is decided in kvmtrace/kernel/layouts.py from the format
 * files and the kernel release, and given as -DKT_RAW_<EVENT>.
 *
 * kvm_pio    (unsigned int rw, unsigned int port, unsigned int size,
 *             unsigned int count, const void *data): the data pointer came
 *             with the `val` field; layouts.py takes raw only then.
 * kvm_mmio   (int type, int len, u64 gpa, void *val): val a pointer since
 *             e39d200fa5bf ("KVM: Fix stack-out-of-bounds read in
 *             write_mmio", 4.15); a u64 before, with the same format fields.
 * kvm_userspace_exit (__u32 reason, int errno).
 * kvm_entry  (unsigned int vcpu_id) until the kvm_entry tracepoint took the
 *             vCPU (5.9: "KVM: x86: Add RIP to the kvm_entry, i.e. VM-Enter,
 *             tracepoint"); since then (struct kvm_vcpu *vcpu[, bool
 *             force_immediate_exit]) and rip, intr_info, error_code are read
 *             in the assign step: the regular tracepoint there.
 * kvm_exit   never raw: guest_rip and info1/info2 were always read in the
 *             assign step, and exit_reason too since 5.16.
 * kvm_fpu    (int load).
 */
#ifndef KT_SHIMS_BPF_H
#define KT_SHIMS_BPF_H

#define KT_RAW_KVM_ENTRY_VCPU_ID(ctx)	((u32)(ctx)->args[0])


#endif /* KT_SHIMS_BPF_H */
