/*
 * grants_save: grant mappings that live across a save and restore (built by
 * name, not in ALL_GUESTS; tests/test_grant_save_restore.py drives it).
 *
 * The kernel maps its own grant 8 writable at a host address and grant 9
 * read-only as a device mapping, prints "MAPPED", and sleeps 3 s of system
 * time, during which the test saves the domain and restores it in a new VM.
 * The restored kernel then finds the mappings as they were: data written
 * through the host mapping lands in the granted page, the entry flags still
 * say reading/writing, the frame still cannot be pinned as a page table;
 * both handles unmap and the flags clear.
 */
#include "gnttab.h"

void guest_main(void)
{
    if (gnttab_start("domid_from_store", "setup_table"))
        return;
    uint8_t *rw = alloc_page(), *ro = alloc_page();
    memcpy(rw, "before save", 12);
    memcpy(ro, "read-only page", 15);
    grant1(8, GTF_permit_access, domid, virt_to_mfn(rw));
    grant1(9, GTF_permit_access | GTF_readonly, domid, virt_to_mfn(ro));
    volatile uint8_t *w = window();
    struct gnttab_map_grant_ref host = map_op(8, GNTMAP_host_map, (uint64_t)w, domid);
    struct gnttab_map_grant_ref dev = map_op(9, GNTMAP_device_map | GNTMAP_readonly, 0, domid);
    if (!check(host.status == GNTST_okay && dev.status == GNTST_okay, "mapped", "host %d, device %d",
               host.status, dev.status))
        return;
    printf("MAPPED\n");

    uint64_t until = pvclock_now() + 3 * NSEC_PER_SEC;
    while (pvclock_now() < until)
        HYPERVISOR_sched_op(SCHEDOP_yield, 0);

    check(!memcmp((const void *)w, "before save", 12), "host_mapping_kept", "reads %.11s", (const char *)w);
    memcpy((void *)w, "after restore", 14);
    check(!memcmp(rw, "after restore", 14), "writes_reach_the_granted_page", "the page holds %.13s",
          (const char *)rw);
    check(gt1[8].flags == (GTF_permit_access | GTF_reading | GTF_writing) &&
              gt1[9].flags == (GTF_permit_access | GTF_readonly | GTF_reading),
          "flags_kept", "flags %#x %#x", gt1[8].flags, gt1[9].flags);
    memset(rw, 0, PAGE_SIZE);
    long made_ro = set_page_ro(rw);
    long pinned = made_ro ? 0 : mmuext_mfn(MMUEXT_PIN_L1_TABLE, virt_to_mfn(rw));
    if (pinned == 0 && !made_ro)
        mmuext_mfn(MMUEXT_UNPIN_TABLE, virt_to_mfn(rw));
    check(made_ro == 0 && pinned == -XEN_EINVAL, "still_not_a_page_table", "read-only %ld, pin %ld", made_ro,
          pinned);
    int16_t a = unmap_op(host.handle, (uint64_t)w, 0);
    int16_t b = unmap_op(dev.handle, 0, virt_to_mfn(ro) << 12);
    check(a == GNTST_okay && b == GNTST_okay && gt1[8].flags == GTF_permit_access &&
              gt1[9].flags == (GTF_permit_access | GTF_readonly),
          "unmapped_after_restore", "unmap %d %d, flags %#x %#x", a, b, gt1[8].flags, gt1[9].flags);
    pinned = made_ro ? -1 : mmuext_mfn(MMUEXT_PIN_L1_TABLE, virt_to_mfn(rw));
    long unpinned = pinned ? -1 : mmuext_mfn(MMUEXT_UNPIN_TABLE, virt_to_mfn(rw));
    check(pinned == 0 && unpinned == 0, "pin_after_unmap", "pin %ld, unpin %ld", pinned, unpinned);
}
