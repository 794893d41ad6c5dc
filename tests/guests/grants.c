/*
 * grants: the grant table as Xen's xen/common/grant_table.c offers it, used
 * on our own grants (the only domain a Hospes domain can reach): map and
 * unmap (host mappings by linear address and by PTE machine address, device
 * mappings, read-only), the per-op GNTST_* status of every error, the
 * GTF_reading/GTF_writing flags while mapped, the writable type reference a
 * mapping holds, copy between grants and frames, swap, version 2 with its
 * status frames, and back to version 1.
 *
 * Map looks the granting domain up by number only, so the kernel learns its
 * domid from the store ("domid"), as a real frontend would; DOMID_SELF is
 * GNTST_bad_domain for map (and accepted by copy, setup_table and the rest).
 */
#include "gnttab.h"

/* ---- the checks ---------------------------------------------------------------- */

static uint8_t *data;            /* granted, ours */
static uint64_t data_mfn;

static void map_and_unmap(void)
{
    memset(data, 0, PAGE_SIZE);
    memcpy(data, "grant data", 11);
    grant1(8, GTF_permit_access, domid, data_mfn);

    volatile uint8_t *w = window();
    struct gnttab_map_grant_ref m = map_op(8, GNTMAP_host_map, (uint64_t)w, domid);
    check(m.status == GNTST_okay, "map_host_rw", "status %d", m.status);
    if (m.status != GNTST_okay)
        return;
    check(!memcmp((const void *)w, "grant data", 11), "data_through_mapping", "read %.11s", (const char *)w);
    w[100] = 0x5a;
    check(data[100] == 0x5a, "write_through_mapping", "the granted page holds %#x", data[100]);
    check(gt1[8].flags == (GTF_permit_access | GTF_reading | GTF_writing), "gtf_reading_writing_set",
          "flags %#x", gt1[8].flags);

    /* A frame mapped writable holds a writable type: it cannot become a page table. */
    memset(data, 0, PAGE_SIZE);
    long ro = set_page_ro(data);
    long pinned = ro ? 0 : mmuext_mfn(MMUEXT_PIN_L1_TABLE, data_mfn);
    if (pinned == 0 && !ro)
        mmuext_mfn(MMUEXT_UNPIN_TABLE, data_mfn);
    check(ro == 0 && pinned == -XEN_EINVAL, "pin_mapped_frame_l1_einval", "read-only %ld, pin %ld", ro,
          pinned);

    int16_t wrong = unmap_op(m.handle, (uint64_t)window(), 0);
    int16_t st = unmap_op(m.handle, (uint64_t)w, 0);
    check(wrong == GNTST_general_error && st == GNTST_okay, "unmap_host",
          "unmap at another address %d (want -1), at the mapping %d", wrong, st);
    check(gt1[8].flags == GTF_permit_access, "gtf_cleared_after_unmap", "flags %#x", gt1[8].flags);
    pinned = ro ? -1 : mmuext_mfn(MMUEXT_PIN_L1_TABLE, data_mfn);
    long unpinned = pinned ? -1 : mmuext_mfn(MMUEXT_UNPIN_TABLE, data_mfn);
    long rw = set_page_rw(data);
    check(pinned == 0 && unpinned == 0 && rw == 0, "pin_after_unmap", "pin %ld, unpin %ld, writable %ld",
          pinned, unpinned, rw);
    st = unmap_op(m.handle, (uint64_t)w, 0);
    check(st == GNTST_bad_handle, "unmap_bad_handle", "unmapping twice: %d", st);

    /* Read-only: a read-only grant maps only read-only. */
    memcpy(data, "read only", 10);
    grant1(9, GTF_permit_access | GTF_readonly, domid, data_mfn);
    m = map_op(9, GNTMAP_host_map, (uint64_t)window(), domid);
    check(m.status == GNTST_general_error && gt1[9].flags == (GTF_permit_access | GTF_readonly),
          "map_readonly_grant_writable", "status %d (want -1), flags %#x", m.status, gt1[9].flags);
    w = window();
    m = map_op(9, GNTMAP_host_map | GNTMAP_readonly, (uint64_t)w, domid);
    check(m.status == GNTST_okay && !memcmp((const void *)w, "read only", 10) &&
              gt1[9].flags == (GTF_permit_access | GTF_readonly | GTF_reading),
          "map_readonly", "status %d, flags %#x", m.status, gt1[9].flags);
    st = unmap_op(m.handle, (uint64_t)w, 0);
    check(st == GNTST_okay && gt1[9].flags == (GTF_permit_access | GTF_readonly), "unmap_readonly",
          "status %d, flags %#x", st, gt1[9].flags);

    /* Device mapping: the bus address; by PTE machine address: that entry written. */
    m = map_op(8, GNTMAP_device_map, 0, domid);
    check(m.status == GNTST_okay && m.dev_bus_addr == data_mfn << 12, "map_device",
          "status %d, bus %#lx (want %#lx)", m.status, m.dev_bus_addr, data_mfn << 12);
    st = unmap_op(m.handle, 0, data_mfn << 12);
    check(st == GNTST_okay && gt1[8].flags == GTF_permit_access, "unmap_device", "status %d, flags %#x", st,
          gt1[8].flags);
    w = window();
    uint64_t pte = pte_maddr((const void *)w);
    m = map_op(8, GNTMAP_host_map | GNTMAP_contains_pte, pte, domid);
    int seen = m.status == GNTST_okay && !memcmp((const void *)w, "read only", 10);
    st = m.status == GNTST_okay ? unmap_op(m.handle, pte, 0) : 99;
    check(seen && st == GNTST_okay, "map_contains_pte", "map %d, unmap %d", m.status, st);

    /* Two ops in one call: each gets its own status. */
    struct gnttab_map_grant_ref two[2] = {
        { .flags = GNTMAP_device_map, .ref = 8, .dom = DOMID_SELF, .status = 99 },
        { .flags = GNTMAP_device_map, .ref = 8, .dom = domid, .status = 99 },
    };
    long rc = gnttab_op(GNTTABOP_map_grant_ref, two, 2);
    check(rc == 0 && two[0].status == GNTST_bad_domain && two[1].status == GNTST_okay, "map_batch_per_op_status",
          "rc %ld, statuses %d %d", rc, two[0].status, two[1].status);
    if (two[1].status == GNTST_okay)
        unmap_op(two[1].handle, 0, data_mfn << 12);
}

