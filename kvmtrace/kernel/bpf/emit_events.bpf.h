/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Events mode (the default): every event leaves the kernel whole, through the
 * `events` ring buffer, and user space writes it to the trace file.
 *
 * What each mode provides to kvmtrace.bpf.c: kt_copy(), this CPU's copy of
 * the last traced thread's state (or none); kt_alloc(), room for one event;
 * kt_stamp(), its timestamp; and kt_submit(), what becomes of it. Inlined
 * into kvmtrace.bpf.c by kvmtrace/kernel/probe.py (see maps.bpf.h).
 */
#ifndef KT_EMIT_EVENTS_BPF_H
#define KT_EMIT_EVENTS_BPF_H

/*
 * Events mode reads nothing but kvm_run from a thread's state, and a storm
 * brings one vCPU thread's events to a CPU back to back: each CPU keeps a
 * copy of the last traced thread's entry, so most events need no hash
 * lookup (~45 ns each on the development host).
 */
BPF_PERCPU_ARRAY(last_thread, struct kt_cached_thread, 1);

/*
 * This CPU's copy. ``zero`` points to its key, 0, in the caller's frame:
 * kt_vcpu() looks up its other one-entry maps with the same slot.
 */
static __always_inline struct kt_cached_thread *kt_copy(u32 *zero)
{
	return last_thread.lookup(zero);
}

/* Room for one event in the ring buffer, or NULL if it is full (``zero``: unused). */
static __always_inline struct kt_event *kt_alloc(u32 *zero)
{
	return events.ringbuf_reserve(sizeof(struct kt_event));
}

/* Every event carries its time. */
static __always_inline void kt_stamp(struct kt_event *e, u32 kind)
{
	e->ts_ns = bpf_ktime_get_ns();
}

/* To user space. ``t`` (the thread's state) is counts mode's concern. */
static __always_inline void kt_submit(struct kt_event *e, struct kt_thread *t)
{
	events.ringbuf_submit(e, 0);
}

#endif /* KT_EMIT_EVENTS_BPF_H */
