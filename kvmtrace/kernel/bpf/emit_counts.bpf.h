/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Counts mode (record --mode counts): no event leaves the kernel. Each probe
 * fills a per-CPU scratch event exactly as in events mode, and kt_submit()
 * folds it into `counts`, keyed by what the reports group by (struct kt_key),
 * and into log2 latency histograms. User space reads the cumulative counts at
 * intervals and writes the deltas as aggregate rows of the same trace file.
 * The run loop's open exits live in the thread's struct kt_thread.
 *
 * Provides what emit_events.bpf.h does (kt_copy, kt_alloc, kt_stamp,
 * kt_submit), for this mode. Inlined into kvmtrace.bpf.c by
 * kvmtrace/kernel/probe.py (see maps.bpf.h).
 */
#ifndef KT_EMIT_COUNTS_BPF_H
#define KT_EMIT_COUNTS_BPF_H

#include "vcpu_time.bpf.h"

BPF_PERCPU_ARRAY(scratch, struct kt_event, 1);
BPF_PERCPU_HASH(counts, struct kt_key, u64, KT_MAX_KEYS);
/* The MMIO addresses counted exactly; once full, others are counted per page. */
BPF_HASH(mmio_addrs, u64, u8, KT_MAX_MMIO_ADDRS);

/*
 * The key's address for an MMIO access (``admit``: may enter it in
 * `mmio_addrs`) or an MMIO userspace exit (its access came first and entered
 * it): the exact address while `mmio_addrs` has room for it, else its page,
 * marked with KT_FLAG_MMIO_PAGE, so every access is still counted exactly.
 */
static __always_inline u64 kt_mmio_key(u64 gpa, u8 *flags, int admit)
{
	u8 one = 1;

	if (mmio_addrs.lookup(&gpa))
		return gpa;
	if (admit && mmio_addrs.update(&gpa, &one) == 0)
		return gpa;
	*flags |= KT_FLAG_MMIO_PAGE;
	return KT_MMIO_PAGE(gpa);
}

/*
 * No per-CPU copy of a thread's state: counts mode changes the entry with
 * every event, so it always looks it up (kt_vcpu() drops the copy's code).
 */
static __always_inline struct kt_cached_thread *kt_copy(u32 *zero)
{
	return NULL;
}

/* This CPU's scratch event (``zero``: its key, as for kt_copy()). */
static __always_inline struct kt_event *kt_alloc(u32 *zero)
{
	return scratch.lookup(zero);
}

/* Does a latency need this kind's timestamp? (constant-folded) */
#define KT_TIMED(kind) ((kind) == KT_KIND_EXIT || (kind) == KT_KIND_ENTRY || \
			(kind) == KT_KIND_USERSPACE_EXIT || (kind) == KT_KIND_RUN || \
			(kind) == KT_KIND_SCHED_SWITCH || (kind) == KT_KIND_WAKEUP)

/* Only the kinds a latency needs read the clock; the others keep ts_ns 0. */
static __always_inline void kt_stamp(struct kt_event *e, u32 kind)
{
	if (KT_TIMED(kind))
		e->ts_ns = bpf_ktime_get_ns();
}

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
	k.port = bpf_log2l(e->ts_ns - since);	/* bcc: floor(log2)+1, so [2^(port-1), 2^port) ns */
	kt_bump(&k, KT_KIND_HIST);
}

/* ``t``: the thread's state, for the run-loop kinds (NULL for the others). */
static __always_inline void kt_submit(struct kt_event *e, struct kt_thread *t)
{
	struct kt_key k = {};

	if (e->kind == KT_KIND_SCHED_SWITCH || e->kind == KT_KIND_WAKEUP) {
		/* Not counted: they only move the thread's time between states. */
		if (t)
			kt_sched_edge(t, e);
		return;
	}
	k.pid = e->pid;
	k.kind = e->kind;
	k.op = e->op;
	k.flags = e->flags & (KT_FLAG_RUN_FIELDS | KT_FLAG_RUN_UNION);
	switch (e->kind) {
	case KT_KIND_EXIT:
		k.tid = e->tid;
		k.reason = e->reason;
		k.isa = e->isa;
		if (t) {
			t->exit_ts = e->ts_ns;
			t->exit_reason = e->reason;
			t->exit_isa = e->isa;
			kt_guest_edge(t, e->ts_ns, 0);
		}
		break;
	case KT_KIND_ENTRY:
		k.tid = e->tid;
		if (t && t->exit_ts) {
			kt_hist(e, KT_LAT_EXIT_HANDLING, t->exit_reason, t->exit_isa, t->exit_ts);
			t->exit_ts = 0;
		}
		if (t)
			kt_guest_edge(t, e->ts_ns, 1);
		break;
	case KT_KIND_PIO:
		k.tid = e->tid;		/* per vCPU thread, as events mode */
		k.port = e->port;
		k.size = e->size;
		break;
	case KT_KIND_MMIO:
		/* A "read" completing this thread's last "unsatisfied-read" of the
		 * same address is the same access: count it once. */
		if (!t)
			break;
		if (e->op == KT_MMIO_READ && t->mmio_open && t->mmio_gpa == e->gpa) {
			t->mmio_open = 0;
			return;
		}
		t->mmio_gpa = e->gpa;
		t->mmio_open = e->op == KT_MMIO_UNSATISFIED_READ;
		k.tid = e->tid;
		k.gpa = kt_mmio_key(e->gpa, &k.flags, 1);
		k.size = e->size;
		break;
	case KT_KIND_USERSPACE_EXIT:
		k.tid = e->tid;
		k.reason = e->reason;
		k.err = e->err;
		k.port = e->port;
		k.size = e->size;
		if (e->reason == KT_KVM_EXIT_MMIO) {
			k.gpa = kt_mmio_key(e->gpa, &k.flags, 0);
		} else if (e->reason != KT_KVM_EXIT_IO) {
			/* Other members: their first 16 bytes (runfields.py), or nothing. */
			k.gpa = e->rip;
			k.port = (u32)e->info1;
			k.size = e->info1 >> 32;
		}
		if (t && e->err >= 0) {
			t->uexit_ts = e->ts_ns;
			t->uexit_reason = e->reason;
		}
		if (t)	/* KVM_RUN returned, an exit or not (-EINTR) */
			kt_run_edge(t, e->ts_ns, 0);
		break;
	case KT_KIND_IOCTL:
		k.reason = e->reason;
		break;
	case KT_KIND_RUN:
		k.tid = e->tid;
		if (t)
			kt_run_edge(t, e->ts_ns, 1);
		if (t && t->uexit_ts) {
			/* A userspace exit's reason is KVM's, the same on any hardware. */
			kt_hist(e, KT_LAT_VMM_SERVICE, t->uexit_reason, KT_ISA_UNKNOWN, t->uexit_ts);
			t->uexit_ts = 0;
		}
		break;
	}
	kt_bump(&k, e->kind);
}

#endif /* KT_EMIT_COUNTS_BPF_H */
