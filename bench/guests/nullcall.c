/*
 * nullcall: Hospes' transition costs measured from inside a tiny PV guest.
 *
 * Built with the test kernels' runtime and flags (tests/guests/lib, see
 * bench/hospesbench/build.py).  Each measurement runs ROUNDS rounds of N
 * operations, timed with rdtsc and converted to nanoseconds with the pvclock
 * TSC scale (vcpu_info.time: tsc_to_system_mul / tsc_shift, as Linux does),
 * and prints one console line per round:
 *
 *   BENCH <name> n=<N> cycles=<C> ns=<T> tsc_khz=<K>
 *
 * Measurements:
 *   hypercall_null   HYPERVISOR_xen_version(XENVER_version): the null hypercall
 *                    (syscall -> LSTAR stub -> exit -> Python dispatch -> back)
 *   trap_cpuid       forced-emulation CPUID (`ud2; "xen"; cpuid`): #UD at CPL 3
 *                    -> IDT stub -> exit -> emulated in Python -> back
 *   trap_bounce      int3 bounced to the guest's own #BP handler, which
 *                    returns with HYPERVISOR_iret (two exits; the path every
 *                    guest page fault and user-mode exception takes)
 *   mmu_update_pte   HYPERVISOR_mmu_update of one L1 entry (validated in
 *                    Python, applied by the in-VM writer)
 *   update_va_invlpg HYPERVISOR_update_va_mapping(va, pte, UVMF_INVLPG)
 *
 * N and ROUNDS come from the command line ("n=... rounds=..."); defaults
 * 2000 and 5.  Ends with "DONE" and SCHEDOP_shutdown(poweroff).
 */
#include "guest.h"

/* L4 511, L3 510, L2 511: a free 2 MiB slot of the bootstrap area (as the
 * mmu test kernel uses). */
#define FRESH_VA 0xffffffffbfe00000UL
#define FRESH_L2_INDEX 511

static struct vcpu_time_info tinfo;
static uint64_t tsc_khz;

static uint64_t cycles_to_ns(uint64_t delta)
{
    if (tinfo.tsc_shift < 0)
        delta >>= -tinfo.tsc_shift;
    else
        delta <<= tinfo.tsc_shift;
    return (uint64_t)(((unsigned __int128)delta * tinfo.tsc_to_system_mul) >> 32);
}

static void report(const char *name, uint64_t n, uint64_t cycles)
{
    printf("BENCH %s n=%lu cycles=%lu ns=%lu tsc_khz=%lu\n", name, n, cycles,
           cycles_to_ns(cycles), tsc_khz);
}

static uint64_t parse_arg(const char *key, uint64_t dflt)
{
    const char *cl = xen_start_info->cmd_line;
    size_t klen = strlen(key);
    for (size_t i = 0; cl[i] && i < sizeof(xen_start_info->cmd_line); i++) {
        if ((i == 0 || cl[i - 1] == ' ') && memcmp(cl + i, key, klen) == 0 && cl[i + klen] == '=') {
            uint64_t v = 0;
            for (const char *p = cl + i + klen + 1; *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (uint64_t)(*p - '0');
            return v ? v : dflt;
        }
    }
    return dflt;
}

static inline void xen_cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    asm volatile(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\t"   /* ud2; .ascii "xen" */
                 "cpuid"
                 : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                 : "0"(leaf), "2"(0)
                 : "memory");
}

static volatile uint64_t bp_count;

static int bp_handler(struct regs *r)
{
    (void)r;                     /* RIP is already past the int3 */
    bp_count++;
    return TRAP_RETURN;
}

static uint64_t *table_va(uint64_t entry)
{
    return mfn_to_virt((entry & PTE_ADDR_MASK) >> 12);
}

static uint64_t maddr_of(const void *va)
{
    return (virt_to_mfn(va) << 12) | ((uint64_t)va & (PAGE_SIZE - 1));
}

