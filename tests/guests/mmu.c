/*
 * mmu: the PV MMU interface (pv-abi.md §3.4, §5.2 mmu_update/mmuext_op/
 * update_va_mapping, §8).
 *
 * Page tables hold machine frames and are read-only to the guest; every
 * change is a hypercall the hypervisor validates. We read the M2P, build a
 * new L1 (read-only, pinned) and hang it into a free slot of the bootstrap
 * L2, map frames through it with mmu_update and update_va_mapping, check the
 * refusals a Xen MMU must make, switch to a copy of the L4, and release the
 * L1 again.
 */
#include "guest.h"

/* L4 511, L3 510, L2 511: the last 2 MiB of the 1 GiB bootstrap area, far
 * above the bootstrap mapping of a small domain. */
#define FRESH_VA 0xffffffffbfe00000UL
#define FRESH_L2_INDEX 511
#define MAGIC_A 0xa1a1a1a1a1a1a1a1UL
#define MAGIC_B 0xb2b2b2b2b2b2b2b2UL

static uint64_t *table_va(uint64_t entry)
{
    return mfn_to_virt((entry & PTE_ADDR_MASK) >> 12);
}

/* Machine address of a byte of our own memory. */
static uint64_t maddr_of(const void *va)
{
    return (virt_to_mfn(va) << 12) | ((uint64_t)va & (PAGE_SIZE - 1));
}

static void check_m2p(void)
{
    struct start_info *si = xen_start_info;
    long rc = m2p_init();
    check(rc == 0 && machphys.v_start >= HYPERVISOR_VIRT_START &&
              machphys.v_end <= HYPERVISOR_VIRT_END && machphys.v_start < machphys.v_end,
          "m2p_machphys_mapping", "rc %ld v_start %#lx v_end %#lx", rc,
          machphys.v_start, machphys.v_end);
    if (rc)
        finish();
    printf("M2P at %#lx-%#lx, max_mfn %#lx\n", machphys.v_start, machphys.v_end,
           machphys.max_mfn);

    /* m2p[p2m[pfn]] == pfn. With Hospes' identity p2m that is m2p[x] == x;
     * on real Xen the MFNs differ from the PFNs but the round trip holds. */
    uint64_t pfns[] = { 0, virt_to_pfn(_stext), virt_to_pfn(si),
                        virt_to_pfn((void *)si->pt_base), si->nr_pages - 1 };
    int ok = 1, identity = 1;
    for (unsigned i = 0; i < sizeof(pfns) / sizeof(pfns[0]); i++) {
        uint64_t mfn = pfn_to_mfn(pfns[i]);
        uint64_t back = mfn <= machphys.max_mfn ? mfn_to_pfn(mfn) : ~0UL;
        if (back != pfns[i]) {
            ok = 0;
            printf("  pfn %#lx -> mfn %#lx -> pfn %#lx\n", pfns[i], mfn, back);
        }
        identity &= mfn == pfns[i];
    }
    check(ok, "m2p_roundtrip", "M2P does not invert the p2m");
    printf("p2m is %s\n", identity ? "identity" : "not identity");
}

/* Xen's ABI address of the M2P (xen-x86_64.h), which some kernels read without
 * asking XENMEM_machphys_mapping. */
#define MACH2PHYS_VIRT_START 0xffff800000000000UL
#define MMU_MACHPHYS_UPDATE 1

static volatile int pf_seen;
static volatile uint64_t pf_resume;

static int skip_faulting_load(struct regs *r)
{
    pf_seen = 1;
    r->rip = pf_resume;
    return TRAP_RETURN;
}

/* One 8-byte load from va; *faulted says whether it took a #PF instead. */
static uint64_t load_or_fault(uint64_t va, int *faulted)
{
    uint64_t v = 0;
    pf_seen = 0;
    asm volatile("lea 1f(%%rip), %%rcx\n\t"
                 "movq %%rcx, %[resume]\n\t"
                 "movq (%[va]), %[v]\n"
                 "1:"
                 : [v] "+r"(v), [resume] "=m"(pf_resume) : [va] "r"(va) : "rcx", "memory");
    *faulted = pf_seen;
    return v;
}

