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
BPF_HASH(threads, u32, struct kt_thread, KT_MAX_VCPUS);	/* vCPU tid -> its state */
BPF_RINGBUF_OUTPUT(events, KT_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(matched, u64, KT_KIND_COUNT);	/* events for a target, per kind */
BPF_PERCPU_ARRAY(lost, u64, KT_KIND_COUNT);	/* of those, ring buffer full */
BPF_ARRAY(stopped, u32, 1);		/* [0]: user space stopped matching */
BPF_PERCPU_ARRAY(spare_thread, struct kt_thread, 1);	/* when `threads` is full */

#ifndef KT_MODE_COUNTS
/*
 * Events mode reads nothing but kvm_run from a thread's state, and a storm
 * brings one vCPU thread's events to a CPU back to back: each CPU keeps a
 * copy of the last traced thread's entry, so most events need no hash
 * lookup (~45 ns each on the development host). Keyed by the full
 * pid_tgid; counts mode, whose entries change per event, always looks up.
 */
struct kt_cached_thread {
	u64 id;			/* bpf_get_current_pid_tgid() of the copy's thread */
	struct kt_thread t;
};
BPF_PERCPU_ARRAY(last_thread, struct kt_cached_thread, 1);
#endif

/*
 * The current thread's state if it is a vCPU thread of a traced guest, else
 * NULL. User space enters the vCPU threads it knows (with their kvm_run)
 * before it adds their VMM to `targets`; a thread it did not know (a vCPU
 * added later) gets an entry at its first event. Entries outlive their
 * target's removal, so stopping is the `stopped` flag.
 */
static __always_inline struct kt_thread *kt_vcpu(u64 id)
{
	u32 tid = (u32)id, tgid = id >> 32, zero = 0, *stop = stopped.lookup(&zero);
	struct kt_thread *t, fresh = {};

	if (!stop || *stop)
		return NULL;
#ifndef KT_MODE_COUNTS
	struct kt_cached_thread *c = last_thread.lookup(&zero);

	if (c && c->id == id)
		return &c->t;
#endif
	t = threads.lookup(&tid);
	if (t && t->pid == tgid) {
#ifndef KT_MODE_COUNTS
		if (c) {
			c->id = id;
			c->t = *t;
		}
#endif
		return t;
	}
	if (!targets.lookup(&tgid))
		return NULL;
	fresh.pid = tgid;
	if (threads.update(&tid, &fresh) == 0) {
		t = threads.lookup(&tid);
		if (t)
			return t;
	}
	/* `threads` is full: the event is still traced, without run-loop state. */
	t = spare_thread.lookup(&zero);
	if (t)
		__builtin_memset(t, 0, sizeof(*t));
	return t;
}

/* Does a latency need this kind's timestamp in counts mode? (constant-folded) */
#define KT_TIMED(kind) ((kind) == KT_KIND_EXIT || (kind) == KT_KIND_ENTRY || \
			(kind) == KT_KIND_USERSPACE_EXIT || (kind) == KT_KIND_RUN)

#ifdef KT_MODE_COUNTS
/*
 * Counts mode: no event leaves the kernel. Each probe fills a per-CPU
 * scratch event exactly as in events mode, and kt_submit() folds it into
 * `counts`, keyed by what the reports group by (struct kt_key), and into
 * log2 latency histograms. User space reads the cumulative counts at
 * intervals and writes the deltas as aggregate rows of the same trace file.
 * The run loop's open exits live in the thread's struct kt_thread.
 */
BPF_PERCPU_ARRAY(scratch, struct kt_event, 1);
BPF_PERCPU_HASH(counts, struct kt_key, u64, KT_MAX_KEYS);

static __always_inline void kt_bump(struct kt_key *k, u32 kind)
{
	u64 one = 1, *n = counts.lookup(k);

	if (n) {
		(*n)++;
		return;
	}
	if (counts.update(k, &one) != 0) {	/* map full: this count is lost */
		n = lost.lookup(&kind);
		if (n)
			(*n)++;
	}
}

