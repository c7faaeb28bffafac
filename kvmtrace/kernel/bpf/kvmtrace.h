/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one event record every kvmtrace probe emits.
 *
 * kvmtrace/events.py mirrors this layout as a numpy dtype (EVENT_DTYPE) and a
 * test compiles both and compares sizes and offsets. Constants shared with
 * Python (event kinds, the KVM_RUN ioctl number, map sizes) are not defined
 * here: they come in as -D flags generated from kvmtrace/events.py, so each
 * value is written once.
 */
#ifndef KVMTRACE_H
#define KVMTRACE_H

struct kt_event {
	u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	u64 rip;		/* kvm_exit guest_rip, kvm_entry rip */
	u64 info1;		/* kvm_exit info1 (exit qualification / exit_info_1) */
	u64 info2;		/* kvm_exit info2 */
	u64 gpa;		/* kvm_mmio guest physical address */
	u64 value;		/* pio/mmio data: 0 unless built with KT_CAPTURE_VALUES */
	u32 tid;		/* the vCPU thread */
	u32 pid;		/* its process (QEMU) */
	u32 cpu;		/* host CPU */
	u32 vcpu;		/* vcpu_id where the tracepoint has it, else KT_NO_VCPU */
	u32 reason;		/* kvm_exit exit_reason (raw, flag bits kept) or KVM_EXIT_* */
	u32 isa;		/* kvm_exit isa: 1 VMX, 2 SVM, 0 unknown */
	s32 err;		/* kvm_userspace_exit errno (negative: not an exit) */
	u32 port;		/* kvm_pio port */
	u32 size;		/* kvm_pio size, kvm_mmio len */
	u32 count;		/* kvm_pio count (rep ins/outs) */
	u32 intr_info;		/* kvm_exit / kvm_entry intr_info */
	u32 error_code;		/* kvm_exit / kvm_entry error_code */
	u8 kind;		/* KT_KIND_* */
	u8 op;			/* pio: 1 write 0 read; mmio: 0 unsatisfied-read 1 read 2 write */
	u8 flags;		/* KT_FLAG_* */
	u8 pad;
	u32 pad2;
};

/* Counts mode: the key of one aggregate (kvmtrace/events.py KEY_DTYPE). */
struct kt_key {
	u64 gpa;		/* MMIO page */
	u32 pid;
	u32 tid;		/* 0 where counted per guest, not per thread */
	u32 reason;		/* exit reason, or the latency's reason */
	u32 isa;
	u32 port;		/* port, or a histogram's log2 bucket */
	u32 size;
	s32 err;
	u8 kind;		/* KT_KIND_* of the counted events, or KT_KIND_HIST */
	u8 op;			/* as in kt_event, or a histogram's KT_LAT_* */
	u8 flags;
	u8 pad;
};

/*
 * What the probes keep per traced vCPU thread, in one hash entry keyed by
 * tid: found with one lookup per event and updated in place (a hash update
 * or delete costs several lookups: the run-loop state lives here, not in maps
 * of its own). `pid` is checked against the current tgid, so an entry left by
 * a thread whose id is reused elsewhere never matches.
 */
struct kt_thread {
	u64 kvm_run;		/* its struct kvm_run in the VMM; 0 while unknown */
	u64 exit_ts;		/* counts mode: the open kvm_exit (0: none) */
	u64 uexit_ts;		/* counts mode: the open userspace exit (0: none) */
	u64 mmio_gpa;		/* counts mode: the last kvm_mmio's address */
	u32 pid;		/* the thread's tgid (the VMM) */
	u32 exit_reason;
	u32 exit_isa;
	u32 uexit_reason;
	u8 mmio_op;		/* the last kvm_mmio's type */
	u8 mmio_open;		/* 1: that was an unsatisfied-read */
	u8 pad[6];
};

#endif /* KVMTRACE_H */