void guest_main(void)
{
    uint64_t n = parse_arg("n", 2000), rounds = parse_arg("rounds", 5);
    uint64_t t0, t1;
    long rc;

    trap_set_handler(3, bp_handler);
    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(m2p_init(), "machphys_mapping");
    pvclock_snapshot(&tinfo);
    tsc_khz = pvclock_tsc_khz(&tinfo);
    printf("nullcall: n=%lu rounds=%lu tsc_khz=%lu mul=%u shift=%d\n", n, rounds, tsc_khz,
           tinfo.tsc_to_system_mul, tinfo.tsc_shift);

    /* A pinned L1 hooked into a free slot of the bootstrap L2, one entry of
     * which the mmu_update loop flips between two frames. */
    struct start_info *si = xen_start_info;
    uint64_t *l4 = (uint64_t *)si->pt_base;
    uint64_t *l2 = table_va(table_va(l4[511])[510]);
    if (l2[FRESH_L2_INDEX] != 0) {
        fail("fresh_va", "L2 slot %d is in use (%#lx)", FRESH_L2_INDEX, l2[FRESH_L2_INDEX]);
        return;
    }
    uint64_t *l1 = alloc_page(), *fa = alloc_page(), *fb = alloc_page();
    require_rc(set_page_ro(l1), "l1_ro");
    require_rc(mmuext_mfn(MMUEXT_PIN_L1_TABLE, virt_to_mfn(l1)), "pin_l1");
    require_rc(mmu_update1(maddr_of(&l2[FRESH_L2_INDEX]) | MMU_NORMAL_PT_UPDATE,
                           (virt_to_mfn(l1) << 12) | PTE_TABLE), "l2_link");
    uint64_t pte_ma = maddr_of(&l1[0]);
    uint64_t pte_a = (virt_to_mfn(fa) << 12) | PTE_KERNEL_RW;
    uint64_t pte_b = (virt_to_mfn(fb) << 12) | PTE_KERNEL_RW;
    fa[0] = 0xa;
    fb[0] = 0xb;

    for (uint64_t r = 0; r < rounds; r++) {
        /* warm-up on the first round only */
        if (r == 0)
            for (int i = 0; i < 50; i++)
                HYPERVISOR_xen_version(XENVER_version, 0);

        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            HYPERVISOR_xen_version(XENVER_version, 0);
        t1 = rdtsc();
        report("hypercall_null", n, t1 - t0);

        uint32_t a, b, c, d;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            xen_cpuid(0x40000000, &a, &b, &c, &d);
        t1 = rdtsc();
        report("trap_cpuid", n, t1 - t0);

        uint64_t before = bp_count;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            asm volatile("int3" ::: "memory");
        t1 = rdtsc();
        if (bp_count - before != n) {
            fail("trap_bounce", "%lu int3 handled, want %lu", bp_count - before, n);
            return;
        }
        report("trap_bounce", n, t1 - t0);

        rc = 0;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n && rc == 0; i++)
            rc = mmu_update1(pte_ma | MMU_NORMAL_PT_UPDATE, (i & 1) ? pte_b : pte_a);
        t1 = rdtsc();
        if (rc) {
            fail("mmu_update_pte", "rc %ld", rc);
            return;
        }
        report("mmu_update_pte", n, t1 - t0);

        t0 = rdtsc();
        for (uint64_t i = 0; i < n && rc == 0; i++)
            rc = HYPERVISOR_update_va_mapping(FRESH_VA, (i & 1) ? pte_a : pte_b, UVMF_INVLPG);
        t1 = rdtsc();
        if (rc) {
            fail("update_va_invlpg", "rc %ld", rc);
            return;
        }
        report("update_va_invlpg", n, t1 - t0);
        uint64_t seen = *(volatile uint64_t *)FRESH_VA;
        uint64_t want = ((n - 1) & 1) ? 0xa : 0xb;
        if (seen != want) {
            fail("update_va_invlpg", "mapping reads %#lx, want %#lx", seen, want);
            return;
        }
    }
    pass("nullcall");
}