static void check_m2p_fixed_address(void)
{
    const volatile uint64_t *fixed = (const volatile uint64_t *)MACH2PHYS_VIRT_START;
    const volatile uint64_t *mapped = (const volatile uint64_t *)machphys.v_start;
    uint64_t mfns[] = { 0, 1, virt_to_mfn(_stext), machphys.max_mfn };
    int ok = 1;
    for (unsigned i = 0; i < sizeof(mfns) / sizeof(mfns[0]); i++) {
        uint64_t a = fixed[mfns[i]], b = mapped[mfns[i]];
        if (a != b) {
            ok = 0;
            printf("  m2p[%#lx]: %#lx at the ABI address, %#lx where announced\n", mfns[i], a, b);
        }
    }
    uint64_t mfn = virt_to_mfn(_stext);
    uint32_t low = ((const volatile uint32_t *)MACH2PHYS_VIRT_START)[2 * mfn];
    uint8_t byte = ((const volatile uint8_t *)MACH2PHYS_VIRT_START)[8 * mfn];
    check(ok && low == (uint32_t)mapped[mfn] && byte == (uint8_t)mapped[mfn], "m2p_fixed_address_reads",
          "32-bit %#x, byte %#x, table %#lx", low, byte, mapped[mfn]);

    /* An M2P update of a frame we own, with any value, shows at both addresses. */
    uint64_t was = mapped[mfn];
    long rc = mmu_update1((mfn << 12) | MMU_MACHPHYS_UPDATE, 0xabcdef123UL);
    uint64_t seen_fixed = fixed[mfn], seen_mapped = mapped[mfn];
    long rc_back = mmu_update1((mfn << 12) | MMU_MACHPHYS_UPDATE, was);
    check(rc == 0 && rc_back == 0 && seen_fixed == 0xabcdef123UL && seen_mapped == 0xabcdef123UL &&
              mapped[mfn] == was, "m2p_machphys_update_any_value",
          "rc %ld/%ld, read %#lx/%#lx, back %#lx", rc, rc_back, seen_fixed, seen_mapped, mapped[mfn]);
    /* A frame that is not ours (far beyond our memory): -EINVAL, as get_page_from_mfn fails. */
    rc = mmu_update1(((machphys.max_mfn + 0x100000UL) << 12) | MMU_MACHPHYS_UPDATE, 1);
    check(rc == -XEN_EINVAL, "m2p_machphys_update_foreign_frame", "rc %ld", rc);

    /* Past the table: the #PF an unmapped address gives. */
    trap_set_handler(14, skip_faulting_load);
    int faulted_in = 1, faulted_past = 0;
    (void)load_or_fault((uint64_t)&fixed[mfn], &faulted_in);
    (void)load_or_fault(machphys.v_end - machphys.v_start + MACH2PHYS_VIRT_START + 0x100000UL, &faulted_past);
    trap_set_handler(14, 0);
    check(!faulted_in && faulted_past, "m2p_fixed_address_ends_with_the_table",
          "inside faulted %d, past faulted %d", faulted_in, faulted_past);
}

