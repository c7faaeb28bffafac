/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Counts mode: each vCPU thread's time per state (kvmtrace/kernel/events.py
 * VcpuState), kept in its struct kt_thread. Two facts make the state:
 * inside KVM_RUN or not (the RUN and USERSPACE_EXIT edges) and where the
 * scheduler has the thread (ON_CPU, RUNNABLE, ASLEEP: sched_switch and
 * sched_wakeup). At each change the time since the last one goes to the
 * state that held; user space adds the open state's time when it reads.
 *
 * The state at attach comes from /proc (kvmtrace/record/threadstate.py);
 * the first edge of each kind also says what held before it (a switch out:
 * the thread was on a CPU; a switch in: it was runnable; KVM_RUN entered:
 * it was outside; KVM_RUN returning: it was inside), which corrects /proc's
 * answer, read a moment before the probes matched.
 *
 * On VMX/SVM hosts GUEST splits by kvm_exit/kvm_entry (kt_guest_edge()):
 * guest_ns books the GUEST time after a kvm_entry, until the kvm_exit (the
 * rest of GUEST is exit handling). guest_out is 1 once the thread is known
 * to be outside the guest: after a kvm_exit, a switch out, KVM_RUN
 * returning or entered. Before the first kvm_exit/kvm_entry it is 0 (maybe
 * in the guest); if that first edge is a kvm_entry the thread was not in
 * the guest, and what guest_ns booked until then goes. User space reads
 * guest_ns only once guest_seen (VCPU_TIME_IN_GUEST rows), so hosts where
 * these tracepoints never fire have no split. analysis/vcpu_time.py's
 * _in_guest_after() gives the same. Inlined into
 * kvmtrace.bpf.c through emit_counts.bpf.h by kvmtrace/kernel/probe.py.
 *
 * The run-loop edges (KVM_RUN entered and returning, kvm_exit, kvm_entry)
 * fire in the vCPU thread itself, so at each the thread is on a CPU,
 * whatever the last sched event said: a lost switch in (seen once here,
 * 4 of 26 in one recording, none in the next) then costs the time to the
 * thread's next edge, not until its next switch.
 */
#ifndef KT_VCPU_TIME_BPF_H
#define KT_VCPU_TIME_BPF_H

static __always_inline u32 kt_state(const struct kt_thread *t)
{
	if (t->sched == KT_SCHED_RUNNABLE)
		return KT_STATE_PREEMPTED;
	if (t->sched == KT_SCHED_ASLEEP)
		return t->in_run ? KT_STATE_HALTED : KT_STATE_VMM_WAITING;
	return t->in_run ? KT_STATE_GUEST : KT_STATE_VMM;
}

/* Book the time since the last change to the state that held. */
static __always_inline void kt_account(struct kt_thread *t, u64 now)
{
	u32 s = kt_state(t);

	if (t->state_ts && now > t->state_ts && s < KT_STATE_COUNT) {
		t->state_ns[s] += now - t->state_ts;
		if (s == KT_STATE_GUEST && !t->guest_out)
			t->guest_ns += now - t->state_ts;
	}
	t->state_ts = now;
}

/* KVM_RUN entered (inside = 1) or returned (0): outside the guest either way. */
static __always_inline void kt_run_edge(struct kt_thread *t, u64 now, u8 inside)
{
	if (!t->run_seen) {
		t->in_run = !inside;
		t->run_seen = 1;
	}
	kt_account(t, now);
	t->in_run = inside;
	t->guest_out = 1;
	t->sched = KT_SCHED_ON_CPU;	/* the thread itself is here: on a CPU (KT_OWN_EDGE) */
}

/*
 * kvm_entry (entry = 1) or kvm_exit (0) of thread ``t``: into the guest or
 * out of it. Both happen inside KVM_RUN, which a trace without KVM_RUN
 * edges learns from them.
 */
static __always_inline void kt_guest_edge(struct kt_thread *t, u64 now, u8 entry)
{
	kt_account(t, now);
	if (!t->guest_seen) {
		if (entry)	/* it was not in the guest: nothing booked was */
			t->guest_ns = 0;
		t->guest_seen = 1;
	}
	t->guest_out = !entry;
	t->in_run = 1;
	t->sched = KT_SCHED_ON_CPU;	/* as in kt_run_edge() */
}

/* A SCHED_SWITCH or WAKEUP event of thread ``t``. */
static __always_inline void kt_sched_edge(struct kt_thread *t, const struct kt_event *e)
{
	if (e->kind == KT_KIND_WAKEUP) {
		/* A wakeup of a thread still on its CPU changes nothing. */
		if (t->sched == KT_SCHED_ON_CPU)
			return;
		kt_account(t, e->ts_ns);
		t->sched = KT_SCHED_RUNNABLE;
		return;
	}
	if (!t->sched_seen) {
		t->sched = e->op == KT_SWITCH_OUT ? KT_SCHED_ON_CPU : KT_SCHED_RUNNABLE;
		t->sched_seen = 1;
	}
	kt_account(t, e->ts_ns);
	if (e->op == KT_SWITCH_IN) {
		t->sched = KT_SCHED_ON_CPU;
		return;
	}
	t->guest_out = 1;	/* a thread off its CPU is not in the guest */
	if ((e->flags & KT_FLAG_PREEMPT) || e->reason == 0)
		t->sched = KT_SCHED_RUNNABLE;	/* preempted, or yielded: still runnable */
	else
		t->sched = KT_SCHED_ASLEEP;
}

#endif /* KT_VCPU_TIME_BPF_H */
