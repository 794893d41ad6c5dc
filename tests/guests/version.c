/*
 * version: what a PV kernel learns about its hypervisor (pv-abi.md §5.2
 * xen_version, §7.3 CPUID, §7.4 MSRs).
 *
 * XENVER_* sub-ops (Linux panics unless feature bits 5 and 7 are set and
 * must not see 0, 2, 3, 8), -ENOSYS for unknown sub-ops and hypercalls,
 * the Xen CPUID leaves through the forced-emulation prefix (the only way a
 * PV kernel asks CPUID), and RDMSR/WRMSR emulation at CPL 3.
 */
#include "guest.h"

#define MSR_PAT              0x277
#define MSR_KERNEL_GS_BASE   0xc0000102
#define MSR_BOGUS            0x12345678     /* in no MSR range */
#define XEN_MSR_PAT          0x0000050100070406UL

static volatile uint64_t gp_count, gp_rip, gp_error, ud_count;

/* rdmsr and wrmsr are 2 bytes long: skip the faulting one. */
static int gp_handler(struct regs *r)
{
    gp_count++;
    gp_rip = r->rip;
    gp_error = r->error;
    r->rip += 2;
    return TRAP_RETURN;
}

/* A #UD here can only be the forced-CPUID sequence not being emulated:
 * skip all 7 bytes (ud2; "xen"; cpuid) and leave zeros in the results. */
static int ud_handler(struct regs *r)
{
    ud_count++;
    r->rip += 7;
    r->rax = r->rbx = r->rcx = r->rdx = 0;
    return TRAP_RETURN;
}

static void xen_cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    asm volatile(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\t"   /* ud2; .ascii "xen" */
                 "cpuid"
                 : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                 : "0"(leaf), "2"(0)
                 : "memory");
}

/* RDMSR; *at = address of the instruction (to match a #GP's RIP). */
static uint64_t rdmsr_at(uint32_t msr, uint64_t *at)
{
    uint32_t lo = 0, hi = 0;
    uint64_t where;
    asm volatile("lea 1f(%%rip), %[where]\n\t"
                 "1: rdmsr"
                 : [where] "=&r"(where), "+a"(lo), "+d"(hi)
                 : "c"(msr)
                 : "memory");
    *at = where;
    return ((uint64_t)hi << 32) | lo;
}

static void wrmsr(uint32_t msr, uint64_t val)
{
    asm volatile("wrmsr" : : "c"(msr), "a"((uint32_t)val), "d"((uint32_t)(val >> 32))
                 : "memory");
}

void guest_main(void)
{
    long rc;
    uint64_t at;

    trap_set_handler(13, gp_handler);
    trap_set_handler(6, ud_handler);
    require_rc(traps_install(), "set_trap_table");

    /* XENVER_get_features, submap 0. */
    struct xen_feature_info fi = { .submap_idx = 0 };
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    uint32_t must = (1u << XENFEAT_mmu_pt_update_preserve_ad) |
                    (1u << XENFEAT_gnttab_map_avail_bits);
    uint32_t must_not = (1u << XENFEAT_writable_page_tables) |
                        (1u << XENFEAT_auto_translated_physmap) |
                        (1u << XENFEAT_supervisor_mode_kernel) |
                        (1u << XENFEAT_hvm_callback_vector);
    check(rc == 0 && (fi.submap & must) == must && !(fi.submap & must_not), "features",
          "rc %ld submap %#x", rc, fi.submap);

    static char extra[16], caps[1024];
    memset(extra, 0xff, sizeof(extra));
    rc = HYPERVISOR_xen_version(XENVER_extraversion, extra);
    int terminated = 0;
    for (unsigned i = 0; i < sizeof(extra); i++)
        terminated |= extra[i] == 0;
    if (rc == 0 && terminated)
        printf("extraversion '%s'\n", extra);
    check(rc == 0 && terminated, "extraversion", "rc %ld, NUL-terminated %d", rc, terminated);

    rc = HYPERVISOR_xen_version(XENVER_capabilities, caps);
    caps[sizeof(caps) - 1] = 0;
    if (rc == 0)
        printf("capabilities '%s'\n", caps);
    check(rc == 0 && strstr_n(caps, strlen(caps), "xen-3.0-x86_64") != 0, "capabilities",
          "rc %ld", rc);

    rc = HYPERVISOR_xen_version(XENVER_pagesize, 0);
    check(rc == PAGE_SIZE, "pagesize", "XENVER_pagesize returned %ld", rc);

    rc = HYPERVISOR_xen_version(999, 0);
    check(rc == -XEN_ENOSYS, "xen_version_unknown_cmd", "xen_version(999) returned %ld", rc);

    rc = HYPERVISOR_raw(60);
    check(rc == -XEN_ENOSYS, "unknown_hypercall_enosys", "hypercall 60 returned %ld", rc);

    /* Hypervisor CPUID leaves through ud2;"xen";cpuid. */
    uint32_t a, b, c, d;
    char sig[13];
    xen_cpuid(0x40000000, &a, &b, &c, &d);
    memcpy(sig, &b, 4);
    memcpy(sig + 4, &c, 4);
    memcpy(sig + 8, &d, 4);
    sig[12] = 0;
    check(ud_count == 0 && memcmp(sig, "XenVMMXenVMM", 12) == 0 && a >= 0x40000002,
          "cpuid_xen_signature", "#UDs %lu, leaf 0x40000000: eax %#x signature '%s'",
          ud_count, a, sig);

    long version = HYPERVISOR_xen_version(XENVER_version, 0);
    xen_cpuid(0x40000001, &a, &b, &c, &d);
    check(ud_count == 0 && (a >> 16) >= 4 && a == (uint64_t)version, "cpuid_xen_version",
          "leaf 0x40000001 eax %#x, xen_version %#lx", a, version);

    /* An MSR nobody implements: #GP(0) at the rdmsr, reflected to us. */
    uint64_t n = gp_count;
    rdmsr_at(MSR_BOGUS, &at);
    check(gp_count == n + 1 && gp_rip == at && gp_error == 0, "rdmsr_unknown_gp",
          "%lu #GPs, rip %#lx (rdmsr at %#lx) error %#lx", gp_count - n, gp_rip, at, gp_error);

    n = gp_count;
    uint64_t pat = rdmsr_at(MSR_PAT, &at);
    check(gp_count == n && pat == XEN_MSR_PAT, "rdmsr_pat", "PAT %#lx (%lu #GPs), want %#lx",
          pat, gp_count - n, XEN_MSR_PAT);

    /* The inactive (user) GS base: written and read back through the MSR. */
    n = gp_count;
    wrmsr(MSR_KERNEL_GS_BASE, 0x00007f1234567000UL);
    uint64_t gs = rdmsr_at(MSR_KERNEL_GS_BASE, &at);
    wrmsr(MSR_KERNEL_GS_BASE, 0);
    check(gp_count == n && gs == 0x00007f1234567000UL, "kernel_gs_base_roundtrip",
          "read back %#lx (%lu #GPs)", gs, gp_count - n);
}
