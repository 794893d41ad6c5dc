/*
 * cpu_policy: the CPUID bits and MSRs Xen's default PV policy gives a guest
 * kernel (xen/include/public/arch-x86/cpufeatureset.h, 'A' = all guests),
 * checked against Xen's vMCE (xen/arch/x86/cpu/mcheck/vmce.c) and its
 * FSGSBASE handling (pv_fixup_guest_cr4; the bases are the guest's own).
 */
#include "guest.h"

#define MSR_MCG_CAP     0x179
#define MSR_MCG_STATUS  0x17a
#define MSR_MCG_CTL     0x17b
#define MSR_MC0_CTL     0x400
#define MSR_MC1_CTL     0x404
#define MSR_MC1_STATUS  0x405
#define MSR_MC1_ADDR    0x406
#define MSR_MC1_MISC    0x407
#define MSR_MC2_CTL     0x408
#define MSR_FS_BASE     0xc0000100
#define MSR_GS_BASE     0xc0000101

#define CR4_MCE         (1UL << 6)
#define CR4_FSGSBASE    (1UL << 16)

#define SEGBASE_FS      0
#define HC_set_segment_base 25   /* __HYPERVISOR_set_segment_base */

static volatile uint64_t gp_count, gp_error;

/* rdmsr and wrmsr are 2 bytes long: skip the faulting one. */
static int gp_handler(struct regs *r)
{
    gp_count++;
    gp_error = r->error;
    r->rip += 2;
    return TRAP_RETURN;
}

static int bp_handler(struct regs *r)
{
    (void)r;
    return TRAP_RETURN;
}

