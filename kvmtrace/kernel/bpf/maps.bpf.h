/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps every probe uses in both modes (libbpf-tools keeps its shared
 * map code in a maps.bpf.h too); each mode's own are in its emit_*.bpf.h.
 *
 * This header uses bcc's map syntax (targets.lookup()), which bcc rewrites in
 * its main source file only: kvmtrace/kernel/probe.py (bpf_source()) inlines
 * kvmtrace's .bpf.h headers into kvmtrace.bpf.c before bcc compiles it.
 */
#ifndef KT_MAPS_BPF_H
#define KT_MAPS_BPF_H

BPF_HASH(targets, u32, u32, KT_MAX_TARGETS);	/* tgid -> domain index */
BPF_HASH(threads, u32, struct kt_thread, KT_MAX_VCPUS);	/* vCPU tid -> its state */
/* Counts mode emits nothing, but keeps a one-page ring so user space finds the same maps. */
BPF_RINGBUF_OUTPUT(events, KT_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(matched, u64, KT_KIND_COUNT);	/* events for a target, per kind */
BPF_PERCPU_ARRAY(lost, u64, KT_KIND_COUNT);	/* of those, ring buffer (or `counts`) full */
BPF_ARRAY(stopped, u32, 1);		/* [0]: user space stopped matching */
BPF_PERCPU_ARRAY(spare_thread, struct kt_thread, 1);	/* when `threads` is full */

/*
 * A CPU's copy of the last traced thread's entry, keyed by the full pid_tgid
 * (a tid alone may be reused by another process): events mode keeps one per
 * CPU (emit_events.bpf.h), counts mode none.
 */
struct kt_cached_thread {
	u64 id;			/* bpf_get_current_pid_tgid() of the copy's thread */
	struct kt_thread t;
};

#endif /* KT_MAPS_BPF_H */
