/*
 * debugregs: DR0-DR7 as Xen virtualizes them for a PV guest
 * (xen/arch/x86/pv/misc-hypercalls.c set_debugreg, x86emul_read_dr,
 * emul-priv-op.c for mov to/from %drN, traps.c do_debug).
 *
 * Initial values DR6 0xffff0ff0 and DR7 0x400; set_debugreg's checks
 * (guest addresses only, reserved bits, GD refused, I/O breakpoints only with
 * CR4.DE); the emulated `mov %drN`; data, instruction and single-step
 * breakpoints firing with Xen's DR6; a breakpoint deferred by `mov %ss` into
 * the SYSCALL of a hypercall, which Xen ignores ("#DB in Xen context").
 *
 * Built twice: `debugregs` (everything but data and instruction breakpoints)
 * and `debugregs_hw` (debugregs_hw.c: DEBUGREGS_HW, only those two), because
 * the PVM host Hospes is developed on never raises them for a guest although
 * KVM holds the registers (tests/test_pv_guests.py expects that kernel to fail).
 */
#include "guest.h"

#define DR6_DEFAULT 0xffff0ff0UL
#define DR7_DEFAULT 0x400UL
#define DR6_BS      (1UL << 14)
#define RFLAGS_TF   (1UL << 8)
#define CR4_DE      (1UL << 3)

/* PVM loads a breakpoint into the CPU only for a lower-half address (the upper
 * half is the host's), so the breakpoints fire on a page this kernel maps at
 * LOW_VA in L4 slot 0. On Xen any guest address works. */
#define LOW_VA 0x200000UL
#define _PAGE_USER_BIT 0x4UL

static uint64_t maddr_of(const void *va)
{
    return (virt_to_mfn(va) << 12) | ((uint64_t)va & 0xfff);
}

static volatile uint8_t *map_low_page(void)
{
    uint64_t *l4 = (uint64_t *)xen_start_info->pt_base;
    if (l4[0] != 0)
        return 0;
    uint64_t *l3 = alloc_page(), *l2 = alloc_page(), *l1 = alloc_page();
    uint8_t *data = alloc_page();
    l1[0] = (virt_to_mfn(data) << 12) | PTE_KERNEL_RW | _PAGE_USER_BIT;
    l2[1] = (virt_to_mfn(l1) << 12) | PTE_TABLE;
    l3[0] = (virt_to_mfn(l2) << 12) | PTE_TABLE;
    if (set_page_ro(l1) || set_page_ro(l2) || set_page_ro(l3))
        return 0;
    if (mmu_update1(maddr_of(&l4[0]) | MMU_NORMAL_PT_UPDATE, (virt_to_mfn(l3) << 12) | PTE_TABLE))
        return 0;
    return (volatile uint8_t *)LOW_VA;
}

static volatile uint64_t db_count, db_rip, db_dr6, gp_count, gp_error, ud_count;

static int db_handler(struct regs *r)
{
    db_count++;
    db_rip = r->rip;
    db_dr6 = (uint64_t)HYPERVISOR_get_debugreg(6);
    HYPERVISOR_set_debugreg(7, 0);      /* one shot: an instruction breakpoint would refire */
    r->rflags &= ~RFLAGS_TF;
    return TRAP_RETURN;
}

/* mov to/from %drN is 3 bytes. */
static int gp_handler(struct regs *r)
{
    gp_count++;
    gp_error = r->error;
    r->rip += 3;
    return TRAP_RETURN;
}

static int ud_handler(struct regs *r)
{
    ud_count++;
    r->rip += 3;
    return TRAP_RETURN;
}

extern char step_after[], step_emul_after[], write_after[], io_after[];

