/*
 * The grant-table ABI (xen/include/public/grant_table.h) and the helpers the
 * grant test kernels share: their own domid from the store, a one-frame
 * table mapped at gt1/gt2, op wrappers that return the op's status (or 100 +
 * the hypercall's return if that failed). Included by one source per kernel.
 */
#ifndef HOSPES_GUEST_GNTTAB_H
#define HOSPES_GUEST_GNTTAB_H

#include "guest.h"
#include "xenstore.h"

typedef short int16_t;          /* grant_table.h statuses (xen.h has no signed 16-bit type) */
#define GNT_HELPER static __attribute__((unused))

#define __HYPERVISOR_grant_table_op 20
#define GNTTABOP_map_grant_ref      0
#define GNTTABOP_unmap_grant_ref    1
#define GNTTABOP_setup_table        2
#define GNTTABOP_copy               5
#define GNTTABOP_query_size         6
#define GNTTABOP_set_version        8
#define GNTTABOP_get_status_frames  9
#define GNTTABOP_get_version        10
#define GNTTABOP_swap_grant_ref     11

#define GTF_permit_access  1
#define GTF_transitive     3
#define GTF_readonly       (1 << 2)
#define GTF_reading        (1 << 3)
#define GTF_writing        (1 << 4)
#define GTF_sub_page       (1 << 8)

#define GNTMAP_device_map    (1 << 0)
#define GNTMAP_host_map      (1 << 1)
#define GNTMAP_readonly      (1 << 2)
#define GNTMAP_contains_pte  (1 << 4)

#define GNTCOPY_source_gref  (1 << 0)
#define GNTCOPY_dest_gref    (1 << 1)

#define GNTST_okay              0
#define GNTST_general_error    -1
#define GNTST_bad_domain       -2
#define GNTST_bad_gntref       -3
#define GNTST_bad_handle       -4
#define GNTST_permission_denied -8
#define GNTST_bad_page         -9
#define GNTST_bad_copy_arg    -10
#define GNTST_eagain          -12

#define XEN_EBUSY   16
#define XEN_ERANGE  34
#define NOWHERE_MFN (1UL << 40)                /* beyond every machine frame */
#define NO_L1_VA    0x0000600000000000UL       /* L4 slot 192: nothing mapped there */
#define NO_SUCH_DOMID 0x7fef                   /* the last ordinary domid: no domain has it */

struct grant_entry_v1 { uint16_t flags, domid; uint32_t frame; };
_Static_assert(sizeof(struct grant_entry_v1) == 8, "grant_entry_v1");
struct grant_entry_header { uint16_t flags, domid; };
union grant_entry_v2 {
    struct grant_entry_header hdr;
    struct { struct grant_entry_header hdr; uint32_t pad0; uint64_t frame; } full_page;
    struct { struct grant_entry_header hdr; uint16_t page_off, length; uint64_t frame; } sub_page;
    struct { struct grant_entry_header hdr; uint16_t trans_domid, pad0; uint32_t gref; } transitive;
    uint32_t spacer[4];
};
_Static_assert(sizeof(union grant_entry_v2) == 16, "grant_entry_v2");

struct gnttab_setup_table { uint16_t dom; uint32_t nr_frames; int16_t status; uint64_t *frame_list; };
_Static_assert(sizeof(struct gnttab_setup_table) == 24, "gnttab_setup_table");
struct gnttab_map_grant_ref {
    uint64_t host_addr; uint32_t flags, ref; uint16_t dom; int16_t status; uint32_t handle;
    uint64_t dev_bus_addr;
};
_Static_assert(sizeof(struct gnttab_map_grant_ref) == 32, "gnttab_map_grant_ref");
struct gnttab_unmap_grant_ref { uint64_t host_addr, dev_bus_addr; uint32_t handle; int16_t status; };
_Static_assert(sizeof(struct gnttab_unmap_grant_ref) == 24, "gnttab_unmap_grant_ref");
struct gnttab_copy_ptr { union { uint32_t ref; uint64_t gmfn; } u; uint16_t domid, offset; };
struct gnttab_copy { struct gnttab_copy_ptr source, dest; uint16_t len, flags; int16_t status; };
_Static_assert(sizeof(struct gnttab_copy) == 40, "gnttab_copy");
struct gnttab_query_size { uint16_t dom; uint32_t nr_frames, max_nr_frames; int16_t status; };
_Static_assert(sizeof(struct gnttab_query_size) == 16, "gnttab_query_size");
struct gnttab_get_status_frames { uint32_t nr_frames; uint16_t dom; int16_t status; uint64_t *frame_list; };
_Static_assert(sizeof(struct gnttab_get_status_frames) == 16, "gnttab_get_status_frames");
struct gnttab_get_version { uint16_t dom, pad; uint32_t version; };
struct gnttab_swap_grant_ref { uint32_t ref_a, ref_b; int16_t status; };
_Static_assert(sizeof(struct gnttab_swap_grant_ref) == 12, "gnttab_swap_grant_ref");

