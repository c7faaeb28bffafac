/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What `kvmtrace launch` (and record --start) adds, built with KT_LAUNCH:
 * the maps of the ioctl probes that watch QEMU build the VM, and the switch
 * that stops them at the traced VMM's first KVM_RUN (kt_launch_ran(), called
 * by whichever probe gives the RUN edge). Without KT_LAUNCH kt_launch_ran()
 * is empty. Inlined into kvmtrace.bpf.c by kvmtrace/kernel/probe.py.
 */
#ifndef KT_LAUNCH_BPF_H
#define KT_LAUNCH_BPF_H

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

#ifdef KT_LAUNCH
BPF_HASH(ioctl_open, u32, struct kt_ioctl, KT_MAX_VCPUS);	/* tid -> ioctl in progress */
BPF_HASH(kvm_fds, u64, u32, KT_MAX_KVM_FDS);	/* pid << 32 | fd -> KVM fd of a traced VMM */
BPF_ARRAY(armed, u32, 1);		/* [0]: take KVM ioctls of any process */
BPF_ARRAY(ran, u32, 1);			/* [0]: the traced VMM's first KVM_RUN happened */

static __always_inline void kt_launch_ran(void)
{
	u32 zero = 0, *r = ran.lookup(&zero);

	if (r && !*r)
		*r = 1;
}

/* Take this KVM ioctl? Only before the first KVM_RUN, of a target or while armed. */
static __always_inline int kt_building(u32 tgid)
{
	u32 zero = 0, *a;

	a = ran.lookup(&zero);
	if (!a || *a)
		return 0;
	if (targets.lookup(&tgid))
		return 1;
	a = armed.lookup(&zero);
	return a && *a;
}
#else
static __always_inline void kt_launch_ran(void)
{
}
#endif

#endif /* KT_LAUNCH_BPF_H */