static __always_inline void kt_hist(struct kt_event *e, u32 which, u32 reason, u32 isa, u64 since)
{
	struct kt_key k = {};

	k.pid = e->pid;
	k.kind = KT_KIND_HIST;
	k.op = which;
	k.reason = reason;
	k.isa = isa;
	k.port = bpf_log2l(e->ts_ns - since);	/* bucket: [2^port, 2^(port+1)) ns */
	kt_bump(&k, KT_KIND_HIST);
}

/* ``t``: the thread's state, for the run-loop kinds (NULL for the others). */
static __always_inline void kt_submit(struct kt_event *e, struct kt_thread *t)
{
	struct kt_key k = {};

	k.pid = e->pid;
	k.kind = e->kind;
	k.op = e->op;
	k.flags = e->flags & KT_FLAG_RUN_FIELDS;
	switch (e->kind) {
	case KT_KIND_EXIT:
		k.tid = e->tid;
		k.reason = e->reason;
		k.isa = e->isa;
		if (t) {
			t->exit_ts = e->ts_ns;
			t->exit_reason = e->reason;
			t->exit_isa = e->isa;
		}
		break;
	case KT_KIND_ENTRY:
		k.tid = e->tid;
		if (t && t->exit_ts) {
			kt_hist(e, KT_LAT_EXIT_HANDLING, t->exit_reason, t->exit_isa, t->exit_ts);
			t->exit_ts = 0;
		}
		break;
	case KT_KIND_PIO:
		k.port = e->port;
		k.size = e->size;
		break;
	case KT_KIND_MMIO:
		/* A "read" completing this thread's last "unsatisfied-read" of the
		 * same address is the same access: count it once. */
		if (!t)
			break;
		if (e->op == 1 && t->mmio_open && t->mmio_gpa == e->gpa) {
			t->mmio_open = 0;
			return;
		}
		t->mmio_gpa = e->gpa;
		t->mmio_open = e->op == 0;
		k.gpa = e->gpa & ~0xfffULL;	/* per 4 KiB page */
		k.size = e->size;
		break;
	case KT_KIND_USERSPACE_EXIT:
		k.tid = e->tid;
		k.reason = e->reason;
		k.err = e->err;
		k.port = e->port;
		k.size = e->size;
		k.gpa = e->gpa & ~0xfffULL;
		if (e->reason != KT_KVM_EXIT_IO && e->reason != KT_KVM_EXIT_MMIO) {
			k.port = 0;
			k.size = 0;
			k.gpa = 0;
		}
		if (t && e->err >= 0) {
			t->uexit_ts = e->ts_ns;
			t->uexit_reason = e->reason;
		}
		break;
	case KT_KIND_IOCTL:
		k.reason = e->reason;
		break;
	case KT_KIND_RUN:
		k.tid = e->tid;
		if (t && t->uexit_ts) {
			kt_hist(e, KT_LAT_VMM_SERVICE, t->uexit_reason, 0, t->uexit_ts);
			t->uexit_ts = 0;
		}
		break;
	}
	kt_bump(&k, e->kind);
}
#else
static __always_inline void kt_submit(struct kt_event *e, struct kt_thread *t)
{
	events.ringbuf_submit(e, 0);
}
#endif

/*
 * A zeroed event of thread ``id`` (bpf_get_current_pid_tgid()), or NULL if
 * the ring buffer is full (counted in `lost`); counted in `matched` either
 * way. In counts mode only the kinds a latency needs read the clock.
 */
