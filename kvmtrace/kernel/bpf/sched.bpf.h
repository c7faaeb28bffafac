/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Where each vCPU thread's time goes: the scheduler's raw tracepoints,
 * filtered in the kernel to the traced vCPU threads (an entry in `threads`
 * whose tgid matches), each building a struct kt_event that the mode's
 * kt_submit() streams (events mode: the analysis builds the state timeline)
 * or folds into the thread's per-state nanoseconds (counts mode,
 * vcpu_time.bpf.h).
 *
 * sched_switch fires for every context switch on the host: its probe costs
 * every process two hash lookups (prev's and next's tid) and nothing else
 * unless one of them is a vCPU thread.
 *
 * task_struct offsets (KT_TASK_*_OFF) come from the running kernel's BTF
 * (kvmtrace/kernel/btf.py): the headers bcc compiles against may be another
 * kernel's. Inlined into kvmtrace.bpf.c by kvmtrace/kernel/probe.py.
 */
#ifndef KT_SCHED_BPF_H
#define KT_SCHED_BPF_H
#if defined(KT_PROBE_SCHED_SWITCH) || defined(KT_PROBE_SCHED_WAKEUP) || defined(KT_PROBE_SCHED_WAKEUP_NEW)

static __always_inline u32 kt_task_u32(const void *task, u32 off)
{
	u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (const char *)task + off);
	return v;
}

/* The traced vCPU thread ``task`` is, with its full id in *id, or NULL. */
static __always_inline struct kt_thread *kt_sched_thread(const void *task, u64 *id)
{
	u32 zero = 0, *stop = stopped.lookup(&zero);
	u32 tid, tgid;
	struct kt_thread *t;

	if (!stop || *stop || !task)
		return NULL;
	tid = kt_task_u32(task, KT_TASK_PID_OFF);
	t = threads.lookup(&tid);
	if (!t)
		return NULL;
	tgid = kt_task_u32(task, KT_TASK_TGID_OFF);
	if (t->pid != tgid)
		return NULL;
	*id = (u64)tgid << 32 | tid;
	return t;
}

#ifdef KT_PROBE_SCHED_SWITCH
/* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
 *          unsigned int prev_state) (include/trace/events/sched.h) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
	const void *prev = (const void *)ctx->args[1];
	const void *next = (const void *)ctx->args[2];
	struct kt_thread *t;
	struct kt_event *e;
	u64 id;

	t = kt_sched_thread(prev, &id);
	if (t) {
		e = kt_new(KT_KIND_SCHED_SWITCH, id);
		if (e) {
			e->op = KT_SWITCH_OUT;
#ifdef KT_SCHED_SWITCH_PREV_STATE_ARG
			e->reason = (u32)ctx->args[3];
#else
			e->reason = kt_task_u32(prev, KT_TASK_STATE_OFF);
#endif
			if (ctx->args[0])
				e->flags |= KT_FLAG_PREEMPT;
			kt_submit(e, t);
		}
	}
	t = kt_sched_thread(next, &id);
	if (t) {
		e = kt_new(KT_KIND_SCHED_SWITCH, id);
		if (e) {
			e->op = KT_SWITCH_IN;
			kt_submit(e, t);
		}
	}
	return 0;
}
#endif

static __always_inline int kt_wakeup(const void *p, u8 op)
{
	struct kt_thread *t;
	struct kt_event *e;
	u64 id;

	t = kt_sched_thread(p, &id);
	if (!t)
		return 0;
	e = kt_new(KT_KIND_WAKEUP, id);
	if (!e)
		return 0;
	e->op = op;
	kt_submit(e, t);
	return 0;
}

#ifdef KT_PROBE_SCHED_WAKEUP
/* TP_PROTO(struct task_struct *p) */
RAW_TRACEPOINT_PROBE(sched_wakeup)
{
	return kt_wakeup((const void *)ctx->args[0], 0);
}
#endif

#ifdef KT_PROBE_SCHED_WAKEUP_NEW
RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
	return kt_wakeup((const void *)ctx->args[0], 1);
}
#endif

#endif /* any sched probe */
#endif /* KT_SCHED_BPF_H */