GNT_HELPER long gnttab_op(unsigned cmd, void *uop, unsigned count)
{
    return _hc(__HYPERVISOR_grant_table_op, cmd, uop, count, 0, 0);
}

GNT_HELPER struct start_info *si;
GNT_HELPER uint16_t domid;
GNT_HELPER volatile struct grant_entry_v1 *gt1;
GNT_HELPER volatile union grant_entry_v2 *gt2;

/* ---- helpers ----------------------------------------------------------------- */

GNT_HELPER uint64_t pte_maddr(const void *va)
{
    uint64_t v = (uint64_t)va, *t = (uint64_t *)si->pt_base;
    for (int shift = 39; shift > 12; shift -= 9)
        t = mfn_to_virt((t[(v >> shift) & 511] & PTE_ADDR_MASK) >> 12);
    return (virt_to_mfn(t) << 12) + ((v >> 12) & 511) * 8;
}

GNT_HELPER void grant1(unsigned ref, uint16_t flags, uint16_t dom, uint64_t frame)
{
    gt1[ref].domid = dom;
    gt1[ref].frame = frame;
    barrier();
    gt1[ref].flags = flags;
}

GNT_HELPER void grant2(unsigned ref, uint16_t flags, uint16_t dom, uint64_t frame)
{
    gt2[ref].hdr.domid = dom;
    gt2[ref].full_page.pad0 = 0;
    gt2[ref].full_page.frame = frame;
    barrier();
    gt2[ref].hdr.flags = flags;
}

GNT_HELPER struct gnttab_map_grant_ref map_op(unsigned ref, uint32_t flags, uint64_t host, uint16_t dom)
{
    struct gnttab_map_grant_ref op = { .host_addr = host, .flags = flags, .ref = ref, .dom = dom,
                                       .status = 99 };
    long rc = gnttab_op(GNTTABOP_map_grant_ref, &op, 1);
    if (rc)
        op.status = 100 + rc;
    return op;
}

GNT_HELPER int16_t unmap_op(uint32_t handle, uint64_t host, uint64_t bus)
{
    struct gnttab_unmap_grant_ref op = { .host_addr = host, .dev_bus_addr = bus, .handle = handle,
                                         .status = 99 };
    long rc = gnttab_op(GNTTABOP_unmap_grant_ref, &op, 1);
    return rc ? 100 + rc : op.status;
}

GNT_HELPER int16_t copy_op(uint64_t src, uint16_t sdom, uint16_t soff, uint64_t dst, uint16_t ddom,
                       uint16_t doff, uint16_t len, uint16_t flags)
{
    struct gnttab_copy op = { .source = { .u.gmfn = src, .domid = sdom, .offset = soff },
                              .dest = { .u.gmfn = dst, .domid = ddom, .offset = doff },
                              .len = len, .flags = flags, .status = 99 };
    long rc = gnttab_op(GNTTABOP_copy, &op, 1);
    return rc ? 100 + rc : op.status;
}

GNT_HELPER long set_version(uint32_t v, uint32_t *now)
{
    uint32_t op = v;
    long rc = gnttab_op(GNTTABOP_set_version, &op, 1);
    *now = op;
    return rc;
}

GNT_HELPER uint32_t get_version(void)
{
    struct gnttab_get_version op = { .dom = DOMID_SELF };
    return gnttab_op(GNTTABOP_get_version, &op, 1) ? 0 : op.version;
}

/* A virtual page with an L1 entry but nothing mapped (and nothing in the TLB:
 * Xen does not flush when a grant map writes the entry), for host mappings. */
GNT_HELPER void *window(void)
{
    void *va = alloc_page();
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)va, 0, UVMF_INVLPG), "window");
    return va;
}

/* The kernel's domid (from the store; check domid_check), a one-frame v1 table
 * mapped at gt1/gt2 (check setup_check); 0, or -1 after a FAIL line. */
GNT_HELPER int gnttab_start(const char *domid_check, const char *setup_check)
{
    si = xen_start_info;
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(m2p_init(), "m2p_init");

    char buf[16] = { 0 };
    long n = xs_read("domid", buf, sizeof(buf) - 1);
    unsigned id = 0;
    for (long i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++)
        id = id * 10 + (buf[i] - '0');
    domid = id;
    if (!check(n > 0 && id < DOMID_SELF, domid_check, "read %ld bytes: %s", n, buf))
        return -1;

    uint64_t frame = 0;
    struct gnttab_setup_table st = { .dom = DOMID_SELF, .nr_frames = 1, .status = 99, .frame_list = &frame };
    long rc = gnttab_op(GNTTABOP_setup_table, &st, 1);
    void *table = window();
    if (!check(rc == 0 && st.status == GNTST_okay && frame, setup_check, "rc %ld status %d", rc, st.status))
        return -1;
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)table, (frame << 12) | PTE_KERNEL_RW, UVMF_INVLPG),
               "map_grant_frame");
    gt1 = table;
    gt2 = table;
    return 0;
}

#endif
