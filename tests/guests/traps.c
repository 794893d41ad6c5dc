/*
 * traps: exception delivery to a PV kernel (pv-abi.md §6.2).
 *
 * set_trap_table, then fault on purpose in guest kernel mode and check the
 * bounce frame Xen builds on the current stack: RIP (faulting instruction,
 * or the next one for int3), CS with the RPL cleared (0xe030: the fault
 * came from kernel mode) and the saved upcall mask (1, events are off at
 * boot) in bits 32-39, RFLAGS with IF = !mask, RSP, SS, the error code, the
 * frame's position (current RSP rounded down to 16), and for #PF the
 * address in vcpu_info.arch.cr2 with error-code bit 2 (U) clear. The
 * handler skips the instruction and returns with HYPERVISOR_iret, which
 * must restore RCX/R11.
 */
#include "guest.h"

#define RCX_MAGIC 0x1111222233334444UL
#define R11_MAGIC 0x5555666677778888UL

void probe_div(uint64_t divisor);
void probe_int3(void);
void probe_ud2(void);
void probe_load(uint64_t addr);
void probe_store(uint64_t addr);
void probe_int41(void);

volatile uint64_t probe_fault_rip, probe_resume_rip, probe_rsp, probe_rflags;
volatile uint64_t probe_rcx_after, probe_r11_after;

static struct {
    uint64_t count;
    struct regs r;
    uint64_t cr2;
    uint64_t entry_rsp;
} seen;

static int probe_handler(struct regs *r)
{
    seen.count++;
    seen.r = *r;
    seen.cr2 = VCPU0->cr2;
    seen.entry_rsp = trap_entry_rsp;
    r->rip = probe_resume_rip;      /* skip the faulting instruction */
    return TRAP_RETURN;
}

struct expect {
    unsigned vector;
    uint64_t error;
    int has_error;      /* frame carries an error code */
    int trap;           /* RIP points after the instruction */
    int check_cr2;
    uint64_t cr2;
};

static const char *frame_problem(const struct expect *e)
{
    const struct regs *r = &seen.r;
    uint64_t top = probe_rsp & ~0xfUL;
    uint64_t words = e->has_error ? 8 : 7;

    if (r->vector != e->vector)
        return "vector";
    if (r->error != e->error)
        return "error code";
    if (r->rip != (e->trap ? probe_resume_rip : probe_fault_rip))
        return "rip";
    if ((r->cs & 0xffffffffUL) != (FLAT_KERNEL_CS & ~3))
        return "cs (want 0xe030: kernel-mode fault, RPL cleared)";
    if (FRAME_SAVED_MASK(r->cs) != 1)
        return "saved upcall mask in cs bits 32-39 (want 1)";
    if (r->rflags & X86_EFLAGS_IF)
        return "rflags.IF (want 0: events were masked)";
    if (r->rflags & X86_EFLAGS_IOPL)
        return "rflags.IOPL";
    if ((r->rflags & X86_EFLAGS_ARITH) != (probe_rflags & X86_EFLAGS_ARITH))
        return "rflags arithmetic flags";
    if (r->rsp != probe_rsp)
        return "rsp";
    if ((r->ss & 0xffff) != FLAT_KERNEL_SS)
        return "ss";
    if (seen.entry_rsp != top - words * 8)
        return "frame position (want current RSP & ~15, minus the frame)";
    if (e->check_cr2 && seen.cr2 != e->cr2)
        return "vcpu_info.arch.cr2";
    if (r->rcx != RCX_MAGIC || r->r11 != R11_MAGIC)
        return "interrupted RCX/R11 in the frame";
    if (probe_rcx_after != RCX_MAGIC || probe_r11_after != R11_MAGIC)
        return "RCX/R11 after HYPERVISOR_iret";
    return 0;
}

static void check_frame(const char *name, uint64_t count_before, const struct expect *e)
{
    if (seen.count != count_before + 1) {
        fail(name, "handler ran %lu times, want 1", seen.count - count_before);
        return;
    }
    const char *why = frame_problem(e);
    if (!why) {
        pass(name);
        return;
    }
    fail(name, "bad %s", why);
    dump_regs(&seen.r);
    printf("  expected vector %u error %#lx fault rip %#lx resume %#lx rsp %#lx "
           "rflags %#lx cr2 %#lx; saw cr2 %#lx frame at %#lx\n",
           e->vector, e->error, probe_fault_rip, probe_resume_rip, probe_rsp,
           probe_rflags, e->cr2, seen.cr2, seen.entry_rsp);
}

void guest_main(void)
{
    uint64_t n;

    if (!check_rc(map_shared_info(), "map_shared_info"))
        return;                         /* CR2 lives in shared_info */
    for (unsigned v = 0; v < 20; v++)
        trap_set_handler(v, probe_handler);
    if (!check_rc(traps_install(), "set_trap_table"))
        return;

    n = seen.count;
    probe_div(0);
    check_frame("trap_de", n, &(struct expect){ .vector = 0 });

    n = seen.count;
    probe_int3();
    check_frame("trap_bp", n, &(struct expect){ .vector = 3, .trap = 1 });

    n = seen.count;
    probe_ud2();
    check_frame("trap_ud", n, &(struct expect){ .vector = 6 });

    /* Non-canonical address: #GP(0), which the hypervisor tries to emulate
     * as a privileged instruction, fails to, and reflects. */
    n = seen.count;
    probe_load(0x8000000000000000UL);
    check_frame("trap_gp_noncanonical", n,
                &(struct expect){ .vector = 13, .has_error = 1 });

    /* int $0x41 with no DPL >= 1 trap_info entry: #GP, error = (0x41<<3)|2
     * (IDT bit), RIP at the int instruction (§6.7). */
    n = seen.count;
    probe_int41();
    check_frame("trap_gp_int_n", n,
                &(struct expect){ .vector = 13, .error = (0x41 << 3) | 2, .has_error = 1 });

    /* Unmapped kernel-half VA (L4 slot 402 is empty at boot). Read: error 0
     * (not present, read, supervisor: the U bit the hardware reports because
     * the kernel runs at CPL 3 must be cleared). */
    n = seen.count;
    probe_load(0xffffc90000123458UL);
    check_frame("trap_pf_read", n,
                &(struct expect){ .vector = 14, .error = 0, .has_error = 1,
                                  .check_cr2 = 1, .cr2 = 0xffffc90000123458UL });

    n = seen.count;
    probe_store(0xffffc90000456ab8UL);
    check_frame("trap_pf_write", n,
                &(struct expect){ .vector = 14, .error = 2, .has_error = 1,
                                  .check_cr2 = 1, .cr2 = 0xffffc90000456ab8UL });
}