static void map_errors(void)
{
    grant1(10, GTF_permit_access, domid, data_mfn);
    int16_t s = map_op(10, GNTMAP_readonly, 0, domid).status;
    check(s == GNTST_bad_gntref, "map_bad_flags", "no host or device map: %d (want -3)", s);
    int16_t self = map_op(10, GNTMAP_device_map, 0, DOMID_SELF).status;
    int16_t other = map_op(10, GNTMAP_device_map, 0, NO_SUCH_DOMID).status;
    check(self == GNTST_bad_domain && other == GNTST_bad_domain, "map_bad_domain",
          "DOMID_SELF %d, domain %u %d (want -2)", self, NO_SUCH_DOMID, other);
    s = map_op(512, GNTMAP_device_map, 0, domid).status;
    check(s == GNTST_bad_gntref, "map_bad_ref", "ref 512 of one frame: %d (want -3)", s);
    grant1(11, GTF_permit_access, domid + 1, data_mfn);
    s = map_op(11, GNTMAP_device_map, 0, domid).status;
    check(s == GNTST_general_error && gt1[11].flags == GTF_permit_access, "map_wrong_grantee", "%d (want -1)", s);
    grant1(11, GTF_permit_access, domid, 0xfffff000);   /* far beyond our memory */
    s = map_op(11, GNTMAP_device_map, 0, domid).status;
    check(s == GNTST_bad_page && gt1[11].flags == GTF_permit_access, "map_bad_frame",
          "frame %#x: %d (want -9), flags %#x", gt1[11].frame, s, gt1[11].flags);
    s = map_op(10, GNTMAP_host_map, NO_L1_VA, domid).status;
    check(s == GNTST_general_error && gt1[10].flags == GTF_permit_access, "map_bad_host_addr",
          "%d (want -1), flags %#x", s, gt1[10].flags);
    s = map_op(10, GNTMAP_host_map | GNTMAP_contains_pte, pte_maddr(window()) + 4, domid).status;
    check(s == GNTST_general_error, "map_misaligned_pte", "%d (want -1)", s);
    /* A page table cannot be mapped writable; read-only it can. */
    uint64_t l4_mfn = virt_to_mfn((void *)si->pt_base);
    grant1(12, GTF_permit_access, domid, l4_mfn);
    s = map_op(12, GNTMAP_device_map, 0, domid).status;
    struct gnttab_map_grant_ref m = map_op(12, GNTMAP_device_map | GNTMAP_readonly, 0, domid);
    check(s == GNTST_general_error && m.status == GNTST_okay && gt1[12].flags == (GTF_permit_access | GTF_reading),
          "map_page_table_writable_refused", "writable %d (want -1), read-only %d, flags %#x", s, m.status,
          gt1[12].flags);
    if (m.status == GNTST_okay)
        unmap_op(m.handle, 0, l4_mfn << 12);
}

