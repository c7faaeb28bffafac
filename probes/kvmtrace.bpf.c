// SPDX-License-Identifier: GPL-2.0
/*
 * kvmtrace's kernel side: one probe per KVM run-loop tracepoint, each filtered
 * in the kernel to the traced guests' VMM processes (the `targets` map, keyed
 * by tgid) and streamed through one BPF ring buffer as struct kt_event.
 *
 * Built by kvmtrace/probe.py with bcc. Each probe is compiled only when
 * KT_PROBE_<EVENT> is set: kvmtrace attaches the tracepoints this kernel has
 * and records which ones. Field layouts differ between kernel versions, so
 * fields that not every kernel has are guarded by
 * KT_HAVE_<EVENT>_<FIELD> flags, set from the tracepoint's format file at
 * load time. Every other constant (KT_KIND_*, KT_KVM_RUN, sizes) is generated
 * from kvmtrace/events.py.
 */
#include "kvmtrace.h"

BPF_HASH(targets, u32, u32, KT_MAX_TARGETS);	/* tgid -> domain index */
BPF_RINGBUF_OUTPUT(events, KT_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(matched, u64, KT_KIND_COUNT);	/* events for a target, per kind */
BPF_PERCPU_ARRAY(lost, u64, KT_KIND_COUNT);	/* of those, ring buffer full */
BPF_HASH(kvm_run_addr, u32, u64, KT_MAX_VCPUS);	/* vCPU tid -> its kvm_run in the VMM */

/*
 * Reserve a zeroed event for the current thread, or NULL if the thread is not
 * in a traced guest or the ring buffer is full (counted in `lost`).
 */
static __always_inline struct kt_event *kt_reserve(u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	struct kt_event *e;
	u64 *n;

	if (!targets.lookup(&tgid))
		return NULL;
	n = matched.lookup(&kind);
	if (n)
		(*n)++;
	e = events.ringbuf_reserve(sizeof(struct kt_event));
	if (!e) {
		n = lost.lookup(&kind);
		if (n)
			(*n)++;
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->tid = (u32)id;
	e->pid = tgid;
	e->cpu = bpf_get_smp_processor_id();
	e->vcpu = KT_NO_VCPU;
	e->kind = kind;
	return e;
}

#ifdef KT_PROBE_KVM_EXIT
TRACEPOINT_PROBE(kvm, kvm_exit)
{
	struct kt_event *e = kt_reserve(KT_KIND_EXIT);

	if (!e)
		return 0;
	e->reason = args->exit_reason;
	e->rip = args->guest_rip;
#ifdef KT_HAVE_KVM_EXIT_ISA
	e->isa = args->isa;
#endif
#ifdef KT_HAVE_KVM_EXIT_INFO1
	e->info1 = args->info1;
	e->info2 = args->info2;
#endif
#ifdef KT_HAVE_KVM_EXIT_INTR_INFO
	e->intr_info = args->intr_info;
	e->error_code = args->error_code;
#endif
#ifdef KT_HAVE_KVM_EXIT_VCPU_ID
	e->vcpu = args->vcpu_id;
#endif
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_ENTRY
TRACEPOINT_PROBE(kvm, kvm_entry)
{
	struct kt_event *e = kt_reserve(KT_KIND_ENTRY);

	if (!e)
		return 0;
	e->vcpu = args->vcpu_id;
#ifdef KT_HAVE_KVM_ENTRY_RIP
	e->rip = args->rip;
#endif
#ifdef KT_HAVE_KVM_ENTRY_IMMEDIATE_EXIT
	if (args->immediate_exit)
		e->flags |= KT_FLAG_IMMEDIATE_EXIT;
#endif
#ifdef KT_HAVE_KVM_ENTRY_INTR_INFO
	e->intr_info = args->intr_info;
	e->error_code = args->error_code;
#endif
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_PIO
TRACEPOINT_PROBE(kvm, kvm_pio)
{
	struct kt_event *e = kt_reserve(KT_KIND_PIO);

	if (!e)
		return 0;
	e->op = args->rw ? 1 : 0;
	e->port = args->port;
	e->size = args->size;
	e->count = args->count;
#ifdef KT_CAPTURE_VALUES
	e->value = args->val;
	e->flags |= KT_FLAG_VALUE;
#endif
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_MMIO
TRACEPOINT_PROBE(kvm, kvm_mmio)
{
	struct kt_event *e = kt_reserve(KT_KIND_MMIO);

	if (!e)
		return 0;
	e->op = args->type;
	e->size = args->len;
	e->gpa = args->gpa;
#ifdef KT_CAPTURE_VALUES
	e->value = args->val;
	e->flags |= KT_FLAG_VALUE;
#endif
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_USERSPACE_EXIT
/*
 * KVM_RUN returning to the VMM. The tracepoint carries only the exit reason;
 * the kvm_run union member the VMM is about to act on (io, mmio, ...) is read
 * from the VMM's own mapping of struct kvm_run, whose address per vCPU thread
 * user space found in /proc/PID/maps (anon_inode:kvm-vcpu:N, offset 0). The
 * layout is uapi, hence stable: exit_reason at 8, the union at 32.
 */
struct kt_run_io {		/* kvm_run.io */
	u8 direction;
	u8 size;
	u16 port;
	u32 count;
	u64 data_offset;
};

struct kt_run_mmio {		/* kvm_run.mmio */
	u64 phys_addr;
	u8 data[8];
	u32 len;
	u8 is_write;
};

TRACEPOINT_PROBE(kvm, kvm_userspace_exit)
{
	struct kt_event *e = kt_reserve(KT_KIND_USERSPACE_EXIT);
	u32 tid;
	u64 *run;
	union {
		struct kt_run_io io;
		struct kt_run_mmio mmio;
		u64 raw[3];
	} u;

	if (!e)
		return 0;
	e->reason = args->reason;
#ifdef KT_HAVE_KVM_USERSPACE_EXIT_ERRNO
	e->err = args->errno;
#endif
	tid = e->tid;
	run = kvm_run_addr.lookup(&tid);
	if (run && e->err >= 0 &&
	    bpf_probe_read_user(&u, sizeof(u), (void *)(*run + KT_KVM_RUN_UNION)) == 0) {
		e->flags |= KT_FLAG_RUN_FIELDS;
		if (e->reason == KT_KVM_EXIT_IO) {
			e->op = u.io.direction;	/* KVM_EXIT_IO_IN 0, _OUT 1 */
			e->size = u.io.size;
			e->port = u.io.port;
			e->count = u.io.count;
		} else if (e->reason == KT_KVM_EXIT_MMIO) {
			e->gpa = u.mmio.phys_addr;
			e->size = u.mmio.len;
			e->op = u.mmio.is_write ? 2 : 0;	/* as kvm_mmio's type */
#ifdef KT_CAPTURE_VALUES
			__builtin_memcpy(&e->value, u.mmio.data, 8);
			e->flags |= KT_FLAG_VALUE;
#endif
		} else {
			/* Other members (hypercall, system_event, ex, ...): raw words. */
			e->info1 = u.raw[0];
			e->info2 = u.raw[1];
			e->gpa = u.raw[2];
		}
	}
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

/*
 * The VMM re-entering the guest: ioctl(vcpu_fd, KVM_RUN). Paired with the
 * previous kvm_userspace_exit of the same thread it gives the VMM's service
 * time, on hosts where kvm_entry does not fire too.
 */
#ifdef KT_PROBE_SYS_ENTER_IOCTL
TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	struct kt_event *e;

	if ((u32)args->cmd != KT_KVM_RUN)
		return 0;
	e = kt_reserve(KT_KIND_RUN);
	if (!e)
		return 0;
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif
