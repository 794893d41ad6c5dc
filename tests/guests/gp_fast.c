/*
 * gp_fast: the privileged instructions whose #GP Hospes answers inside the VM
 * (pv-abi.md §7) behave exactly as the ones it answers from Python, as Xen's
 * emul-priv-op.c answers them:
 *
 * - with vIOPL 1 a kernel `cli` / `sti` is a no-op (no #GP), thousands of
 *   times over; with vIOPL 0 each is a #GP(0) again;
 * - rdmsr(MSR_SHADOW_GS_BASE) in kernel mode is the user GS base, whether it
 *   was set by set_segment_base(SEGBASE_GS_USER) or by wrmsr;
 * - a `cli` under TF is followed by the single-step #DB, at the next RIP;
 * - a `cli` in the last byte of a page whose next page is unmapped is still a
 *   no-op (Hospes' read of the instruction faults; it falls back), and the
 *   fetch of the next instruction is then the guest's #PF.
 *
 * tests/test_pv_guests.py also counts the #GP exits: the thousands of
 * instructions above must not leave the VM.
 */
#include "guest.h"

#define HC_set_segment_base 25
#define HC_physdev_op       33
#define PHYSDEVOP_set_iopl  6
#define SEGBASE_GS_USER     1
#define MSR_SHADOW_GS_BASE  0xc0000102
#define X86_EFLAGS_TF       0x100
#define LOOPS               2000

static volatile uint64_t gp_count, db_count, db_rip, pf_count, pf_cr2, pf_rip;
static volatile uint64_t pf_resume;

static int gp_handler(struct regs *r)
{
    gp_count++;
    r->rip += 1;            /* only cli / sti fault here on purpose */
    return TRAP_RETURN;
}

static int db_handler(struct regs *r)
{
    db_count++;
    db_rip = r->rip;
    r->rflags &= ~(uint64_t)X86_EFLAGS_TF;
    return TRAP_RETURN;
}

static int pf_handler(struct regs *r)
{
    pf_count++;
    pf_cr2 = VCPU0->cr2;
    pf_rip = r->rip;
    if (!pf_resume) {
        fail("unexpected_trap", "#PF at %#lx cr2 %#lx error %#lx", r->rip, pf_cr2, r->error);
        finish();
    }
    r->rip = pf_resume;     /* the call's return address: "return" from the page */
    r->rsp += 8;
    pf_resume = 0;
    return TRAP_RETURN;
}

static long set_iopl(uint32_t iopl)
{
    static uint32_t arg;
    arg = iopl;
    return _hc(HC_physdev_op, PHYSDEVOP_set_iopl, &arg, 0, 0, 0);
}

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

static void wrmsr(uint32_t msr, uint64_t val)
{
    asm volatile("wrmsr" : : "c"(msr), "a"((uint32_t)val), "d"((uint32_t)(val >> 32)) : "memory");
}

/* Two pages of code space: a `cli` in the first one's last byte, the second unmapped. */
static uint8_t code[2 * 4096] __attribute__((aligned(4096)));

void guest_main(void)
{
    trap_set_handler(13, gp_handler);
    trap_set_handler(1, db_handler);
    trap_set_handler(14, pf_handler);
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(traps_install(), "set_trap_table");

    require_rc(set_iopl(1), "set_iopl");
    for (int i = 0; i < LOOPS; i++)
        asm volatile("cli; sti" ::: "memory");
    check(gp_count == 0, "cli_sti_viopl1_noops", "%lu #GPs in %d cli;sti", gp_count, LOOPS);

    require_rc(set_iopl(0), "set_iopl");
    asm volatile("cli; sti" ::: "memory");
    check(gp_count == 2, "cli_sti_viopl0_gp", "%lu #GPs, want 2", gp_count);
    require_rc(set_iopl(1), "set_iopl");

    int bad = 0;
    uint64_t got = 0, want = 0;
    for (uint64_t i = 0; i < LOOPS && !bad; i++) {
        want = 0x00007f0000001000ULL + (i << 12) + i;
        if (i & 1)
            require_rc(_hc(HC_set_segment_base, SEGBASE_GS_USER, want, 0, 0, 0), "set_segment_base");
        else
            wrmsr(MSR_SHADOW_GS_BASE, want);
        got = rdmsr(MSR_SHADOW_GS_BASE);
        bad = got != want;
    }
    check(!bad && gp_count == 2, "rdmsr_shadow_gs_base_is_the_user_base",
          "read %#lx, want %#lx (%lu #GPs)", got, want, gp_count);

    uint64_t flags, after_cli;
    asm volatile("pushfq; pop %0" : "=r"(flags));
    flags |= X86_EFLAGS_TF;
    asm volatile("push %1; popfq; cli; 1: nop; lea 1b(%%rip), %0" : "=r"(after_cli) : "r"(flags) : "memory");
    check(db_count == 1 && db_rip == after_cli && gp_count == 2, "cli_under_tf_single_steps",
          "%lu #DBs at %#lx (want 1 at %#lx), %lu #GPs", db_count, db_rip, after_cli, gp_count);

    uint8_t *page_end = &code[4095], *next = &code[4096];
    *page_end = 0xfa;               /* cli */
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)next, 0, UVMF_INVLPG), "unmap_next_page");
    asm volatile("lea 1f(%%rip), %%rax; mov %%rax, %0; call *%1; 1:"
                 : "=m"(pf_resume) : "r"(page_end) : "rax", "memory");
    check(pf_count == 1 && pf_cr2 == (uint64_t)next && pf_rip == (uint64_t)next && gp_count == 2,
          "cli_at_page_end_then_pf", "%lu #PFs at rip %#lx cr2 %#lx (want 1 at %p), %lu #GPs",
          pf_count, pf_rip, pf_cr2, next, gp_count);
}