static void copies(void)
{
    uint8_t *a = alloc_page(), *b = alloc_page(), *c = alloc_page();
    memcpy(a + 64, "copied bytes", 13);
    grant1(13, GTF_permit_access | GTF_readonly, domid, virt_to_mfn(a));
    grant1(14, GTF_permit_access, domid, virt_to_mfn(b));
    int16_t s = copy_op(13, domid, 64, 14, DOMID_SELF, 128, 13, GNTCOPY_source_gref | GNTCOPY_dest_gref);
    check(s == GNTST_okay && !memcmp(b + 128, "copied bytes", 13), "copy_gref_to_gref", "status %d", s);
    s = copy_op(14, DOMID_SELF, 128, virt_to_mfn(c), DOMID_SELF, 0, 13, GNTCOPY_source_gref);
    check(s == GNTST_okay && !memcmp(c, "copied bytes", 13), "copy_gref_to_gmfn", "status %d", s);
    s = copy_op(virt_to_mfn(c), DOMID_SELF, 0, 14, domid, 1000, 13, GNTCOPY_dest_gref);
    check(s == GNTST_okay && !memcmp(b + 1000, "copied bytes", 13) &&
              gt1[13].flags == (GTF_permit_access | GTF_readonly) && gt1[14].flags == GTF_permit_access,
          "copy_gmfn_to_gref", "status %d, flags %#x %#x", s, gt1[13].flags, gt1[14].flags);
    int16_t len = copy_op(13, DOMID_SELF, 4000, 14, DOMID_SELF, 0, 200, GNTCOPY_source_gref | GNTCOPY_dest_gref);
    int16_t doff = copy_op(13, DOMID_SELF, 0, 14, DOMID_SELF, 4095, 2, GNTCOPY_source_gref | GNTCOPY_dest_gref);
    check(len == GNTST_bad_copy_arg && doff == GNTST_bad_copy_arg, "copy_bad_length",
          "beyond the source page %d, the dest page %d (want -10)", len, doff);
    s = copy_op(14, DOMID_SELF, 0, 13, DOMID_SELF, 0, 8, GNTCOPY_source_gref | GNTCOPY_dest_gref);
    check(s == GNTST_general_error && gt1[13].flags == (GTF_permit_access | GTF_readonly), "copy_readonly_dest",
          "%d (want -1), flags %#x", s, gt1[13].flags);
    s = copy_op(virt_to_mfn(a), domid, 0, virt_to_mfn(c), DOMID_SELF, 0, 8, 0);
    check(s == GNTST_permission_denied, "copy_gmfn_needs_domid_self", "%d (want -8)", s);
    s = copy_op(13, NO_SUCH_DOMID, 0, virt_to_mfn(c), DOMID_SELF, 0, 8, GNTCOPY_source_gref);
    check(s == GNTST_bad_domain, "copy_bad_domain", "%d (want -2)", s);
    s = copy_op(NOWHERE_MFN, DOMID_SELF, 0, virt_to_mfn(c), DOMID_SELF, 0, 8, 0);
    check(s == GNTST_bad_page, "copy_bad_gmfn", "%d (want -9)", s);
    s = copy_op(NOWHERE_MFN, NO_SUCH_DOMID, 4095, 4096, 0, 4095, 0, GNTCOPY_dest_gref);
    check(s == GNTST_okay, "copy_zero_length", "an empty copy of nothing: %d (want 0)", s);
}

