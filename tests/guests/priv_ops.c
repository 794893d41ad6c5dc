/*
 * priv_ops: privileged operations a PV kernel executes, answered as Xen does
 * (xen/arch/x86/pv/emul-priv-op.c, emul-gate-op.c, iret.c, physdev.c).
 *
 * - A far call or jump through an LDT selector with no LDT loaded: #GP with
 *   the selector's error code (index and TI bit, RPL dropped), as the CPU
 *   reports it and Xen passes it on.
 * - Virtual IOPL: cli/sti in the guest kernel are emulated whatever the
 *   vIOPL; in guest user mode they #GP unless vIOPL is 3... on Xen, a user
 *   `cli` with vIOPL 3 is a no-op (emulated), with vIOPL < 3 a #GP(0).
 *   PHYSDEVOP_set_iopl sets it; VMASST_TYPE_architectural_iopl makes
 *   HYPERVISOR_iret take it from the frame's RFLAGS.IOPL.
 */
#include "guest.h"

static volatile uint64_t gp_count, gp_error, gp_rip;
static volatile uint64_t skip_len = 2;

static int gp_handler(struct regs *r)
{
    gp_count++;
    gp_error = r->error;
    gp_rip = r->rip;
    r->rip += skip_len;
    return TRAP_RETURN;
}

struct far_ptr {
    uint32_t offset;
    uint16_t sel;
} __attribute__((packed));

/* #GP error code of `lcall *ptr` (ff 18) or `ljmp *ptr` (ff 28); ~0 if no #GP. */
static uint64_t far_gp(uint16_t sel, int jump)
{
    static struct far_ptr ptr;
    uint64_t before = gp_count;
    ptr.offset = 0x1000;
    ptr.sel = sel;
    skip_len = 2;
    if (jump)
        asm volatile("ljmpl *(%0)" : : "r"(&ptr) : "memory");
    else
        asm volatile("lcalll *(%0)" : : "r"(&ptr) : "memory");
    return gp_count == before ? ~0UL : gp_error;
}

void guest_main(void)
{
    trap_set_handler(13, gp_handler);
    require_rc(traps_install(), "set_trap_table");

    uint64_t e1 = far_gp(0x0007, 0), e2 = far_gp(0x001f, 0), e3 = far_gp(0x000c, 1);
    uint64_t e4 = far_gp(0xfffc, 0), e5 = far_gp(0x0003, 0);
    check(e1 == 0x4 && e2 == 0x1c && e3 == 0xc && e4 == 0xfffc && e5 == 0, "far_call_ldt_selector_no_ldt",
          "error codes %#lx %#lx %#lx %#lx %#lx, want 0x4 0x1c 0xc 0xfffc 0 (null selector)",
          e1, e2, e3, e4, e5);
}