void guest_main(void)
{
    trap_set_handler(1, db_handler);
    trap_set_handler(13, gp_handler);
    trap_set_handler(6, ud_handler);
    require_rc(traps_install(), "set_trap_table");

    long dr6 = HYPERVISOR_get_debugreg(6), dr7 = HYPERVISOR_get_debugreg(7);
    uint64_t m6, m7;
    asm volatile("mov %%dr6, %0" : "=r"(m6));
    asm volatile("mov %%dr7, %0" : "=r"(m7));
    check((uint64_t)dr6 == DR6_DEFAULT && (uint64_t)dr7 == DR7_DEFAULT && m6 == DR6_DEFAULT && m7 == DR7_DEFAULT
          && gp_count == 0, "initial_values", "DR6 %#lx/%#lx DR7 %#lx/%#lx (#GPs %lu)", dr6, m6, dr7, m7, gp_count);

    /* set_debugreg's checks. */
    long r_hv = HYPERVISOR_set_debugreg(0, 0xffff800000001000UL);
    long r_nc = HYPERVISOR_set_debugreg(1, 0x0000800000000000UL);
    long r_ok = HYPERVISOR_set_debugreg(2, 0xffff880000001000UL);
    long r_hi = HYPERVISOR_set_debugreg(7, 1UL << 32);
    long r_gd = HYPERVISOR_set_debugreg(7, 1UL << 13);
    long r_io = HYPERVISOR_set_debugreg(7, 1 | (2UL << 16));
    long r_8 = HYPERVISOR_set_debugreg(8, 0);
    check(r_hv == -XEN_EPERM && r_nc == -XEN_EPERM && r_ok == 0 && r_hi == -XEN_EINVAL && r_gd == -XEN_EPERM
          && r_io == -XEN_EPERM && r_8 == -19 /* ENODEV */, "set_debugreg_checks",
          "hv %ld noncanonical %ld ok %ld high %ld gd %ld io %ld dr8 %ld", r_hv, r_nc, r_ok, r_hi, r_gd, r_io, r_8);
    HYPERVISOR_set_debugreg(2, 0);
    HYPERVISOR_set_debugreg(6, 0);
    HYPERVISOR_set_debugreg(7, 0xd800);
    check((uint64_t)HYPERVISOR_get_debugreg(6) == DR6_DEFAULT && (uint64_t)HYPERVISOR_get_debugreg(7) == DR7_DEFAULT,
          "reserved_bits_forced", "DR6 %#lx DR7 %#lx", HYPERVISOR_get_debugreg(6), HYPERVISOR_get_debugreg(7));

    /* Emulated mov to/from %drN. */
    uint64_t v = 0x12345000, back = 0, gd = 1UL << 13;
    asm volatile("mov %0, %%dr3" : : "r"(v));
    asm volatile("mov %%dr3, %0" : "=r"(back));
    check(back == v && (uint64_t)HYPERVISOR_get_debugreg(3) == v, "mov_dr_roundtrip", "dr3 %#lx", back);
    uint64_t g0 = gp_count;
    asm volatile("mov %0, %%dr7" : : "r"(gd));
    check(gp_count == g0 + 1 && gp_error == 0, "mov_dr7_gd_gp", "#GPs %lu error %#lx", gp_count - g0, gp_error);
    asm volatile("mov %%dr4, %0" : "=r"(back));
    uint64_t cr4 = read_cr4();
    write_cr4(cr4 | CR4_DE);
    uint64_t u0 = ud_count;
    asm volatile("mov %%dr5, %0" : "=r"(back));
    long io = HYPERVISOR_set_debugreg(7, 1 | (2UL << 16));
    long io7 = HYPERVISOR_get_debugreg(7);
    HYPERVISOR_set_debugreg(7, 0);
    write_cr4(cr4);
    check(ud_count == u0 + 1 && io == 0 && io7 == (long)(DR7_DEFAULT | 1 | (2UL << 16)), "cr4_de_dr45_ud_io_breakpoints",
          "#UDs %lu, I/O breakpoint rc %ld DR7 %#lx", ud_count - u0, io, io7);
    HYPERVISOR_set_debugreg(3, 0);

    volatile uint8_t *low = map_low_page();
    if (!low) {
        fail("low_mapping", "cannot map a page at %#lx", LOW_VA);
        finish();
    }

#ifdef DEBUGREGS_HW
    volatile uint64_t *watched = (volatile uint64_t *)(low + 0x100);
    low[0] = 0x90;                              /* nop; ret: an instruction breakpoint's target */
    low[1] = 0xc3;
    void (*target)(void) = (void (*)(void))(uintptr_t)LOW_VA;
    /* A data breakpoint: DR0 on a write to *watched, 8 bytes (a trap: RIP after it). */
    HYPERVISOR_set_debugreg(6, 0);
    HYPERVISOR_set_debugreg(0, (uint64_t)watched);
    HYPERVISOR_set_debugreg(7, 1 | (1UL << 16) | (3UL << 18));
    asm volatile("movq $2, %0\n.globl write_after\nwrite_after:" : "=m"(*watched) : : "memory");
    check(db_count == 1 && db_rip == (uint64_t)write_after && db_dr6 == (DR6_DEFAULT | 1), "data_breakpoint",
          "#DBs %lu rip %#lx (want %#lx) DR6 %#lx", db_count, db_rip, (uint64_t)write_after, db_dr6);

    /* An instruction breakpoint: DR1 on the low page's nop (a fault: RIP is the target). */
    HYPERVISOR_set_debugreg(6, 0);
    HYPERVISOR_set_debugreg(1, LOW_VA);
    HYPERVISOR_set_debugreg(7, 1 << 2);
    target();
    check(db_count == 2 && db_rip == LOW_VA && db_dr6 == (DR6_DEFAULT | 2), "instruction_breakpoint",
          "#DBs %lu rip %#lx (want %#lx) DR6 %#lx", db_count, db_rip, LOW_VA, db_dr6);

    HYPERVISOR_set_debugreg(0, 0);
    HYPERVISOR_set_debugreg(1, 0);
    return;
#endif
    db_count = 0;
    /* Single step: TF set by popf traps after the next instruction. DR6.BS sticks. */
    HYPERVISOR_set_debugreg(6, 0);
    asm volatile("pushfq; orq $0x100, (%%rsp); popfq; nop\n.globl step_after\nstep_after: nop" ::: "memory", "cc");
    check(db_count == 1 && db_rip == (uint64_t)step_after && db_dr6 == (DR6_DEFAULT | DR6_BS), "single_step",
          "#DBs %lu rip %#lx (want %#lx) DR6 %#lx", db_count, db_rip, (uint64_t)step_after, db_dr6);

    /* Single step over an instruction Xen (and Hospes) emulates: the forced cpuid. */
    asm volatile("pushfq; orq $0x100, (%%rsp); popfq\n\t"
                 ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\tcpuid\n.globl step_emul_after\nstep_emul_after: nop"
                 : : "a"(0), "c"(0) : "rbx", "rdx", "memory", "cc");
    check(db_count == 2 && db_rip == (uint64_t)step_emul_after && db_dr6 == (DR6_DEFAULT | DR6_BS),
          "single_step_emulated", "#DBs %lu rip %#lx (want %#lx) DR6 %#lx", db_count, db_rip,
          (uint64_t)step_emul_after, db_dr6);

    /* An I/O breakpoint (CR4.DE): Xen emulates it; #DB after the out, B2 in DR6. */
    HYPERVISOR_set_debugreg(6, 0);
    write_cr4(cr4 | CR4_DE);
    {
        static uint32_t iopl = 1;
        _hc(33 /* physdev_op */, 6 /* PHYSDEVOP_set_iopl */, &iopl, 0, 0, 0);
    }
    HYPERVISOR_set_debugreg(2, 0x80);
    HYPERVISOR_set_debugreg(7, (1 << 4) | (2UL << 24));   /* L2, R/W 10b (I/O), LEN 1 */
    asm volatile("outb %%al, $0x81\n\toutb %%al, $0x80\n.globl io_after\nio_after:" : : "a"(0) : "memory");
    write_cr4(cr4);
    check(db_count == 3 && db_rip == (uint64_t)io_after && db_dr6 == (DR6_DEFAULT | 4), "io_breakpoint_emulated",
          "#DBs %lu (want 3) rip %#lx (want %#lx) DR6 %#lx", db_count, db_rip, (uint64_t)io_after, db_dr6);
    HYPERVISOR_set_debugreg(2, 0);

    /* mov %ss with a read breakpoint on its operand defers the #DB past the next
     * instruction: the SYSCALL of a hypercall. Xen ignores it in its own context. */
    volatile uint16_t *ss_var = (volatile uint16_t *)(low + 0x200);
    *ss_var = FLAT_KERNEL_SS;
    HYPERVISOR_set_debugreg(6, 0);
    HYPERVISOR_set_debugreg(0, (uint64_t)ss_var);
    HYPERVISOR_set_debugreg(7, 1 | (3UL << 16) | (1UL << 18));
    long ver;
    {
        register unsigned long rdi asm("rdi") = XENVER_version;
        register unsigned long rsi asm("rsi") = 0;
        asm volatile("push %%rcx; push %%r11\n\t"
                     "mov %[ssv], %%ss\n\t"
                     "syscall\n\t"
                     "pop %%r11; pop %%rcx"
                     : "=a"(ver), "+D"(rdi), "+S"(rsi)
                     : "0"((unsigned long)__HYPERVISOR_xen_version), [ssv] "m"(*ss_var)
                     : "rdx", "r10", "r8", "memory");
    }
    HYPERVISOR_set_debugreg(7, 0);
    uint64_t dr6_after = (uint64_t)HYPERVISOR_get_debugreg(6);
    check(db_count == 3 && (ver >> 16) >= 4 && dr6_after == DR6_DEFAULT, "movss_syscall_db_ignored",
          "#DBs %lu (want 3), xen_version %#lx, DR6 %#lx", db_count, ver, dr6_after);
    HYPERVISOR_set_debugreg(0, 0);
    HYPERVISOR_set_debugreg(1, 0);
}
