/*
 * Hypercall wrappers, made the way Linux 6.1 (with the XSA-466 backports)
 * makes them: no hypercall page, an inline `syscall` executed in guest
 * kernel mode (pv-abi.md §4.1).
 *
 *   RAX = hypercall number, arguments in RDI, RSI, RDX, R10, R8,
 *   result in RAX (negative errno on failure).
 *
 * `syscall` overwrites RCX (return RIP) and R11 (RFLAGS) and the hypervisor
 * returns with SYSRET semantics, so we save and restore them around the
 * instruction exactly like Linux's xen_hypercall_pv (push rcx; push r11;
 * syscall; pop r11; pop rcx). The argument registers are declared in/out:
 * the hypervisor is allowed to leave them modified. The pushes need the
 * stack below RSP to be free, which -mno-red-zone guarantees.
 */
#ifndef HOSPES_GUEST_HYPERCALL_H
#define HOSPES_GUEST_HYPERCALL_H

#include "xen.h"

static inline long _hypercall5(unsigned long nr, unsigned long a1,
                               unsigned long a2, unsigned long a3,
                               unsigned long a4, unsigned long a5)
{
    register unsigned long r10 asm("r10") = a4;
    register unsigned long r8 asm("r8") = a5;
    long ret;

    asm volatile("push %%rcx\n\t"
                 "push %%r11\n\t"
                 "syscall\n\t"
                 "pop %%r11\n\t"
                 "pop %%rcx"
                 : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                 : "0"(nr)
                 : "memory");
    return ret;
}

#define _hc(nr, a1, a2, a3, a4, a5) \
    _hypercall5((nr), (unsigned long)(a1), (unsigned long)(a2), \
                (unsigned long)(a3), (unsigned long)(a4), (unsigned long)(a5))

static inline long HYPERVISOR_set_trap_table(const struct trap_info *t)
{ return _hc(__HYPERVISOR_set_trap_table, t, 0, 0, 0, 0); }

static inline long HYPERVISOR_mmu_update(struct mmu_update *req, unsigned count,
                                         unsigned *done, unsigned dom)
{ return _hc(__HYPERVISOR_mmu_update, req, count, done, dom, 0); }

static inline long HYPERVISOR_stack_switch(unsigned long ss, unsigned long sp)
{ return _hc(__HYPERVISOR_stack_switch, ss, sp, 0, 0, 0); }

static inline long HYPERVISOR_memory_op(unsigned cmd, void *arg)
{ return _hc(__HYPERVISOR_memory_op, cmd, arg, 0, 0, 0); }

static inline long HYPERVISOR_multicall(struct multicall_entry *calls, unsigned long n)
{ return _hc(__HYPERVISOR_multicall, calls, n, 0, 0, 0); }

static inline long HYPERVISOR_update_va_mapping(unsigned long va, uint64_t pte,
                                                unsigned long flags)
{ return _hc(__HYPERVISOR_update_va_mapping, va, pte, flags, 0, 0); }

static inline long HYPERVISOR_set_timer_op(uint64_t deadline_ns)
{ return _hc(__HYPERVISOR_set_timer_op, deadline_ns, 0, 0, 0, 0); }

static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{ return _hc(__HYPERVISOR_xen_version, cmd, arg, 0, 0, 0); }

static inline long HYPERVISOR_console_io(int cmd, int count, const char *buf)
{ return _hc(__HYPERVISOR_console_io, cmd, count, buf, 0, 0); }

static inline long HYPERVISOR_vcpu_op(int cmd, unsigned vcpu, void *arg)
{ return _hc(__HYPERVISOR_vcpu_op, cmd, vcpu, arg, 0, 0); }

static inline long HYPERVISOR_mmuext_op(struct mmuext_op *op, unsigned count,
                                        unsigned *done, unsigned dom)
{ return _hc(__HYPERVISOR_mmuext_op, op, count, done, dom, 0); }

static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{ return _hc(__HYPERVISOR_sched_op, cmd, arg, 0, 0, 0); }

static inline long HYPERVISOR_callback_op(int cmd, void *arg)
{ return _hc(__HYPERVISOR_callback_op, cmd, arg, 0, 0, 0); }

static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{ return _hc(__HYPERVISOR_event_channel_op, cmd, arg, 0, 0, 0); }

static inline long HYPERVISOR_set_debugreg(int reg, unsigned long value)
{ return _hc(__HYPERVISOR_set_debugreg, reg, value, 0, 0, 0); }

static inline long HYPERVISOR_get_debugreg(int reg)
{ return _hc(__HYPERVISOR_get_debugreg, reg, 0, 0, 0, 0); }

/* Any hypercall number, for probing unknown ones. */
static inline long HYPERVISOR_raw(unsigned long nr)
{ return _hc(nr, 0, 0, 0, 0, 0); }

/* Single mmuext operation on one frame (pin/unpin/baseptr). */
static inline long mmuext_mfn(unsigned cmd, uint64_t mfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
    return HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF);
}

/* Single mmu_update. */
static inline long mmu_update1(uint64_t ptr, uint64_t val)
{
    struct mmu_update u = { .ptr = ptr, .val = val };
    return HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
}

#endif