static void swaps(void)
{
    grant1(15, GTF_permit_access, domid, 0x111);
    grant1(16, GTF_permit_access | GTF_readonly, domid, 0x222);
    struct gnttab_swap_grant_ref op = { .ref_a = 15, .ref_b = 16, .status = 99 };
    long rc = gnttab_op(GNTTABOP_swap_grant_ref, &op, 1);
    check(rc == 0 && op.status == GNTST_okay && gt1[15].frame == 0x222 && gt1[16].frame == 0x111 &&
              gt1[15].flags == (GTF_permit_access | GTF_readonly),
          "swap_grant_ref", "rc %ld status %d, frames %#x %#x", rc, op.status, gt1[15].frame, gt1[16].frame);
    struct gnttab_map_grant_ref m = map_op(8, GNTMAP_device_map, 0, domid);
    op = (struct gnttab_swap_grant_ref){ .ref_a = 8, .ref_b = 15, .status = 99 };
    gnttab_op(GNTTABOP_swap_grant_ref, &op, 1);
    int16_t busy = op.status;
    op = (struct gnttab_swap_grant_ref){ .ref_a = 15, .ref_b = 4096, .status = 99 };
    gnttab_op(GNTTABOP_swap_grant_ref, &op, 1);
    check(m.status == GNTST_okay && busy == GNTST_eagain && op.status == GNTST_bad_gntref, "swap_refused",
          "a mapped ref %d (want -12), a bad ref %d (want -3)", busy, op.status);
    if (m.status == GNTST_okay)
        unmap_op(m.handle, 0, data_mfn << 12);
}