static __always_inline struct kt_event *kt_new(u32 kind, u64 id)
{
	struct kt_event *e;
	u64 *n;

	n = matched.lookup(&kind);
	if (n)
		(*n)++;
#ifdef KT_MODE_COUNTS
	u32 zero = 0;
	e = scratch.lookup(&zero);
#else
	e = events.ringbuf_reserve(sizeof(struct kt_event));
#endif
	if (!e) {
		n = lost.lookup(&kind);
		if (n)
			(*n)++;
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
#ifdef KT_MODE_COUNTS
	if (KT_TIMED(kind))
		e->ts_ns = bpf_ktime_get_ns();
#else
	e->ts_ns = bpf_ktime_get_ns();
#endif
	e->tid = (u32)id;
	e->pid = id >> 32;
	e->cpu = bpf_get_smp_processor_id();
	e->vcpu = KT_NO_VCPU;
	e->kind = kind;
	return e;
}

/* kt_new() for the current thread only if it is in a traced guest. */
static __always_inline struct kt_event *kt_reserve(u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;

	if (!targets.lookup(&tgid))
		return NULL;
	return kt_new(kind, id);
}

/*
 * kt_new() on a vCPU thread of a traced guest, with its state in *tp: the
 * run-loop probes, which fire on vCPU threads only.
 */
static __always_inline struct kt_event *kt_reserve_vcpu(u32 kind, struct kt_thread **tp)
{
	u64 id = bpf_get_current_pid_tgid();
	struct kt_thread *t = kt_vcpu(id);

	*tp = t;
	if (!t)
		return NULL;
	return kt_new(kind, id);
}

#ifdef KT_PROBE_KVM_EXIT
TRACEPOINT_PROBE(kvm, kvm_exit)
{
	struct kt_thread *t;
	struct kt_event *e = kt_reserve_vcpu(KT_KIND_EXIT, &t);

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
	kt_submit(e, t);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_ENTRY
TRACEPOINT_PROBE(kvm, kvm_entry)
{
	struct kt_thread *t;
	struct kt_event *e = kt_reserve_vcpu(KT_KIND_ENTRY, &t);

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
	kt_submit(e, t);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_PIO
TRACEPOINT_PROBE(kvm, kvm_pio)
{
	struct kt_thread *t;
	struct kt_event *e = kt_reserve_vcpu(KT_KIND_PIO, &t);

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
	kt_submit(e, t);
	return 0;
}
#endif

#ifdef KT_PROBE_KVM_MMIO
TRACEPOINT_PROBE(kvm, kvm_mmio)
{
	struct kt_thread *t;
	struct kt_event *e = kt_reserve_vcpu(KT_KIND_MMIO, &t);

	if (!e)
		return 0;
	e->op = args->type;
	e->size = args->len;
	e->gpa = args->gpa;
#ifdef KT_CAPTURE_VALUES
	e->value = args->val;
	e->flags |= KT_FLAG_VALUE;
#endif
	kt_submit(e, t);
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
	struct kt_thread *t;
	struct kt_event *e = kt_reserve_vcpu(KT_KIND_USERSPACE_EXIT, &t);
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
	if (t->kvm_run && e->err >= 0 &&
	    bpf_probe_read_user(&u, sizeof(u), (void *)(t->kvm_run + KT_KVM_RUN_UNION)) == 0) {
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
	kt_submit(e, t);
	return 0;
}
#endif

/*
 * The VMM's KVM ioctls. ioctl(vcpu_fd, KVM_RUN) is the VMM re-entering the
 * guest: paired with the thread's previous kvm_userspace_exit it gives the
 * VMM's service time, also on hosts where kvm_entry does not fire. Every
 * other KVM ioctl (type KVMIO) is kept from its entry to its return and
 * emitted there with its result and duration: KVM_CREATE_VM, the memory
 * slots, KVM_CREATE_VCPU, ... the guest's creation timeline. While `armed`
 * (kvmtrace launch, before the new VMM's pid is known) KVM ioctls of any
 * process are taken; user space keeps those of the VMM it launched.
 */
struct kt_ioctl {
	u64 ts;
	u64 arg;
	u64 gpa;
	u64 memory_size;
	u64 userspace_addr;
	u32 cmd;
	u32 fd;
	u32 slot;
	u32 flags;
};

struct kt_mem_region {		/* the head of kvm_userspace_memory_region{,2} */
	u32 slot;
	u32 flags;
	u64 guest_phys_addr;
	u64 memory_size;
	u64 userspace_addr;
};

BPF_HASH(ioctl_open, u32, struct kt_ioctl, KT_MAX_VCPUS);	/* tid -> ioctl in progress */
BPF_HASH(kvm_fds, u64, u32, 4096);	/* pid << 32 | fd -> KVM fd of a traced VMM */
BPF_ARRAY(armed, u32, 1);		/* [0]: take KVM ioctls of any process */

static __always_inline int kt_traced_or_armed(u32 tgid)
{
	u32 zero = 0, *a;

	if (targets.lookup(&tgid))
		return 1;
	a = armed.lookup(&zero);
	return a && *a;
}

#ifdef KT_PROBE_SYS_ENTER_IOCTL
TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	u32 cmd = (u32)args->cmd;
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct kt_ioctl io = {};
	struct kt_mem_region r = {};
	struct kt_event *e;

	if (cmd == KT_KVM_RUN) {
		struct kt_thread *t;

		e = kt_reserve_vcpu(KT_KIND_RUN, &t);
		if (e)
			kt_submit(e, t);
		return 0;
	}
	if (((cmd >> 8) & 0xff) != KT_KVMIO || !kt_traced_or_armed(id >> 32))
		return 0;
	io.ts = bpf_ktime_get_ns();
	io.cmd = cmd;
	io.fd = args->fd;
	io.arg = args->arg;
	if (cmd == KT_KVM_SET_USER_MEMORY_REGION || cmd == KT_KVM_SET_USER_MEMORY_REGION2) {
		if (bpf_probe_read_user(&r, sizeof(r), (void *)args->arg) == 0) {
			io.slot = r.slot;
			io.flags = r.flags;
			io.gpa = r.guest_phys_addr;
			io.memory_size = r.memory_size;
			io.userspace_addr = r.userspace_addr;
		}
	}
	ioctl_open.update(&tid, &io);
	return 0;
}
#endif

#ifdef KT_PROBE_SYS_EXIT_IOCTL
TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, tgid = id >> 32, one = 1;
	struct kt_ioctl *io = ioctl_open.lookup(&tid);
	struct kt_event *e;
	u64 key;

	if (!io)
		return 0;
	if (args->ret >= 0 && (io->cmd == KT_KVM_CREATE_VM || io->cmd == KT_KVM_CREATE_VCPU)) {
		key = (u64)tgid << 32 | (u32)args->ret;	/* the new VM or vCPU fd */
		kvm_fds.update(&key, &one);
		key = (u64)tgid << 32 | io->fd;		/* the fd it was made on */
		kvm_fds.update(&key, &one);
	}
	/* Not kt_reserve(): a launch takes the new VMM's ioctls before its
	 * pid is a target; sys_enter_ioctl decided whether to keep this one. */
	e = kt_new(KT_KIND_IOCTL, id);
	if (!e) {
		ioctl_open.delete(&tid);
		return 0;
	}
	e->ts_ns = io->ts;
	e->info2 = bpf_ktime_get_ns() - io->ts;	/* duration */
	e->reason = io->cmd;
	e->port = io->fd;
	e->err = args->ret;
	if (io->cmd == KT_KVM_SET_USER_MEMORY_REGION || io->cmd == KT_KVM_SET_USER_MEMORY_REGION2)
		e->gpa = io->gpa;	/* the slot's guest physical address */
	else
		e->gpa = io->arg;	/* e.g. KVM_CREATE_VCPU's vCPU id */
	e->info1 = io->memory_size;
	e->rip = io->userspace_addr;
	e->size = io->slot;
	e->count = io->flags;
	ioctl_open.delete(&tid);
	kt_submit(e, NULL);
	return 0;
}
#endif

#ifdef KT_PROBE_SYS_ENTER_CLOSE
/* A traced VMM closing one of its KVM fds (/dev/kvm, the VM or a vCPU). */
TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 key = (id >> 32) << 32 | (u32)args->fd;
	struct kt_event *e;

	if (!kvm_fds.lookup(&key))
		return 0;
	kvm_fds.delete(&key);
	e = kt_reserve(KT_KIND_CLOSE);
	if (!e)
		return 0;
	e->port = args->fd;
	kt_submit(e, NULL);
	return 0;
}
#endif

#ifdef KT_PROBE_SCHED_PROCESS_EXIT
/*
 * A thread exiting: its struct kt_thread goes. A traced VMM ending: its last
 * thread exiting (the kernel closes its fds).
 */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct kt_event *e;

	threads.delete(&tid);

#ifdef KT_HAVE_SCHED_PROCESS_EXIT_GROUP_DEAD
	if (!args->group_dead)
		return 0;
#else
	if ((u32)bpf_get_current_pid_tgid() != bpf_get_current_pid_tgid() >> 32)
		return 0;
#endif
	e = kt_reserve(KT_KIND_PROC_EXIT);
	if (!e)
		return 0;
	kt_submit(e, NULL);
	return 0;
}
#endif