static void xen_cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    asm volatile(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\t"   /* ud2; .ascii "xen" */
                 "cpuid"
                 : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                 : "0"(leaf), "2"(sub)
                 : "memory");
}

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo = 0, hi = 0;
    asm volatile("rdmsr" : "+a"(lo), "+d"(hi) : "c"(msr) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

static void wrmsr(uint32_t msr, uint64_t val)
{
    asm volatile("wrmsr" : : "c"(msr), "a"((uint32_t)val), "d"((uint32_t)(val >> 32))
                 : "memory");
}

/* #GP count of one wrmsr. */
static uint64_t wrmsr_gps(uint32_t msr, uint64_t val)
{
    uint64_t before = gp_count;
    wrmsr(msr, val);
    return gp_count - before;
}

void guest_main(void)
{
    uint32_t a, b, c, d, vendor;

    trap_set_handler(13, gp_handler);
    trap_set_handler(3, bp_handler);
    require_rc(traps_install(), "set_trap_table");

    xen_cpuid(0, 0, &a, &vendor, &c, &d);
    xen_cpuid(1, 0, &a, &b, &c, &d);
    check((d & (1u << 7)) && (d & (1u << 14)), "cpuid_mce_mca",
          "leaf 1 edx %#x: MCE (7) and MCA (14) are 'A' in Xen's policy", d);

    /* vmce_init_vcpu: 2 banks; SER_P|TES_P|CMCI_P on Intel only. */
    uint64_t want_cap = vendor == 0x756e6547 ? ((1UL << 24) | (1UL << 11) | (1UL << 10) | 2) : 2;
    uint64_t cap = rdmsr(MSR_MCG_CAP);
    check(cap == want_cap && gp_count == 0, "mcg_cap", "MCG_CAP %#lx, want %#lx (#GPs %lu)",
          cap, want_cap, gp_count);
    check(rdmsr(MSR_MCG_STATUS) == 0 && rdmsr(MSR_MCG_CTL) == 0 && gp_count == 0,
          "mcg_status_ctl_zero", "#GPs %lu", gp_count);
    wrmsr(MSR_MCG_STATUS, 4);
    uint64_t st = rdmsr(MSR_MCG_STATUS);
    wrmsr(MSR_MCG_STATUS, 0);
    check(st == 4 && rdmsr(MSR_MCG_STATUS) == 0 && gp_count == 0, "mcg_status_written",
          "read back %#lx (#GPs %lu)", st, gp_count);
    check(wrmsr_gps(MSR_MCG_CAP, 5) == 0 && rdmsr(MSR_MCG_CAP) == want_cap, "mcg_cap_write_ignored",
          "MCG_CAP %#lx after a write", rdmsr(MSR_MCG_CAP));
    check(rdmsr(MSR_MC0_CTL) == ~0UL && rdmsr(MSR_MC1_CTL) == ~0UL && gp_count == 0,
          "mc_ctl_all_ones", "MC1_CTL %#lx", rdmsr(MSR_MC1_CTL));
    check(wrmsr_gps(MSR_MC1_CTL, 0) == 0 && rdmsr(MSR_MC1_CTL) == ~0UL, "mc_ctl_write_ignored",
          "MC1_CTL %#lx after writing 0", rdmsr(MSR_MC1_CTL));
    check(rdmsr(MSR_MC1_STATUS) == 0 && rdmsr(MSR_MC1_ADDR) == 0 && rdmsr(MSR_MC1_MISC) == 0
          && gp_count == 0, "mc_status_addr_misc_zero", "#GPs %lu", gp_count);
    check(wrmsr_gps(MSR_MC1_STATUS, 0) == 0, "mc_status_write_zero", "#GP");
    uint64_t g1 = wrmsr_gps(MSR_MC1_STATUS, 1), e1 = gp_error;
    uint64_t g2 = wrmsr_gps(MSR_MC1_ADDR, 0x1000), g3 = wrmsr_gps(MSR_MC1_MISC, 1);
    check(g1 == 1 && g2 == 1 && g3 == 1 && e1 == 0, "mc_status_write_nonzero_gp",
          "#GPs %lu %lu %lu, error %#lx", g1, g2, g3, e1);
    uint64_t before = gp_count;
    rdmsr(MSR_MC2_CTL);
    check(gp_count == before + 1, "mc_bank2_gp", "MC2_CTL (beyond MCG_CAP's 2 banks) read without #GP");

    /* FSGSBASE: 'A' in Xen's policy; the guest controls CR4.FSGSBASE and the bases. */
    xen_cpuid(7, 0, &a, &b, &c, &d);
    if (!check(b & 1, "cpuid_fsgsbase", "leaf 7 ebx %#x", b))
        finish();
    uint64_t cr4 = read_cr4();
    write_cr4(cr4 | CR4_FSGSBASE);
    uint64_t cr4_on = read_cr4();
    check((cr4 & CR4_MCE) && !(cr4 & CR4_FSGSBASE) && (cr4_on & CR4_FSGSBASE), "cr4_fsgsbase",
          "cr4 %#lx, after setting FSGSBASE %#lx", cr4, cr4_on);

    uint64_t fs = 0xffff888012345000UL, gs = 0x00007f0011223000UL, got_fs, got_gs;
    asm volatile("wrfsbase %0" : : "r"(fs) : "memory");
    check(rdmsr(MSR_FS_BASE) == fs, "wrfsbase_seen_by_rdmsr", "FS_BASE %#lx", rdmsr(MSR_FS_BASE));
    asm volatile("wrgsbase %0" : : "r"(gs) : "memory");
    HYPERVISOR_xen_version(XENVER_version, 0);
    asm volatile("int3");
    asm volatile("rdgsbase %0" : "=r"(got_gs));
    check(got_gs == gs && rdmsr(MSR_GS_BASE) == gs, "wrgsbase_kept", "rdgsbase %#lx, GS_BASE %#lx",
          got_gs, rdmsr(MSR_GS_BASE));
    _hc(HC_set_segment_base, SEGBASE_FS, 0x5000, 0, 0, 0);
    asm volatile("rdfsbase %0" : "=r"(got_fs));
    check(got_fs == 0x5000, "set_segment_base_seen_by_rdfsbase", "rdfsbase %#lx", got_fs);
    _hc(HC_set_segment_base, SEGBASE_FS, 0, 0, 0, 0);
    asm volatile("wrgsbase %0" : : "r"(0UL) : "memory");
    write_cr4(cr4);
}
