/*
 * balloon: giving memory back to the hypervisor and taking it again, as a PV
 * balloon driver does (xen/include/public/memory.h, xen/common/memory.c).
 *
 * A page of ours is unmapped, handed back with XENMEM_decrease_reservation
 * (by MFN), then populated again with XENMEM_populate_physmap (by PFN; the
 * new MFN comes back in the list, goes into our p2m, and is mapped). The
 * reservation ops return the number of extents done: a request refused as a
 * whole is 0, and the first extent that fails ends the call. Only what real
 * Xen answers the same way is checked here (Xen, for one, lets a domain give
 * back a page it still maps; Hospes refuses that, see the unit tests).
 */
#include "guest.h"

#define XENMEM_decrease_reservation 1
#define XENMEM_current_reservation  3
#define XENMEM_maximum_reservation  4
#define XENMEM_populate_physmap     6
#define DOMU_MAX_ORDER              9
#define NOWHERE_MFN                 (1UL << 40)   /* beyond every machine frame */

struct xen_memory_reservation {
    uint64_t *extent_start;
    uint64_t nr_extents;
    uint32_t extent_order;
    uint32_t mem_flags;
    uint16_t domid;
};
_Static_assert(sizeof(struct xen_memory_reservation) == 32, "struct xen_memory_reservation");

static long reservation(int op, uint64_t *list, uint64_t n, uint32_t order, uint16_t domid)
{
    struct xen_memory_reservation r = { list, n, order, 0, domid };
    return HYPERVISOR_memory_op(op, &r);
}

static long query(int op)
{
    uint16_t domid = DOMID_SELF;
    return HYPERVISOR_memory_op(op, &domid);
}

/* Take a page of ours out of the mapping so it may be given back. */
static uint64_t unmapped_page(uint8_t **va)
{
    *va = alloc_page();
    uint64_t mfn = virt_to_mfn(*va);
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)*va, 0, UVMF_INVLPG), "unmap_page");
    return mfn;
}

void guest_main(void)
{
    long cur = query(XENMEM_current_reservation);
    long max = query(XENMEM_maximum_reservation);
    check(cur == (long)xen_start_info->nr_pages && max >= cur, "reservation_queries",
          "current %ld, maximum %ld, start_info.nr_pages %lu", cur, max, xen_start_info->nr_pages);

    uint8_t *a, *b, *c;
    uint64_t mfn_a = unmapped_page(&a), mfn_b = unmapped_page(&b), mfn_c = unmapped_page(&c);
    uint64_t list[4];

    list[0] = mfn_a;
    long rc = reservation(XENMEM_decrease_reservation, list, 1, 0, DOMID_SELF);
    check(rc == 1, "decrease_one", "decrease_reservation returned %ld, want 1", rc);
    long now = query(XENMEM_current_reservation);
    check(now == cur - 1, "current_drops", "current %ld, want %ld", now, cur - 1);

    rc = reservation(XENMEM_decrease_reservation, list, 1, 0, DOMID_SELF);
    check(rc == 0, "decrease_again_refused", "giving back mfn %#lx twice returned %ld", mfn_a, rc);

    rc = HYPERVISOR_update_va_mapping((uint64_t)a, (mfn_a << 12) | PTE_KERNEL_RW, UVMF_INVLPG);
    check(rc < 0, "map_released_refused", "mapping the given-back mfn returned %ld", rc);

    list[0] = mfn_b;
    rc = reservation(XENMEM_decrease_reservation, list, 1, DOMU_MAX_ORDER + 1, DOMID_SELF);
    check(rc == 0, "order_above_domu_max", "order %d returned %ld", DOMU_MAX_ORDER + 1, rc);
    rc = reservation(XENMEM_decrease_reservation, list, 1, 0, 0);
    check(rc == 0, "other_domain_refused", "decrease for domain 0 returned %ld", rc);

    list[0] = mfn_b;
    list[1] = NOWHERE_MFN;
    list[2] = mfn_c;
    rc = reservation(XENMEM_decrease_reservation, list, 3, 0, DOMID_SELF);
    check(rc == 1, "decrease_stops_at_failure", "returned %ld, want 1 (the second frame is nobody's)", rc);
    now = query(XENMEM_current_reservation);
    check(now == cur - 2, "current_counts_extents_done", "current %ld, want %ld", now, cur - 2);

    /* Take a and b back by PFN; the MFNs Xen chose come back in the list. */
    uint64_t pfn_a = virt_to_pfn(a), pfn_b = virt_to_pfn(b);
    list[0] = pfn_a;
    list[1] = pfn_b;
    rc = reservation(XENMEM_populate_physmap, list, 2, DOMU_MAX_ORDER + 1, DOMID_SELF);
    check(rc == 0, "populate_order_refused", "order %d returned %ld", DOMU_MAX_ORDER + 1, rc);
    rc = reservation(XENMEM_populate_physmap, list, 2, 0, DOMID_SELF);
    check(rc == 2, "populate_two", "populate_physmap returned %ld, want 2", rc);
    volatile uint64_t *p2m = (volatile uint64_t *)xen_start_info->mfn_list;
    p2m[pfn_a] = list[0];
    p2m[pfn_b] = list[1];
    now = query(XENMEM_current_reservation);
    check(now == cur, "current_restored", "current %ld, want %ld", now, cur);

    long ra = HYPERVISOR_update_va_mapping((uint64_t)a, (list[0] << 12) | PTE_KERNEL_RW, UVMF_INVLPG);
    long rb = HYPERVISOR_update_va_mapping((uint64_t)b, (list[1] << 12) | PTE_KERNEL_RW, UVMF_INVLPG);
    check(ra == 0 && rb == 0, "map_populated", "update_va_mapping returned %ld, %ld", ra, rb);
    if (ra == 0 && rb == 0) {
        memset(a, 0x5a, PAGE_SIZE);
        memset(b, 0xa5, PAGE_SIZE);
        check(a[0] == 0x5a && a[PAGE_SIZE - 1] == 0x5a && b[0] == 0xa5 && b[PAGE_SIZE - 1] == 0xa5,
              "populated_pages_usable", "a %#x..%#x b %#x..%#x", a[0], a[PAGE_SIZE - 1], b[0], b[PAGE_SIZE - 1]);
    }
}