void guest_main(void)
{
    struct start_info *si = xen_start_info;
    volatile uint64_t *fresh = (volatile uint64_t *)FRESH_VA;
    long rc;

    require_rc(traps_install(), "set_trap_table");  /* report stray faults */
    check_m2p();
    check_m2p_fixed_address();

    /* Walk the bootstrap tables (all mapped read-only in the region). */
    uint64_t *l4 = (uint64_t *)si->pt_base;
    uint64_t *l3 = table_va(l4[511]);
    uint64_t *l2 = table_va(l3[510]);
    if (l2[FRESH_L2_INDEX] != 0) {
        fail("fresh_va", "L2 slot %d is in use (%#lx)", FRESH_L2_INDEX, l2[FRESH_L2_INDEX]);
        return;
    }

    uint64_t *l1 = alloc_page();
    uint64_t *fa = alloc_page(), *fb = alloc_page();
    fa[0] = MAGIC_A;
    fb[0] = MAGIC_B;

    /* A new L1: read-only in our mapping first, then pinned. */
    rc = set_page_ro(l1);
    if (!rc)
        rc = mmuext_mfn(MMUEXT_PIN_L1_TABLE, virt_to_mfn(l1));
    if (!check_rc(rc, "pin_l1"))
        return;

    /* A pinned page-table frame may not be mapped writable. */
    rc = set_page_rw(l1);
    check(rc < 0, "refuse_writable_pt_mapping", "writable mapping of a pinned L1 accepted");
    if (rc == 0)
        set_page_ro(l1);

    /* Hook the L1 into the bootstrap L2 (a validated table: only mmu_update). */
    uint64_t l2e = maddr_of(&l2[FRESH_L2_INDEX]);
    rc = mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, (virt_to_mfn(l1) << 12) | PTE_TABLE);
    if (!check_rc(rc, "mmu_update_l2_link"))
        return;

    /* Map frame A at the fresh VA by writing the pinned L1's entry 0. */
    uint64_t pte = maddr_of(&l1[0]);
    rc = mmu_update1(pte | MMU_NORMAL_PT_UPDATE, (virt_to_mfn(fa) << 12) | PTE_KERNEL_RW);
    uint64_t got = 0;
    if (rc == 0) {
        got = fresh[0];
        fresh[1] = MAGIC_B ^ 1;          /* and write through it */
    }
    check(rc == 0 && got == MAGIC_A && fa[1] == (MAGIC_B ^ 1), "mmu_update_map_new_frame",
          "rc %ld, read %#lx via the new mapping, frame holds %#lx", rc, got, fa[1]);
    if (rc)
        return;

    /* PRESERVE_AD keeps the entry's Accessed/Dirty bits, a plain update
     * replaces them (the entry was written with A|D set). */
    uint64_t bare = (virt_to_mfn(fa) << 12) | _PAGE_PRESENT | _PAGE_RW;
    long rc1 = mmu_update1(pte | MMU_PT_UPDATE_PRESERVE_AD, bare);
    uint64_t kept = l1[0];
    long rc2 = mmu_update1(pte | MMU_NORMAL_PT_UPDATE, bare);
    uint64_t replaced = l1[0];
    /* (A may be set again by a speculative walk; D may not.) */
    check(rc1 == 0 && rc2 == 0 && (kept & (_PAGE_ACCESSED | _PAGE_DIRTY)) ==
                                      (_PAGE_ACCESSED | _PAGE_DIRTY) &&
              (kept & PTE_ADDR_MASK) == (bare & PTE_ADDR_MASK) && !(replaced & _PAGE_DIRTY),
          "mmu_update_preserve_ad", "rc %ld/%ld, entry after PRESERVE_AD %#lx, after normal %#lx",
          rc1, rc2, kept, replaced);

    /* update_va_mapping + UVMF_INVLPG: the VA now shows frame B. */
    rc = HYPERVISOR_update_va_mapping(FRESH_VA, (virt_to_mfn(fb) << 12) | PTE_KERNEL_RW,
                                      UVMF_INVLPG);
    got = rc == 0 ? fresh[0] : 0;
    check(rc == 0 && got == MAGIC_B, "update_va_mapping_invlpg", "rc %ld, read %#lx", rc, got);

    /* A frame that is not ours (beyond every frame in our p2m). */
    uint64_t max_mfn = 0;
    for (uint64_t pfn = 0; pfn < si->nr_pages; pfn++)
        if (pfn_to_mfn(pfn) > max_mfn)
            max_mfn = pfn_to_mfn(pfn);
    uint64_t before = l1[0];
    rc = mmu_update1(pte | MMU_NORMAL_PT_UPDATE, ((max_mfn + 0x10000) << 12) | PTE_KERNEL_RW);
    check(rc < 0 && l1[0] == before, "refuse_foreign_frame",
          "mapping mfn %#lx accepted (rc %ld, entry %#lx)", max_mfn + 0x10000, rc, l1[0]);
    if (rc == 0)
        HYPERVISOR_update_va_mapping(FRESH_VA, before, UVMF_INVLPG);

    /* L4 slots 256-271 belong to the hypervisor. */
    uint64_t l4_ma = virt_to_mfn(l4) << 12;

    /* A linear (recursive) L4 entry: allowed read-only, as Xen's
     * opt_pv_linear_pt; through it the L4 reads itself. */
    {
        const uint64_t slot = 400;
        uint64_t self = (l4_ma & PTE_ADDR_MASK) | _PAGE_PRESENT;
        long rw = mmu_update1(l4_ma + slot * 8, self | _PAGE_RW);
        long ro = mmu_update1(l4_ma + slot * 8, self);
        uint64_t va = 0xffff000000000000UL | (slot << 39) | (slot << 30) | (slot << 21) | (slot << 12);
        uint64_t seen = ro == 0 ? ((volatile uint64_t *)va)[511] : 0;
        long cleared = mmu_update1(l4_ma + slot * 8, 0);
        check(rw == -XEN_EINVAL && ro == 0 && cleared == 0 && seen == l4[511] && l4[slot] == 0,
              "linear_l4_self_reference", "rw %ld ro %ld cleared %ld, read %#lx want %#lx", rw, ro,
              cleared, seen, l4[511]);
    }
    long r271 = mmu_update1(l4_ma + 271 * 8, l4[511]);
    long r256 = mmu_update1(l4_ma + 256 * 8, l4[511]);
    check(r256 < 0 && r271 < 0, "refuse_l4_xen_slots",
          "mmu_update of L4 slot 256 returned %ld, slot 271 %ld", r256, r271);

    /* Switch to a copy of the L4 (guest slots only: the hypervisor fills in
     * its own), and keep running on it. */
    uint64_t *l4c = alloc_page();
    for (unsigned i = 0; i < 512; i++)
        if (i < 256 || i > 271)
            l4c[i] = l4[i];
    rc = set_page_ro(l4c);
    if (!rc)
        rc = mmuext_mfn(MMUEXT_PIN_L4_TABLE, virt_to_mfn(l4c));
    if (!rc)
        rc = mmuext_mfn(MMUEXT_NEW_BASEPTR, virt_to_mfn(l4c));
    got = rc == 0 ? fresh[0] : 0;
    /* The M2P must still be there: the hypervisor's slots in the new L4. */
    uint64_t m2p_ok = rc == 0 && mfn_to_pfn(pfn_to_mfn(0)) == 0;
    check(rc == 0 && got == MAGIC_B && m2p_ok, "new_baseptr_copy",
          "rc %ld, fresh VA reads %#lx, M2P readable %lu", rc, got, m2p_ok);

    /* Unpin: still referenced from the L2, so the mapping keeps working. */
    rc = mmuext_mfn(MMUEXT_UNPIN_TABLE, virt_to_mfn(l1));
    got = rc == 0 ? fresh[0] : 0;
    check(rc == 0 && got == MAGIC_B, "unpin_l1", "rc %ld, fresh VA reads %#lx", rc, got);

    /* Unhook it; with no references left the frame may be writable again. */
    rc = mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, 0);
    if (!rc)
        rc = mmuext_mfn(MMUEXT_TLB_FLUSH_LOCAL, 0);
    if (!rc)
        rc = set_page_rw(l1);
    if (!rc)
        l1[0] = 0;                       /* really writable */
    check_rc(rc, "pt_frame_writable_after_release");
}