static void version_2(void)
{
    struct gnttab_get_status_frames sf;
    uint64_t status_mfn = 0;
    sf = (struct gnttab_get_status_frames){ .nr_frames = 1, .dom = DOMID_SELF, .status = 99,
                                             .frame_list = &status_mfn };
    gnttab_op(GNTTABOP_get_status_frames, &sf, 1);
    check(sf.status == GNTST_general_error, "status_frames_v1_refused", "%d (want -1)", sf.status);

    uint32_t now = 0;
    struct gnttab_map_grant_ref m = map_op(8, GNTMAP_device_map, 0, domid);
    long rc = set_version(2, &now);
    check(m.status == GNTST_okay && rc == -XEN_EBUSY && now == 1 && get_version() == 1, "set_version_busy",
          "rc %ld (want -EBUSY), version %u", rc, now);
    unmap_op(m.handle, 0, data_mfn << 12);

    grant1(1, GTF_permit_access, domid, data_mfn);   /* a reserved entry: carried over */
    rc = set_version(2, &now);
    check(rc == 0 && now == 2 && get_version() == 2, "set_version_2", "rc %ld, version %u/%u", rc, now,
          get_version());
    check(gt2[1].hdr.flags == GTF_permit_access && gt2[1].hdr.domid == domid && gt2[1].full_page.frame == data_mfn &&
              gt2[8].hdr.flags == 0,
          "v2_reserved_entries_kept", "entry 1 %#x/%u/%#lx, entry 8 flags %#x", gt2[1].hdr.flags, gt2[1].hdr.domid,
          gt2[1].full_page.frame, gt2[8].hdr.flags);

    struct gnttab_query_size qs = { .dom = DOMID_SELF, .status = 99 };
    rc = gnttab_op(GNTTABOP_query_size, &qs, 1);
    sf = (struct gnttab_get_status_frames){ .nr_frames = 1, .dom = DOMID_SELF, .status = 99,
                                             .frame_list = &status_mfn };
    long rs = gnttab_op(GNTTABOP_get_status_frames, &sf, 1);
    struct gnttab_get_status_frames two = { .nr_frames = 2, .dom = DOMID_SELF, .status = 99,
                                            .frame_list = &status_mfn };
    gnttab_op(GNTTABOP_get_status_frames, &two, 1);
    check(rc == 0 && qs.status == 0 && qs.nr_frames == 1 && rs == 0 && sf.status == GNTST_okay &&
              status_mfn != 0 && two.status == GNTST_general_error,
          "get_status_frames", "query_size %d nr %u, get_status_frames %ld/%d frame %#lx, two frames %d",
          qs.status, qs.nr_frames, rs, sf.status, status_mfn, two.status);
    volatile uint16_t *status = window();
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)status, (status_mfn << 12) | PTE_KERNEL_RO, UVMF_INVLPG),
               "map_status_frame");

    memcpy(data, "version two", 12);
    grant2(20, GTF_permit_access, domid, data_mfn);
    volatile uint8_t *w = window();
    m = map_op(20, GNTMAP_host_map, (uint64_t)w, domid);
    check(m.status == GNTST_okay && !memcmp((const void *)w, "version two", 12) &&
              status[20] == (GTF_reading | GTF_writing) && gt2[20].hdr.flags == GTF_permit_access,
          "v2_map_status_flags", "status %d, status entry %#x, flags %#x", m.status, status[20], gt2[20].hdr.flags);
    int16_t st = m.status == GNTST_okay ? unmap_op(m.handle, (uint64_t)w, 0) : 99;
    check(st == GNTST_okay && status[20] == 0, "v2_unmap_clears_status", "unmap %d, status entry %#x", st,
          status[20]);

    /* A sub-page grant: copied within its window, never mapped. */
    uint8_t *dst = alloc_page();
    memcpy(data + 256, "sub page", 9);
    gt2[21].hdr.domid = domid;
    gt2[21].sub_page.page_off = 256;
    gt2[21].sub_page.length = 128;
    gt2[21].sub_page.frame = data_mfn;
    barrier();
    gt2[21].hdr.flags = GTF_permit_access | GTF_sub_page;
    int16_t mapped = map_op(21, GNTMAP_device_map, 0, domid).status;
    int16_t in = copy_op(21, DOMID_SELF, 256, virt_to_mfn(dst), DOMID_SELF, 0, 128, GNTCOPY_source_gref);
    int16_t out = copy_op(21, DOMID_SELF, 255, virt_to_mfn(dst), DOMID_SELF, 0, 128, GNTCOPY_source_gref);
    check(mapped == GNTST_general_error && in == GNTST_okay && !memcmp(dst, "sub page", 9) &&
              out == GNTST_general_error && status[21] == 0,
          "v2_sub_page", "map %d (want -1), copy inside %d, outside %d (want -1)", mapped, in, out);
    /* A transitive grant of our own: self-referential. */
    gt2[22].hdr.domid = domid;
    gt2[22].transitive.trans_domid = domid;
    gt2[22].transitive.gref = 20;
    barrier();
    gt2[22].hdr.flags = GTF_transitive;
    st = copy_op(22, DOMID_SELF, 0, virt_to_mfn(dst), DOMID_SELF, 0, 8, GNTCOPY_source_gref);
    check(st == GNTST_general_error && status[22] == 0, "v2_transitive_copy_refused", "%d (want -1)", st);
    mapped = map_op(22, GNTMAP_device_map | GNTMAP_readonly, 0, domid).status;
    check(mapped == GNTST_general_error && status[22] == 0, "v2_transitive_map_refused", "%d (want -1)", mapped);

    /* Back to v1 (status frame unmapped first, as Xen requires). */
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)status, 0, UVMF_INVLPG), "unmap_status_frame");
    gt2[2].hdr.domid = domid;
    gt2[2].full_page.frame = 1UL << 33;
    barrier();
    gt2[2].hdr.flags = GTF_permit_access;
    long range = set_version(1, &now);
    gt2[2].hdr.flags = 0;
    rc = set_version(1, &now);
    check(range == -XEN_ERANGE && rc == 0 && now == 1 && get_version() == 1 && gt1[1].frame == data_mfn &&
              gt1[1].flags == GTF_permit_access,
          "set_version_back_to_1", "unrepresentable reserved entry %ld (want -ERANGE), then %ld, version %u",
          range, rc, now);
    grant1(8, GTF_permit_access, domid, data_mfn);
    m = map_op(8, GNTMAP_device_map, 0, domid);
    st = m.status == GNTST_okay ? unmap_op(m.handle, 0, data_mfn << 12) : 99;
    check(m.status == GNTST_okay && st == GNTST_okay, "v1_map_again", "map %d, unmap %d", m.status, st);
}

void guest_main(void)
{
    struct gnttab_query_size qs = { .dom = DOMID_SELF, .status = 99 };
    long rc = gnttab_op(GNTTABOP_query_size, &qs, 1);
    check(rc == 0 && qs.status == GNTST_okay && qs.nr_frames == 1 && qs.max_nr_frames >= 1, "query_size_initial",
          "rc %ld status %d, %u of %u frames (want 1 before any setup_table)", rc, qs.status, qs.nr_frames,
          qs.max_nr_frames);
    if (gnttab_start("domid_from_store", "setup_table"))
        return;
    data = alloc_page();
    data_mfn = virt_to_mfn(data);
    map_and_unmap();
    map_errors();
    copies();
    swaps();
    version_2();
}
