/*
 * priv_ops: privileged operations a PV kernel executes, answered as Xen does
 * (xen/arch/x86/pv/emul-priv-op.c, emul-gate-op.c, iret.c, physdev.c).
 *
 * - A far call or jump through an LDT selector with no LDT loaded: #GP with
 *   the selector's error code (index and TI bit, RPL dropped), as the CPU
 *   reports it and Xen passes it on.
 * - Virtual IOPL (iopl_ok): cli/sti are no-ops when allowed, else #GP(0);
 *   the guest kernel counts as ring 1 (ring 0 under
 *   VMASST_TYPE_architectural_iopl), so with vIOPL 0 a kernel `cli` is a
 *   #GP. PHYSDEVOP_set_iopl sets vIOPL; under the assist HYPERVISOR_iret
 *   takes it from the frame's RFLAGS.IOPL and bounce frames show it.
 */
#include "guest.h"

static volatile uint64_t gp_count, gp_error, gp_rip;
static volatile uint64_t skip_len = 2;
static volatile uint64_t bp_rflags, bp_set_iopl;

#define HC_vm_assist    21
#define HC_physdev_op   33
#define PHYSDEVOP_set_iopl 6
#define VMASST_TYPE_architectural_iopl 4

/* int3: record the frame's RFLAGS, return with IOPL bp_set_iopl in it. */
static int bp_handler(struct regs *r)
{
    bp_rflags = r->rflags;
    r->rflags = (r->rflags & ~0x3000UL) | (bp_set_iopl << 12);
    return TRAP_RETURN;
}

static long set_iopl(uint32_t iopl)
{
    static uint32_t arg;
    arg = iopl;
    return _hc(HC_physdev_op, PHYSDEVOP_set_iopl, &arg, 0, 0, 0);
}

/* #GPs of cli; sti. */
static uint64_t cli_sti_gps(void)
{
    uint64_t before = gp_count;
    skip_len = 1;
    asm volatile("cli; sti" ::: "memory");
    skip_len = 2;
    return gp_count - before;
}

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
    trap_set_handler(3, bp_handler);
    require_rc(traps_install(), "set_trap_table");

    uint64_t e1 = far_gp(0x0007, 0), e2 = far_gp(0x001f, 0), e3 = far_gp(0x000c, 1);
    uint64_t e4 = far_gp(0xfffc, 0), e5 = far_gp(0x0003, 0);
    check(e1 == 0x4 && e2 == 0x1c && e3 == 0xc && e4 == 0xfffc && e5 == 0, "far_call_ldt_selector_no_ldt",
          "error codes %#lx %#lx %#lx %#lx %#lx, want 0x4 0x1c 0xc 0xfffc 0 (null selector)",
          e1, e2, e3, e4, e5);

    /* Virtual IOPL. */
    uint64_t g0 = cli_sti_gps(), e0 = gp_error;
    check(g0 == 2 && e0 == 0, "kernel_cli_viopl0_gp", "#GPs %lu error %#lx, want 2 #GP(0)", g0, e0);
    check(set_iopl(4) == -XEN_EINVAL, "set_iopl_above_3_einval", "set_iopl(4) accepted");
    require_rc(set_iopl(1), "set_iopl");
    uint64_t g1 = cli_sti_gps();
    check(g1 == 0, "kernel_cli_viopl1_ok", "#GPs %lu", g1);
    require_rc(set_iopl(0), "set_iopl");
    require_rc(_hc(HC_vm_assist, 0, VMASST_TYPE_architectural_iopl, 0, 0, 0), "vm_assist");
    uint64_t g2 = cli_sti_gps();
    check(g2 == 0, "architectural_iopl_kernel_is_ring0", "#GPs %lu with vIOPL 0", g2);
    bp_set_iopl = 3;
    asm volatile("int3" ::: "memory");          /* returns with IOPL 3: vIOPL := 3 */
    uint64_t f1 = bp_rflags;
    bp_set_iopl = 0;
    asm volatile("int3" ::: "memory");          /* frame shows vIOPL 3; returns with IOPL 0 */
    uint64_t f2 = bp_rflags;
    asm volatile("int3" ::: "memory");
    uint64_t f3 = bp_rflags;
    check((f1 & 0x3000) == 0 && (f2 & 0x3000) == 0x3000 && (f3 & 0x3000) == 0, "architectural_iopl_iret_and_frames",
          "frame IOPLs %#lx %#lx %#lx, want 0 0x3000 0", f1 & 0x3000, f2 & 0x3000, f3 & 0x3000);
    require_rc(_hc(HC_vm_assist, 1, VMASST_TYPE_architectural_iopl, 0, 0, 0), "vm_assist");
    bp_set_iopl = 3;
    asm volatile("int3" ::: "memory");          /* without the assist iret ignores the IOPL */
    asm volatile("int3" ::: "memory");
    uint64_t f4 = bp_rflags, g3 = cli_sti_gps();
    check((f4 & 0x3000) == 0 && g3 == 2, "iret_ignores_iopl_without_assist",
          "frame IOPL %#lx, cli/sti #GPs %lu (vIOPL must still be 0)", f4 & 0x3000, g3);
}
